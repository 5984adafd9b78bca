"""The one place where a benchmark depends on a keras_hpdm internal that has no public API.

Everything else in benchmarks/ uses public names only (`keras_hpdm.__all__` and its
submodules' `__all__`, Keras' public model API, jax). Each function here says what it relies
on and which public API would remove it.
"""

import os


def checkpoint_temp_path(run):
    """The file `keras_hpdm.callbacks.TrainingCheckpoint` writes a checkpoint to before it
    renames it to `<run>/model.keras`: `kill_resume_soak.py` kills a training run while this
    file exists, to land a kill inside a checkpoint write.

    PRIVATE: the name is built inside `TrainingCheckpoint._write` and not exported. Public API
    that would remove this: e.g. a `TrainingCheckpoint.temp_path(directory)` function or an
    exported constant beside `load_training_checkpoint` / `read_training_state`.
    """
    return os.path.join(run, ".model.keras.tmp.keras")
