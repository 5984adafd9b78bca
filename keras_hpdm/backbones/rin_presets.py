"""Architecture presets for `RINBackbone` (configs only: the paper released no weights).

Paper Table 8 (HPDM-S/M/L, T2V): 6 RIN blocks, 1x4x4 tokenizer (1x3x4 for T2V), 768
latents, data-token width 1024, latent widths 256/512/1024/3072, levels per block
1/1/2/2/3/3 (1/2/2/3/3/4 for T2V). The paper does not give the latent layers per block or
the MLP widths; 6 latent layers and a data-token MLP ratio of 8 put the parameter counts
within 15% of the paper's (HPDM-S 172M vs 178M, M 272M vs 321M, L 675M vs 725M).
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
        "description": "A few hundred K parameters: tests and CPU demos.",
        "config": {
            "tokenizer_patch": [1, 4, 4], "data_dim": 32, "latent_dim": 32, "num_latents": 8,
            "num_blocks": 2, "num_latent_layers": 1, "num_heads": 2, "mlp_ratio": 2,
            "levels_per_block": "linear", "cond_dim": 32,
        },
    },
    "mini": {
        "description": "About 0.85M parameters (845,520 with 1 channel, 10 classes and 3 "
                       "levels of 4x16x16 patches): the bundled Moving MNIST model, trained "
                       "for 50 minutes on 2 CPU cores.",
        "config": {
            "tokenizer_patch": [1, 4, 4], "data_dim": 64, "latent_dim": 96, "num_latents": 16,
            "num_blocks": 3, "num_latent_layers": 2, "num_heads": 4, "mlp_ratio": 2,
            "levels_per_block": "linear", "cond_dim": 96,
            # The bundled model predates these two (see `RINBackbone`).
            "fixed_positions": False, "token_mixing": False,
        },
    },
    "small": {
        "description": "A few M parameters: CPU training for minutes to hours.",
        "config": {
            "tokenizer_patch": [1, 4, 4], "data_dim": 96, "latent_dim": 128, "num_latents": 32,
            "num_blocks": 4, "num_latent_layers": 2, "num_heads": 4, "mlp_ratio": 2,
            "levels_per_block": "linear", "cond_dim": 128,
        },
    },
    "hpdm_s": {
        "description": "HPDM-S (paper: 178M parameters, UCF-101 class-conditional).",
        "config": {**_PAPER, "data_dim": 1024, "latent_dim": 256, "num_heads": 8,
                   "cond_dim": 256},
    },
    "hpdm_m": {
        "description": "HPDM-M (paper: 321M parameters).",
        "config": {**_PAPER, "data_dim": 1024, "latent_dim": 512, "num_heads": 8,
                   "cond_dim": 512},
    },
    "hpdm_l": {
        "description": "HPDM-L (paper: 725M parameters).",
        "config": {**_PAPER, "data_dim": 1024, "latent_dim": 1024, "num_heads": 16,
                   "cond_dim": 1024},
    },
    "t2v": {
        "description": "HPDM-T2V (paper: 3.9B parameters, T5-11B text, 4 levels).",
        "config": {**_PAPER, "tokenizer_patch": [1, 3, 4], "data_dim": 1024,
                   "latent_dim": 3072, "num_heads": 16, "cond_dim": 1024,
                   "text_dim": 4096, "levels_per_block": [1, 2, 2, 3, 3, 4]},
    },
}
