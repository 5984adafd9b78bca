"""Task models.

Light to import: `keras_hpdm.models.generation_plan`, with which the command line checks a
generation request before any backend loads, needs no Keras; `PatchDiffusionModel` (and
Keras with it) loads on first use.
"""

__all__ = ["PatchDiffusionModel"]


def __getattr__(name):
    if name == "PatchDiffusionModel":
        from keras_hpdm.models.patch_diffusion_model import PatchDiffusionModel

        return PatchDiffusionModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
