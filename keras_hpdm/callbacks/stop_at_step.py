"""Ends `fit` after an exact number of optimizer steps, mid-epoch if need be."""

import keras

from keras_hpdm.checks import check_int


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the optimizer has taken `total_steps` steps.

    `fit` runs whole epochs of `steps_per_epoch` steps; with this callback the last epoch
    ends early, so a run of 5 steps in epochs of 2 trains 5 steps, not 6. Batches are
    counted here rather than read from the optimizer, whose variables JAX updates only at
    epoch ends (so it assumes `steps_per_execution=1`, the default).

    Args:
        total_steps: the step count to stop at.
        initial_step: steps already taken (a resumed run's step).

    Example:
    ```python
    model.fit(ds, steps_per_epoch=100, epochs=3, callbacks=[StopAtStep(250)])  # 250 steps
    ```
    """

    def __init__(self, total_steps, initial_step=0):
        super().__init__()
        self.total_steps = check_int("total_steps", total_steps, low=1)
        self.step = int(initial_step)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step >= self.total_steps:
            self.model.stop_training = True
