"""Architecture presets for `RINBackbone` (configs only: the paper released no weights).

Paper Table 8 (HPDM-S/M/L, T2V): 6 RIN blocks, 1x4x4 tokenizer (1x3x4 for T2V), 768
latents, data-token width 1024, latent widths 256/512/1024/3072, levels per block
1/1/2/2/3/3 (1/2/2/3/3/4 for T2V). The paper does not give the latent layers per block or
the MLP widths; 6 latent layers and a data-token MLP ratio of 8 put HPDM-S and M within
7% of the paper's counts (191M vs 178M, 339M vs 321M); with adaptive norms and token mixing
in every block, L (902M vs 725M) and T2V (5.5B vs 3.9B) come out larger.

Each preset's `metadata` gives its parameter count (`params`) for the instantiation in
`params_for` (patch size, channels, classes): the learned positions and the pixel
projections depend on them.
"""

_PAPER = {
    "tokenizer_patch": [1, 4, 4],
    "num_latents": 768,
    "num_blocks": 6,
    "num_latent_layers": 6,
    "mlp_ratio": 4,
    "data_mlp_ratio": 8,
    "levels_per_block": "linear",
}

rin_presets = {
    "tiny": {
        "metadata": {
            "description": "About 0.1M parameters: tests and CPU demos.",
            "params": 105_904,
            "params_for": {"patch_size": [4, 16, 16], "channels": 3},
        },
        "config": {
            "tokenizer_patch": [1, 4, 4], "data_dim": 32, "latent_dim": 32, "num_latents": 8,
            "num_blocks": 2, "num_latent_layers": 1, "num_heads": 2, "mlp_ratio": 2,
            "levels_per_block": "linear", "cond_dim": 32,
        },
    },
    "mini": {
        "metadata": {
            "description": "About 1.35M parameters: the architecture of the bundled Moving "
                           "MNIST model (`PatchDiffusionModel.from_preset(\"moving_mnist\")`), "
                           "trained for 8 minutes on one H200 GPU.",
            "params": 1_352_784,
            "params_for": {"patch_size": [4, 16, 16], "channels": 1, "num_classes": 10},
        },
        "config": {
            "tokenizer_patch": [1, 4, 4], "data_dim": 64, "latent_dim": 96, "num_latents": 32,
            "num_blocks": 3, "num_latent_layers": 2, "num_heads": 4, "mlp_ratio": 2,
            "levels_per_block": "linear", "cond_dim": 96,
        },
    },
    "small": {
        "metadata": {
            "description": "About 3M parameters: CPU training for minutes to hours.",
            "params": 3_265_360,
            "params_for": {"patch_size": [4, 16, 16], "channels": 3},
        },
        "config": {
            "tokenizer_patch": [1, 4, 4], "data_dim": 96, "latent_dim": 128, "num_latents": 32,
            "num_blocks": 4, "num_latent_layers": 2, "num_heads": 4, "mlp_ratio": 2,
            "levels_per_block": "linear", "cond_dim": 128,
        },
    },
    "hpdm_s": {
        "metadata": {
            "description": "HPDM-S (paper: 178M parameters, UCF-101 class-conditional).",
            "params": 190_748_464,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3, "num_classes": 101},
        },
        "config": {**_PAPER, "data_dim": 1024, "latent_dim": 256, "num_heads": 8,
                   "cond_dim": 256},
    },
    "hpdm_m": {
        "metadata": {
            "description": "HPDM-M (paper: 321M parameters).",
            "params": 339_436_592,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3, "num_classes": 101},
        },
        "config": {**_PAPER, "data_dim": 1024, "latent_dim": 512, "num_heads": 8,
                   "cond_dim": 512},
    },
    "hpdm_l": {
        "metadata": {
            "description": "HPDM-L (paper: 725M parameters).",
            "params": 901_840_432,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3, "num_classes": 101},
        },
        "config": {**_PAPER, "data_dim": 1024, "latent_dim": 1024, "num_heads": 16,
                   "cond_dim": 1024},
    },
    "t2v": {
        "metadata": {
            "description": "HPDM-T2V (paper: 3.9B parameters, T5-11B text, 4 levels).",
            "params": 5_475_292_452,
            "params_for": {"patch_size": [16, 48, 64], "channels": 3},
        },
        "config": {**_PAPER, "tokenizer_patch": [1, 3, 4], "data_dim": 1024,
                   "latent_dim": 3072, "num_heads": 16, "cond_dim": 1024,
                   "text_dim": 4096, "levels_per_block": [1, 2, 2, 3, 3, 4]},
    },
}
