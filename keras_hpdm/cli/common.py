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


def print_outputs(outputs):
    for name, path in outputs.items():
        print(f"wrote {name}: {os.path.abspath(path)}")
