"""Architecture presets for `UNet3DBackbone` (configs only; the paper's UNets are unpublished).

The paper found adaptive computation helps UNets less (~10% vs ~60% for RIN, App. D);
these shapes follow common video-UNet practice (Ho et al. 2022) at growing widths.
"""

unet_presets = {
    "tiny": {
        "description": "A few hundred K parameters: tests and CPU demos.",
        "config": {"base_channels": 16, "channel_multipliers": [1, 2], "num_res_blocks": 1,
                   "attention_stages": [1], "num_heads": 2, "groups": 4, "cond_dim": 32},
    },
    "small": {
        "description": "A few M parameters: CPU training for minutes to hours.",
        "config": {"base_channels": 32, "channel_multipliers": [1, 2, 2], "num_res_blocks": 1,
                   "attention_stages": [2], "num_heads": 4, "groups": 8, "cond_dim": 128},
    },
    "hpdm_s": {
        "description": "UNet counterpart of HPDM-S.",
        "config": {"base_channels": 128, "channel_multipliers": [1, 2, 2, 4],
                   "num_res_blocks": 2, "attention_stages": [2, 3], "num_heads": 8,
                   "groups": 32, "cond_dim": 512},
    },
    "hpdm_m": {
        "description": "UNet counterpart of HPDM-M.",
        "config": {"base_channels": 192, "channel_multipliers": [1, 2, 2, 4],
                   "num_res_blocks": 2, "attention_stages": [2, 3], "num_heads": 8,
                   "groups": 32, "cond_dim": 768},
    },
    "hpdm_l": {
        "description": "UNet counterpart of HPDM-L.",
        "config": {"base_channels": 256, "channel_multipliers": [1, 2, 3, 4],
                   "num_res_blocks": 3, "attention_stages": [2, 3], "num_heads": 16,
                   "groups": 32, "cond_dim": 1024},
    },
    "t2v": {
        "description": "Text-to-video UNet (T5-11B embeddings, 4 levels).",
        "config": {"base_channels": 256, "channel_multipliers": [1, 2, 4, 4],
                   "num_res_blocks": 2, "attention_stages": [1, 2, 3], "num_heads": 16,
                   "groups": 32, "cond_dim": 1024, "text_dim": 4096},
    },
}
