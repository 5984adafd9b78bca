"""Writes sample videos from the model (EMA weights) every few epochs during `fit`."""

import os

import keras

from keras_hpdm import distribute
from keras_hpdm.checks import check_int
from keras_hpdm.media import save_videos


class SampleVideos(keras.callbacks.Callback):
    """Every `every_n_epochs` epochs, generates videos with a fixed seed and writes them.

    Files go to `directory/step_<global step>.{gif,png}` (a GIF of all samples side by side
    and a PNG contact sheet), so the same noise shows how the model improves. In a
    multi-process run every process generates (the network calls are split between them)
    and process 0 writes.

    Args:
        directory: output folder (created).
        every_n_epochs: generate after epochs `n, 2n, ...`.
        conditions: passed to `generate` (class ids, prompts or None).
        num_samples: videos per call (with `conditions=None`, or per single condition).
        seed: sampling seed, the same at every call.
        generate_kwargs: more `generate` arguments (e.g. `num_steps=16`).
    """

    def __init__(self, directory, every_n_epochs=1, conditions=None, num_samples=None,
                 seed=0, **generate_kwargs):
        super().__init__()
        every_n_epochs = check_int("every_n_epochs", every_n_epochs, low=1)
        self.directory = os.fspath(directory)
        self.every_n_epochs = every_n_epochs
        self.conditions = conditions
        self.num_samples = num_samples
        self.seed = seed
        self.generate_kwargs = {"verbose": 0, **generate_kwargs}
        self.written = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        videos = self.model.generate(self.conditions, num_samples=self.num_samples,
                                     seed=self.seed, **self.generate_kwargs)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if not distribute.is_chief():
            return
        stem = os.path.join(self.directory, f"step_{step:07d}")
        self.written.append(save_videos(stem, videos, formats=("gif", "png")))
