"""Helpers shared by the `keras-hpdm` subcommands."""

import argparse
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


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def print_outputs(outputs):
    for name, path in outputs.items():
        print(f"wrote {name}: {os.path.abspath(path)}")
