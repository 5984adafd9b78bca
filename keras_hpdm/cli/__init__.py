"""`keras-hpdm` command line: demo, train, generate, evaluate, prepare, export, pyramid,
info.

Each subcommand lives in its own module with `add_parser(subparsers)` and `run(args)`.
Building the parser imports nothing heavy (no Keras, backend, TensorFlow or NumPy: each
`run` imports what it needs), so `--help` is instant and `--backend` only has to set
`KERAS_BACKEND` before the command's first Keras import.
"""

import argparse
import os
import sys

from keras_hpdm.cli import demo, evaluate, export, generate, info, prepare, pyramid, train
from keras_hpdm.cli.common import BACKENDS, CommandError, set_backend

SUBCOMMANDS = (demo, train, generate, evaluate, prepare, export, pyramid, info)


class _ExactOptionsParser(argparse.ArgumentParser):
    """Options must be spelt out: argparse's default takes any unique prefix (`--label`
    for `--labels`), so a typo that happens to be a prefix runs silently, and adding an
    option later could change what an old command line means."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser():
    parser = _ExactOptionsParser(
        prog="keras-hpdm",
        description="Hierarchical Patch Diffusion Models in Keras 3: train on patch pyramids "
        "and generate videos tile by tile, under JAX, TensorFlow or PyTorch.",
        epilog="Run `keras-hpdm COMMAND --help` for a command's options.",
    )
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else jax)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_ExactOptionsParser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded by `train` in the checkpoint's state
    # JAX compiles the sampler's network calls and is the fastest backend here on CPU.
    set_backend(args.backend or os.environ.get("KERAS_BACKEND") or "jax", argv)
    try:
        return args.func(args)
    except (CommandError, ValueError, TypeError, FileNotFoundError, ImportError) as e:
        message = " ".join(str(e).split())  # one line, whatever the library's message
        parser.exit(2, f"keras-hpdm {args.command}: error: {message}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"keras-hpdm {args.command}: interrupted\n")
    except Exception as e:  # a data error raised inside TensorFlow while training
        from keras_hpdm.data.pipeline import data_error_message

        message = data_error_message(e)
        if message is None:
            raise
        parser.exit(2, f"keras-hpdm {args.command}: error: {' '.join(message.split())}\n")
