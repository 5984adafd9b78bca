"""Task models."""

from keras_hpdm.models.patch_diffusion_model import PatchDiffusionModel

__all__ = ["PatchDiffusionModel"]
