"""Diffusion: noise schedules, EDM samplers, batch-independent seeding and tiled denoising."""

from keras_hpdm.diffusion.loss import PyramidDenoisingLoss
from keras_hpdm.diffusion.noise import LevelNoiseDistribution
from keras_hpdm.diffusion.preconditioning import EDMPreconditioning
from keras_hpdm.diffusion.samplers import StopSampling, sample
from keras_hpdm.diffusion.schedules import edm_sigmas
from keras_hpdm.diffusion.seeding import derive_seed, per_sample_normal
from keras_hpdm.diffusion.tiling import blend_window, tile_grid, tile_starts, tiled_denoiser

__all__ = [
    "EDMPreconditioning",
    "LevelNoiseDistribution",
    "PyramidDenoisingLoss",
    "StopSampling",
    "blend_window",
    "derive_seed",
    "edm_sigmas",
    "per_sample_normal",
    "sample",
    "tile_grid",
    "tile_starts",
    "tiled_denoiser",
]
