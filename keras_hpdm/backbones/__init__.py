"""Pyramid backbones: RIN and 3D UNet, with deep context fusion and adaptive computation."""

from keras_hpdm.backbones.hpdm_backbone import HPDMBackbone
from keras_hpdm.backbones.levels_schedule import (
    linear_levels_per_block,
    resolve_levels_per_block,
)
from keras_hpdm.backbones.rin_backbone import RINBackbone
from keras_hpdm.backbones.unet_backbone import UNet3DBackbone

# The backbones by the name `keras-hpdm train --backbone` and the benchmarks take.
BACKBONES = {"rin": RINBackbone, "unet": UNet3DBackbone}

__all__ = [
    "BACKBONES",
    "HPDMBackbone",
    "RINBackbone",
    "UNet3DBackbone",
    "linear_levels_per_block",
    "resolve_levels_per_block",
]
