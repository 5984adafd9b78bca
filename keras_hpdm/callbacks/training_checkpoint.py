"""Saves the whole model (weights, EMA, optimizer, noise state) atomically during `fit`."""

import json
import os
import time

import keras

MODEL_NAME = "model.keras"
STATE_NAME = "training_state.json"


def read_training_state(directory):
    """The `training_state.json` of a checkpoint folder, or None if it has no checkpoint."""
    path = os.path.join(directory, STATE_NAME)
    if not os.path.isfile(os.path.join(directory, MODEL_NAME)) or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _atomic_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


class TrainingCheckpoint(keras.callbacks.Callback):
    """Writes `model.keras` + `training_state.json` every `every_n_epochs` and at the end.

    The `.keras` file holds everything a resumed run needs: weights, EMA weights, optimizer
    state (its step count drives the schedule) and the training-noise generator state. It is
    written to a temporary file and renamed, so an interrupted save never destroys the last
    good checkpoint. The state file records the global step, the epoch logs so far and any
    `metadata` (e.g. the command line that built the run), so `resume` picks up exactly
    where the run stopped.

    Checkpoints are written at epoch ends (where every backend has synchronised its state
    with the model): use epochs of a few hundred steps.

    Args:
        directory: folder of the checkpoint (created).
        every_n_epochs: save after every n-th epoch (and always when training ends).
        metadata: JSON-serialisable dict stored in the state file.
        history: epoch logs of earlier runs of this checkpoint (continued, not replaced).

    Example:
    ```python
    ckpt = TrainingCheckpoint("runs/mnist", metadata={"steps_per_epoch": 200})
    model.fit(ds, steps_per_epoch=200, epochs=50, callbacks=[ckpt])
    # later: model = keras.saving.load_model("runs/mnist/model.keras"), then fit with
    # initial_epoch=read_training_state("runs/mnist")["epoch"]
    ```
    """

    def __init__(self, directory, every_n_epochs=1, metadata=None, history=None):
        super().__init__()
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an int >= 1, got {every_n_epochs!r}.")
        self.directory = os.fspath(directory)
        self.every_n_epochs = every_n_epochs
        self.metadata = dict(metadata or {})
        self.history = list(history or [])
        self.last_saved_epoch = None
        self._epoch = None
        self._start = time.time()

    @property
    def model_path(self):
        return os.path.join(self.directory, MODEL_NAME)

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch + 1
        self.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in
                                                      (logs or {}).items()}})
        if (epoch + 1) % self.every_n_epochs == 0:
            self.save(epoch + 1)

    def on_train_end(self, logs=None):
        if self._epoch is not None and self.last_saved_epoch != self._epoch:
            self.save(self._epoch)

    def save(self, epoch):
        tmp = os.path.join(self.directory, f".{MODEL_NAME}.tmp.keras")
        self.model.save(tmp)
        os.replace(tmp, self.model_path)
        seconds = self.metadata.get("seconds", 0.0) + time.time() - self._start
        _atomic_json(os.path.join(self.directory, STATE_NAME), {
            **self.metadata,
            "epoch": epoch,
            "step": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "seconds": round(seconds, 1),
            "history": self.history,
        })
        self.last_saved_epoch = epoch
