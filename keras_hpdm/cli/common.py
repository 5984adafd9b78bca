"""Helpers shared by the `keras-hpdm` subcommands."""

import argparse
import contextlib
import os
import sys

BACKENDS = ("jax", "tensorflow", "torch")


class CommandError(Exception):
    """A user error in a subcommand's arguments or inputs: printed without a traceback."""


def set_backend(backend, argv):
    """Keras reads KERAS_BACKEND once, at import (which importing keras_hpdm did): if
    `--backend` asks for another one, re-run this command in a fresh interpreter with it."""
    import keras

    if backend and keras.config.backend() != backend:
        env = dict(os.environ, KERAS_BACKEND=backend)
        os.execve(sys.executable, [sys.executable, "-m", "keras_hpdm.cli", *argv], env)


def _number_type(convert, accept, description):
    """An argparse `type=` that converts and range-checks, with a message naming the range."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    return parse


positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: v > 0, "a positive number")
fraction = _number_type(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


# The files of a `keras-hpdm train` run (see callbacks/training_checkpoint.py): `--resume`
# needs them, so no other command may write over them.
RUN_FILES = ("model.keras", "training_state.json", "history.json")


def checkpoint_inputs(checkpoint):
    """The files a command that reads `checkpoint` (a .keras file, a run folder or
    pretrained:NAME) depends on: the model and the run's state beside it."""
    if checkpoint.startswith("pretrained:"):
        return []
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    model = os.path.join(checkpoint, RUN_FILES[0]) if os.path.isdir(checkpoint) else checkpoint
    return [model, os.path.join(folder or ".", RUN_FILES[1])]


def _run_folder(path):
    """The run folder `path` is a checkpoint file of, else None."""
    folder = os.path.dirname(path)
    is_run = os.path.isfile(os.path.join(folder, RUN_FILES[1]))
    return folder if is_run and os.path.basename(path) in RUN_FILES else None


def refuse_overwrite(outputs, inputs=()):
    """Raises CommandError (before anything is written) when an output would replace one of
    `inputs` or a file of a training run: a command must never destroy what it reads, nor
    the checkpoint a `train --resume` needs."""
    sources = {os.path.realpath(p) for p in inputs}
    for path in outputs:
        real = os.path.realpath(path)
        if os.path.isdir(real):
            raise CommandError(f"output {path} is a folder; give a file path.")
        if real in sources:
            raise CommandError(f"output {path} is this command's own input; choose another "
                               "output path.")
        folder = _run_folder(real)
        if folder is not None:
            raise CommandError(f"output {path} would replace the training checkpoint of run "
                               f"{folder} (its resume state); choose another output path.")


def add_allow_download(parser):
    parser.add_argument(
        "--allow-download", action="store_true",
        help="let a text encoder download its keras-hub preset when that is not a local "
             "directory (a preset name, hf:// or kaggle:// handle); off by default, so a "
             "model file never makes keras-hpdm download anything")


@contextlib.contextmanager
def download_setting(args):
    """`--allow-download` while the command runs (restored after: tests run it in-process)."""
    from keras_hpdm.conditioning import set_allow_download

    previous = set_allow_download(bool(getattr(args, "allow_download", False)))
    try:
        yield
    finally:
        set_allow_download(previous)


def print_outputs(outputs):
    for name, path in outputs.items():
        print(f"wrote {name}: {os.path.abspath(path)}")
