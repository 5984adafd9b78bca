"""Saves the whole model (weights, EMA, optimizer, noise state) atomically during `fit`, and
loads such checkpoints back with clear errors for damaged files."""

import json
import math
import os
import time
import zipfile

import keras
import numpy as np

from keras_hpdm import distribute
from keras_hpdm.checks import check_int
from keras_hpdm.models.backend_quirks import BACKEND_OPTIMIZERS

MODEL_NAME = "model.keras"
STATE_NAME = "training_state.json"
_CONFIG_NAME = "config.json"  # inside a .keras archive

def read_training_state(directory):
    """The training state of a checkpoint folder, or None if it has no checkpoint.

    The state stored inside `model.keras` (written in the same atomic rename as the weights)
    is authoritative; `training_state.json` beside it is a readable copy, read only for
    checkpoints written before the state moved into the archive.

    Raises:
        ValueError: naming the file, when it is not a JSON object with an integer `step`
            and `epoch` (a damaged or hand-edited state), or the archive is unreadable.
    """
    model_path = os.path.join(directory, MODEL_NAME)
    path = os.path.join(directory, STATE_NAME)
    if not os.path.isfile(model_path):
        return None
    try:
        with zipfile.ZipFile(model_path) as archive:
            text = archive.read(STATE_NAME) if STATE_NAME in archive.namelist() else None
    except Exception as e:  # whatever breaks reading the archive, the file is damaged
        raise ValueError(f"{model_path} is truncated or corrupt, not a readable .keras model "
                         f"({type(e).__name__}: {e}).") from None
    if text is None:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            text = f.read()
    else:
        path = f"{model_path} ({STATE_NAME})"
    try:
        state = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged (not valid JSON: {e}); restore it or start a new "
                         "run in another folder.") from None
    _check_state(state, path)
    return state


def _state_problem(state):
    if not isinstance(state, dict):
        return "not a JSON object"
    for name in ("step", "epoch"):
        value = state.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"`{name}` must be an integer >= 0, got {value!r}"
    for name, kind in (("history", list), ("args", dict)):  # optional
        if not isinstance(state.get(name, kind()), kind):
            return f"`{name}` must be a JSON {kind.__name__}, got {state[name]!r}"
    return None


def _check_state(state, path):
    problem = _state_problem(state)
    if problem is not None:
        raise ValueError(f"{path} is damaged ({problem}); restore it or start a new run in "
                         "another folder.")


def _check_keras_archive(path):
    """Checks every entry's checksum before Keras reads it: a damaged file would otherwise
    fail deep inside Keras (BadZipFile, "File not found") or load corrupt weights."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (an interrupted copy or save?): not a .keras model.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except Exception as e:  # whatever breaks reading the archive, the file is damaged
        raise ValueError(f"{path} is truncated or corrupt, not a readable .keras model "
                         f"({type(e).__name__}: {e}).") from None
    if bad is not None:
        raise ValueError(f"{path} is corrupt: its entry {bad!r} fails its checksum.")
    if _CONFIG_NAME not in names:
        raise ValueError(f"{path} is not a .keras model (a zip without {_CONFIG_NAME}).")


def load_training_checkpoint(path, compile=True):
    """Loads a `.keras` model file (or a checkpoint folder's `model.keras`), checked first.

    Unlike `keras.saving.load_model`, a damaged file gives one clear error naming it, and a
    checkpoint written under the torch backend (whose file may name a torch-only optimizer
    class) resumes under every backend.

    Args:
        path: a `.keras` file or a folder holding `model.keras`.
        compile: restore the optimizer (and its state) too, to continue training.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file, when it is empty, truncated, corrupt or not a model.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    _check_keras_archive(path)
    import keras_hpdm

    keras_hpdm._load_all()  # registers the classes the file names
    # By name, these take precedence over the module a torch-written file records.
    optimizers = {name: getattr(keras.optimizers, name) for name in BACKEND_OPTIMIZERS}
    try:
        return keras.saving.load_model(path, compile=compile, custom_objects=optimizers)
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} could not be loaded as a model: {e}") from e


def _atomic_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _non_finite_logs(logs):
    bad = [k for k, v in logs.items() if not math.isfinite(v)]
    return f"the {bad[0]} is {logs[bad[0]]}" if bad else None


def _non_finite_variable(model):
    """The path of the first float variable (model or optimizer) holding NaN/Inf, or None."""
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + list(optimizer.variables if optimizer else [])
    for v in variables:
        if keras.backend.is_float_dtype(v.dtype):
            if not np.isfinite(np.asarray(keras.ops.convert_to_numpy(v.value))).all():
                return v.path
    return None


class TrainingCheckpoint(keras.callbacks.Callback):
    """Writes `model.keras` + `training_state.json` every `every_n_epochs` and at the end.

    The `.keras` file holds everything a resumed run needs: weights, EMA weights, optimizer
    state (its step count drives the schedule) and the training-noise generator state. It is
    written to a temporary file and renamed, so an interrupted save never destroys the last
    good checkpoint; its optimizer is recorded as the public Keras class, so a run saved
    under one backend resumes under any other. The training state (the global step, the
    epoch logs so far and any `metadata`, e.g. the command line that built the run) is
    stored inside the archive, in the same rename, and copied to `training_state.json` for
    reading, so `resume` picks up exactly where the saved weights stopped.

    A checkpoint is never written from a diverged model: when an epoch's loss (or any
    logged value) or a weight is NaN/Inf, training stops (as `keras.callbacks.TerminateOnNaN`
    would), nothing is saved, and `stopped_reason` says why; the last good checkpoint on
    disk stays as it was.

    Checkpoints are written at epoch ends (where every backend has synchronised its state
    with the model): use epochs of a few hundred steps. In a multi-process run
    (`keras_hpdm.distribute`) process 0 writes them; every process can resume from them.

    Args:
        directory: folder of the checkpoint (created).
        every_n_epochs: save after every n-th epoch (and always when training ends).
        metadata: JSON-serialisable dict stored in the state file.
        history: epoch logs of earlier runs of this checkpoint (continued, not replaced).
        verbose: 1 prints a line when training is stopped for NaN/Inf values, 0 is silent.

    Example:
    ```python
    ckpt = TrainingCheckpoint("runs/mnist", metadata={"steps_per_epoch": 200})
    model.fit(ds, steps_per_epoch=200, epochs=50, callbacks=[ckpt])
    # later: model = load_training_checkpoint("runs/mnist"), then fit with
    # initial_epoch=read_training_state("runs/mnist")["epoch"]
    ```
    """

    def __init__(self, directory, every_n_epochs=1, metadata=None, history=None, verbose=1):
        super().__init__()
        every_n_epochs = check_int("every_n_epochs", every_n_epochs, low=1)
        self.directory = os.fspath(directory)
        self.every_n_epochs = every_n_epochs
        self.metadata = dict(metadata or {})
        self.history = list(history or [])
        self.verbose = verbose
        self.last_saved_epoch = self.last_saved_step = None
        self.stopped_reason = None
        self._epoch = None
        self._start = time.time()

    @property
    def model_path(self):
        return os.path.join(self.directory, MODEL_NAME)

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self._start = time.time()
        self.stopped_reason = None

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        problem = _non_finite_logs(logs)
        if problem is None:
            self._epoch = epoch + 1
            self.history.append({"epoch": epoch + 1, **logs})
            if (epoch + 1) % self.every_n_epochs == 0:
                problem = self._save_if_finite(epoch + 1)
        if problem is not None:
            self._stop(problem)

    def on_train_end(self, logs=None):
        if self.stopped_reason is None and self._epoch not in (None, self.last_saved_epoch):
            problem = self._save_if_finite(self._epoch)
            if problem is not None:
                self._stop(problem)

    def _save_if_finite(self, epoch):
        with distribute.whole_variables(self.model):  # split between processes: gathered
            bad = _non_finite_variable(self.model)
            if bad is not None:
                return f"the variable {bad} holds NaN/Inf values"
            self._write(epoch)
        return None

    def _stop(self, reason):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        kept = (f"the checkpoint of step {self.last_saved_step} is kept"
                if self.last_saved_step is not None else "no checkpoint was written")
        self.stopped_reason = f"training diverged by step {step} ({reason}); {kept}"
        self.model.stop_training = True
        if self.verbose:
            print(f"TrainingCheckpoint: {self.stopped_reason}.")

    def save(self, epoch):
        """Writes the checkpoint of `epoch` (refuses a model holding NaN/Inf values)."""
        problem = self._save_if_finite(epoch)
        if problem is not None:
            raise ValueError(f"Not saving {self.model_path}: {problem} (the checkpoint on "
                             "disk is kept).")

    def _write(self, epoch):
        seconds = self.metadata.get("seconds", 0.0) + time.time() - self._start
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        state = {**self.metadata, "epoch": epoch, "step": step, "seconds": round(seconds, 1),
                 "history": self.history}
        if not distribute.is_chief():  # in a multi-process run, process 0 writes the files
            self.last_saved_epoch, self.last_saved_step = epoch, step
            return
        tmp = os.path.join(self.directory, f".{MODEL_NAME}.tmp.keras")
        with distribute.chief_only():
            self.model.save(tmp)
        # The state travels inside the archive, so weights and step change in one rename: a
        # kill between two separate writes would pair new weights with an old step.
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(STATE_NAME, json.dumps(state, indent=2))
        os.replace(tmp, self.model_path)
        _atomic_json(os.path.join(self.directory, STATE_NAME), state)
        self.last_saved_epoch, self.last_saved_step = epoch, step
