"""The paper's reference numbers: Skorokhodov et al., CVPR 2024 (A100, 64x256x256 UCF-101,
HPDM-S)."""

PAPER = {
    "full_memory_gb": 65.3, "full_videos_per_s": 1.24,
    "hpdm_ac_memory_gb": 14.2, "hpdm_ac_videos_per_s": 6.71,
    "memory_ratio": 14.2 / 65.3, "throughput_ratio": 6.71 / 1.24,
    "ac_rin_videos_per_s": 4.4, "noac_rin_videos_per_s": 2.73, "ac_rin_speedup": 4.4 / 2.73,
    "ac_unet_speedup": 1.1,
}
