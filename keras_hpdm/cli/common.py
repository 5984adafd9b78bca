"""Helpers shared by the `keras-hpdm` subcommands."""

import argparse
import contextlib
import json
import os
import sys
import zipfile

from keras_hpdm.checks import check_guidance_scale, check_int, check_number
from keras_hpdm.models.generation_plan import DEFAULT_SAMPLING, GenerationPlan

BACKENDS = ("jax", "tensorflow", "torch")


class CommandError(Exception):
    """A user error in a subcommand's arguments or inputs: printed without a traceback."""


def set_backend(backend, argv):
    """Keras reads KERAS_BACKEND once, when it is first imported. The commands import it
    only in their `run`, so it is usually not imported yet: then setting the variable is
    enough. If it is (the CLI called in-process) with another backend, re-run this command
    in a fresh interpreter with it."""
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = backend
    elif keras.config.backend() != backend:
        env = dict(os.environ, KERAS_BACKEND=backend)
        os.execve(sys.executable, [sys.executable, "-m", "keras_hpdm.cli", *argv], env)


def active_backend():
    """The backend the command runs under, without importing Keras to ask it."""
    keras = sys.modules.get("keras")
    return keras.config.backend() if keras is not None else os.environ["KERAS_BACKEND"]


def _checked(convert, check, **limits):
    """An argparse `type=` that converts the text and checks it with the library's own
    check (`keras_hpdm.checks`): the CLI accepts what the library accepts."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = text  # the check names what is expected
        try:
            return check("value", value, **limits)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("`value` ")) from None

    return parse


positive_int = _checked(int, check_int, low=1)
non_negative_int = _checked(int, check_int, low=0)
positive_float = _checked(float, check_number, low=0.0, low_open=True)
fraction = _checked(float, check_number, low=0.0, high=1.0, high_open=True)
unit_interval = _checked(float, check_number, low=0.0, high=1.0)
non_negative_float = _checked(float, check_number, low=0.0)
# 0 samples unconditionally, 1 conditionally without guidance: as `model.generate`.
guidance = _checked(float, lambda name, value: check_guidance_scale(value, name))


def add_guidance_options(parser, saved=False):
    """`--guidance` (one scale or one per level) and `--context-sigma`: what
    `model.generate` guides with and how much noise the finer levels see on the coarser
    ones; with `saved` (export), the defaults the exported model samples with."""
    default = ("saved as its sampling[\"{key}\"]; default: the checkpoint's" if saved
               else "default: the model's own")
    parser.add_argument(
        "--guidance", type=guidance, nargs="+", default=None, metavar="W",
        help="classifier-free guidance scale, >= 0 (0 = unconditional, 1 = conditional "
             "without guidance), one for all levels or one per level (e.g. 8 4 4: the "
             f"layout, drawn at level 0, guided harder; {default.format(key='guidance_scale')})")
    parser.add_argument(
        "--context-sigma", type=non_negative_float, default=None, metavar="SIGMA",
        help="the noise the finer levels see on the finished coarser levels: ~0.5-1 keeps "
             "their layout and lets the finer levels redraw their details "
             f"({default.format(key='context_sigma')}; models trained here: 0.002)")


def default_verbose():
    """Progress bars (1) on a terminal; elsewhere (a file, a pipe, CI logs) one plain line
    per epoch or level (2): Keras' bars are ANSI text that piles up in a file."""
    return 1 if hasattr(sys.stdout, "isatty") and sys.stdout.isatty() else 2


def add_verbose(parser, what):
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=default_verbose(),
                        help=f"0 silent, 1 progress bars, 2 one line per {what} (default: 1 "
                             "on a terminal, else 2)")


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


# ------------------------------------------------------ checks before loading a model
def model_config(checkpoint):
    """The config of a model file (a .keras file, a run folder or pretrained:NAME), read
    from the archive's config.json with zipfile + json: no Keras, no weights. None when it
    cannot be read (loading the model then says why)."""
    if checkpoint.startswith("pretrained:"):
        from keras_hpdm.pretrained import pretrained_path

        path = pretrained_path(checkpoint.split(":", 1)[1])  # an unknown name raises here
    else:
        path = os.path.join(checkpoint, RUN_FILES[0]) if os.path.isdir(checkpoint) else checkpoint
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))["config"]
        backbone = config["backbone"]["config"]
        pyramid = backbone["pyramid"]["config"]
        backbone["pyramid"] = {"patch_size": [int(n) for n in pyramid["patch_size"]],
                               "num_levels": int(pyramid["num_levels"]),
                               "pyramid_time": bool(pyramid.get("pyramid_time", True))}
        return {**config, "backbone": backbone}
    except Exception:  # missing, damaged or another kind of file: the loader reports it
        return None


def level_sizes(pyramid):
    """`(F, H, W)` of every level of a pyramid (a `PyramidSpec` or its config dict)."""
    if isinstance(pyramid, dict):
        patch, levels, time = pyramid["patch_size"], pyramid["num_levels"], pyramid[
            "pyramid_time"]
        return [tuple(n * 2**level if axis or time else n for axis, n in enumerate(patch))
                for level in range(levels)]
    return [tuple(pyramid.level_size(level)) for level in range(pyramid.num_levels)]


def resolve_levels(sizes, resolution):
    """The number of levels to generate for `--resolution FxHxW` (None: all of them)."""
    if resolution is None:
        return None
    try:
        size = tuple(int(v) for v in resolution.lower().split("x"))
    except ValueError:
        size = None
    if size not in sizes:
        allowed = ", ".join("x".join(map(str, s)) for s in sizes)
        raise CommandError(f"--resolution must be one of this model's level sizes ({allowed}), "
                           f"got {resolution!r}.")
    return sizes.index(size) + 1


def per_level(values):
    """An `nargs="+"` option (`--steps`, `--sampler`) as `generate` takes it: one value
    for all levels (or level 0's steps), else the list, one per level."""
    return values[0] if values and len(values) == 1 else values


def check_request(checkpoint, conditions, resolution=None, **options):
    """Checks a generation request against the model file's config before its weights are
    loaded (a second instead of the ~20 s a load takes): builds the `GenerationPlan` that
    `model.generate(conditions, **options)` builds, from the file's settings. Returns the
    config, or None when it cannot be read."""
    config = model_config(checkpoint)
    if config is not None:
        check_plan(config, conditions, resolution, **options)
    return config


def check_plan(config, conditions, resolution=None, **options):
    """`check_request` on a config read by `model_config`: raises what `generate` would."""
    backbone = config["backbone"]
    pyramid = backbone["pyramid"]
    GenerationPlan.resolve(
        pyramid["num_levels"], {**DEFAULT_SAMPLING, **(config.get("sampling") or {})},
        backbone.get("num_classes"), backbone.get("text_dim"), conditions=conditions,
        num_levels=resolve_levels(level_sizes(pyramid), resolution), **options)


# ------------------------------------------------------------------ output folders
def output_folder(out, names):
    """The paths of files `names` in the folder `out` (every `--out` is a folder), checked
    before anything is written."""
    if os.path.isfile(out):
        raise CommandError(f"--out {out} is a file: give a folder (the command writes "
                           f"{', '.join(names)} into it).")
    return [os.path.join(out, name) for name in names]
