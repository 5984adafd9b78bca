"""keras_hpdm: Hierarchical Patch Diffusion Models for high-resolution video in Keras 3.

Runs under JAX, TensorFlow and PyTorch: set `KERAS_BACKEND` before importing.

Importing is light, so that the `keras-hpdm` command starts in a fraction of a second:
the submodules (and Keras, the backend and TensorFlow with them) load, all at once, on
first use of an attribute (`keras_hpdm.PatchDiffusionModel`, `keras_hpdm.data`, ...), when
Keras is imported (before or after keras_hpdm), or by the loaders
(`keras_hpdm.pretrained.load_pretrained`, `keras_hpdm.callbacks.load_training_checkpoint`).
Loading them registers every keras_hpdm class with Keras for `keras.saving.load_model`.
"""

from keras_hpdm import _startup

_startup.quiet_start()  # TensorFlow's / XLA's log levels: before anything imports them

__version__ = "0.1.0"

# The public API: the submodules, and the names below from theirs.
_SUBMODULES = ("backbones", "callbacks", "conditioning", "data", "diffusion", "distribute",
               "layers", "metrics", "models", "optimizers", "pretrained", "pyramid")
_NAMES = {
    "PatchDiffusionModel": "keras_hpdm.models",
    "PyramidSpec": "keras_hpdm.pyramid",
    "hpdm_optimizer": "keras_hpdm.optimizers",
}

__all__ = [
    "PatchDiffusionModel",
    "PyramidSpec",
    "__version__",
    "backbones",
    "callbacks",
    "conditioning",
    "data",
    "diffusion",
    "distribute",
    "hpdm_optimizer",
    "layers",
    "metrics",
    "pretrained",
]


def _load_all():
    """Imports every public submodule (what `import keras_hpdm` did before it was light):
    every keras_hpdm class is then registered with Keras."""
    import importlib

    for name in _SUBMODULES:
        importlib.import_module(f"{__name__}.{name}")
    # `keras_hpdm.models` itself is light (the CLI reads its generation plan without Keras).
    importlib.import_module(f"{__name__}.models.patch_diffusion_model")


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    if name in _SUBMODULES and _startup._initializing():
        # `from keras_hpdm import distribute` inside a module being imported: loading every
        # module here could come back to that half-made one. Only the submodule asked for;
        # the Keras-import hook loads the rest once the outermost import ends.
        return importlib.import_module(f"{__name__}.{name}")
    _load_all()
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")  # testing, media, cli, ...
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


if "keras" in __import__("sys").modules:  # Keras is loaded already: load the rest now
    _load_all()
else:  # or right after a later top-level `import keras`
    _startup.register_on_keras_import(_load_all)
