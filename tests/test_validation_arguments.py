"""Every numeric argument of the public API rejects NaN, infinities, bools and floats where
it wants integers, with a `ValueError` naming the argument and the allowed values (issue 14).

Each case fails before any computation, so the whole file runs in a few seconds.
"""

import numpy as np
import pytest

import keras_hpdm
from keras_hpdm import PyramidSpec, layers
from keras_hpdm.backbones import RINBackbone, UNet3DBackbone, linear_levels_per_block
from keras_hpdm.diffusion import (
    EDMPreconditioning,
    LevelNoiseDistribution,
    PyramidDenoisingLoss,
    edm_sigmas,
    sample,
    tile_grid,
)

NAN, INF = float("nan"), float("inf")
SPEC = PyramidSpec((2, 8, 8), 2)


def rin(**overrides):
    return RINBackbone.from_preset("tiny", pyramid=SPEC, **overrides)


def model(**kwargs):
    return keras_hpdm.PatchDiffusionModel(rin(), **kwargs)


CASES = [
    # (callable, argument name in the message, allowed values in the message)
    # The model and its parts.
    (lambda: model(sigma_data=INF), "sigma_data", "finite number > 0"),
    (lambda: model(p_mean=NAN), "p_mean", "finite number"),
    (lambda: model(p_std=INF), "p_std", "finite number > 0"),
    (lambda: model(level_noise_scale=NAN), "level_noise_scale", "> 0"),
    (lambda: model(condition_dropout=NAN), "condition_dropout", r"in \[0, 1\)"),
    (lambda: model(ema_decay=NAN), "ema_decay", r"in \[0, 1\) or None"),
    (lambda: model(ema_half_life=INF), "ema_half_life", "finite number > 0 or None"),
    (lambda: model(seed=1.5), "seed", "non-negative integer"),
    (lambda: model(sampling={"sigma_max": NAN}), r'sampling\["sigma_max"\]', "finite"),
    (lambda: model(sampling={"sigma_min": 100.0}), r'sampling\["sigma_max"\]', "> 100"),
    (lambda: model(sampling={"rho": INF}), r'sampling\["rho"\]', "> 0"),
    (lambda: model(sampling={"S_churn": INF}), r'sampling\["S_churn"\]', '"auto" or a finite'),
    (lambda: model(sampling={"S_noise": NAN}), r'sampling\["S_noise"\]', ">= 0"),
    (lambda: model(sampling={"S_max": NAN}), r'sampling\["S_max"\]', ">= 0.05"),
    (lambda: model(sampling={"context_sigma": NAN}), r'sampling\["context_sigma"\]', ">= 0"),
    (lambda: model(sampling={"num_steps": 2.5}), r'sampling\["num_steps"\]', "positive int"),
    (lambda: model(sampling={"methods": ["ddim", "euler"]}), r'sampling\["methods"\]',
     "euler"),
    (lambda: LevelNoiseDistribution(p_mean=INF), "p_mean", "finite"),
    (lambda: EDMPreconditioning(NAN), "sigma_data", "> 0"),
    (lambda: PyramidDenoisingLoss(INF), "sigma_data", "> 0"),
    (lambda: model(level_loss_weights=[1.0]), "level_loss_weights", "sequence of 2 numbers"),
    (lambda: model(level_loss_weights=[1.0, NAN]), r"level_loss_weights\[1\]", ">= 0"),
    (lambda: model(level_loss_weights=[-1.0, 1.0]), r"level_loss_weights\[0\]", ">= 0"),
    (lambda: model(level_loss_weights=[0, 0]), "level_loss_weights", "positive sum"),
    (lambda: model(level_loss_weights=2.0), "level_loss_weights", "one per pyramid level"),
    # Diffusion functions (already checked; here so a refactor keeps them).
    (lambda: edm_sigmas(4, sigma_min=NAN), "sigma_min", "> 0"),
    (lambda: tile_grid((4, 8, 8), (2, 4, 4), NAN), r"overlap\[0\]", r"in \[0, 1\)"),
    # Layers.
    (lambda: layers.MLP(ratio=NAN), "ratio", "> 0"),
    (lambda: layers.MLP(ratio=INF), "ratio", "> 0"),
    (lambda: layers.Attention(2, output_dim=1.5), "output_dim", "integer >= 1 or None"),
    (lambda: layers.Attention(True), "num_heads", "integer >= 1"),
    (lambda: layers.ClassEmbedding(10, 2.5), "dim", "integer >= 1"),
    (lambda: layers.CropResample((2, 2, NAN)), r"output_size\[2\]", "integer >= 1"),
    (lambda: layers.Downsample3D(True), "filters", "integer >= 1"),
    (lambda: layers.Upsample3D(2.0), "filters", "integer >= 1"),
    (lambda: layers.FactorizedAttention(2, head_dim=True), "head_dim", "integer >= 1"),
    (lambda: layers.PatchTokenizer((1, 4, 4), NAN), "dim", "integer >= 1"),
    (lambda: layers.PatchTokenizer((1, INF, 4), 8), r"patch_size\[1\]", "integer >= 1"),
    (lambda: layers.PatchDetokenizer((1, 4, 4), 2.5), "channels", "integer >= 1"),
    (lambda: layers.RINBlock(num_heads=1.5), "num_heads", "integer >= 1"),
    (lambda: layers.RINBlock(mlp_ratio=NAN), "mlp_ratio", "> 0"),
    (lambda: layers.RINBlock(data_mlp_ratio=INF), "data_mlp_ratio", "> 0 or None"),
    (lambda: layers.SigmaEmbedding(8, max_period=NAN), "max_period", "> 0"),
    (lambda: layers.SigmaEmbedding(8, frequency_dim=255), "frequency_dim", "even"),
    (lambda: layers.SigmaEmbedding(2.5), "dim", "integer >= 1"),
    (lambda: layers.UNetResBlock(8, dropout=NAN), "dropout", r"in \[0, 1\)"),
    (lambda: layers.UNetResBlock(8.0), "filters", "integer >= 1"),
    # Backbones.
    (lambda: rin(num_blocks=2.5), "num_blocks", "integer >= 1"),
    (lambda: rin(cond_dim=NAN), "cond_dim", "integer >= 1"),
    (lambda: rin(text_dim=1.5), "text_dim", "integer >= 1 or None"),
    (lambda: rin(num_classes=2.5), "num_classes", "integer >= 1 or None"),
    (lambda: rin(channels=0), "channels", "integer >= 1"),
    (lambda: rin(mlp_ratio=NAN), "mlp_ratio", "> 0"),
    (lambda: rin(num_latents=0), "num_latents", "integer >= 1"),
    (lambda: rin(tokenizer_patch=(1, 4)), "tokenizer_patch", "3 integers"),
    (lambda: linear_levels_per_block(2.5, 3), "num_blocks", "integer >= 1"),
    (lambda: UNet3DBackbone(SPEC, dropout=NAN), "dropout", r"in \[0, 1\)"),
    (lambda: UNet3DBackbone(SPEC, base_channels=2.5), "base_channels", "integer >= 1"),
    (lambda: UNet3DBackbone(SPEC, attention_stages=(5,)), r"attention_stages\[0\]",
     r"in \[0, 2\]"),
    # Pyramid geometry.
    (lambda: SPEC.offsets_from_uniform(np.full((2, 3), NAN)), "u", r"uniforms in \[0, 1\)"),
    # The optimiser recipe.
    (lambda: keras_hpdm.hpdm_optimizer(1000.5), "total_steps", "integer >= 1"),
    (lambda: keras_hpdm.hpdm_optimizer(1000, learning_rate=NAN), "learning_rate", "> 0"),
    (lambda: keras_hpdm.hpdm_optimizer(1000, warmup_steps=-1), "warmup_steps", ">= 0"),
    (lambda: keras_hpdm.hpdm_optimizer(1000, beta_2=1.0), "beta_2", r"in \[0, 1\)"),
    (lambda: keras_hpdm.hpdm_optimizer(1000, clipnorm=INF), "clipnorm", "> 0"),
]


@pytest.mark.parametrize("fn, name, allowed", CASES, ids=[c[1] for c in CASES])
def test_bad_numeric_argument_is_named(fn, name, allowed):
    # "`name` must be <allowed>", or "`name[i] (axis)` must be ..." for tuple entries.
    with pytest.raises(ValueError, match=rf"`{name}[^`]*` must (be|hold) .*{allowed}"):
        fn()


def test_sampler_rejects_nan_and_inf():
    x = np.zeros((1, 2), "float32")
    for kwargs, name in [({"S_min": NAN}, "S_min"), ({"S_churn": INF}, "S_churn"),
                         ({"S_noise": INF}, "S_noise")]:
        with pytest.raises(ValueError, match=f"`{name}` must be a finite number >= 0"):
            sample(lambda x, s: x, x, [1.0, 0.0], method="stochastic", **kwargs)
