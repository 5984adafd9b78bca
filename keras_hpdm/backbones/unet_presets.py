"""Architecture presets for `UNet3DBackbone` (configs only; the paper's UNets are unpublished).

The paper found adaptive computation helps UNets less (~10% vs ~60% for RIN, App. D);
these shapes follow common video-UNet practice (Ho et al. 2022) at growing widths.

Each preset's `metadata` gives its parameter count (`params`) for the instantiation in
`params_for` (3 channels, unconditional; `t2v` with its text width), counted by building
each once; the tests build `tiny` and `small` and check theirs.
"""

unet_presets = {
    "tiny": {
        "metadata": {
            "description": "About 0.17M parameters: tests and CPU demos.",
            "params": 170_717,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3},
        },
        "config": {"base_channels": 16, "channel_multipliers": [1, 2], "num_res_blocks": 1,
                   "attention_stages": [1], "num_heads": 2, "groups": 4, "cond_dim": 32},
    },
    "small": {
        "metadata": {
            "description": "About 1.2M parameters: CPU training for minutes to hours.",
            "params": 1_209_815,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3},
        },
        "config": {"base_channels": 32, "channel_multipliers": [1, 2, 2], "num_res_blocks": 1,
                   "attention_stages": [2], "num_heads": 4, "groups": 8, "cond_dim": 128},
    },
    "hpdm_s": {
        "metadata": {
            "description": "UNet counterpart of HPDM-S.",
            "params": 80_595_387,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3},
        },
        "config": {"base_channels": 128, "channel_multipliers": [1, 2, 2, 4],
                   "num_res_blocks": 2, "attention_stages": [2, 3], "num_heads": 8,
                   "groups": 32, "cond_dim": 512},
    },
    "hpdm_m": {
        "metadata": {
            "description": "UNet counterpart of HPDM-M.",
            "params": 181_153_339,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3},
        },
        "config": {"base_channels": 192, "channel_multipliers": [1, 2, 2, 4],
                   "num_res_blocks": 2, "attention_stages": [2, 3], "num_heads": 8,
                   "groups": 32, "cond_dim": 768},
    },
    "hpdm_l": {
        "metadata": {
            "description": "UNet counterpart of HPDM-L.",
            "params": 515_427_699,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3},
        },
        "config": {"base_channels": 256, "channel_multipliers": [1, 2, 3, 4],
                   "num_res_blocks": 3, "attention_stages": [2, 3], "num_heads": 16,
                   "groups": 32, "cond_dim": 1024},
    },
    "t2v": {
        "metadata": {
            "description": "Text-to-video UNet (T5-11B embeddings, 4 levels).",
            "params": 465_066_579,
            "params_for": {"patch_size": [16, 64, 64], "channels": 3},
        },
        "config": {"base_channels": 256, "channel_multipliers": [1, 2, 4, 4],
                   "num_res_blocks": 2, "attention_stages": [1, 2, 3], "num_heads": 16,
                   "groups": 32, "cond_dim": 1024, "text_dim": 4096},
    },
}
