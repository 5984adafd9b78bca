"""Training noise levels: independent log-normal sigma per pyramid level, shifted per level."""

import keras
from keras import ops

from keras_hpdm.checks import check_number


@keras.saving.register_keras_serializable(package="keras_hpdm")
class LevelNoiseDistribution:
    """`sigma_l = exp(P_mean + P_std * n) * level_noise_scale**l`, `n ~ N(0, 1)` per level.

    Finer levels hold smoother (more correlated) pixels, so the same sigma destroys less of
    their signal; the paper uses "exponentially smaller input noise scaling with each increase
    in pyramid level", which in sigma-space is this multiplicative shift (paper §4.5, Chen
    2023). `level_noise_scale=1` disables it.

    Args:
        p_mean, p_std: EDM's log-normal parameters (-1.2, 1.2).
        level_noise_scale: per-level sigma multiplier (>= 1 shifts finer levels noisier).

    Example:
    ```python
    dist = LevelNoiseDistribution(level_noise_scale=2.0)
    sigma = dist.sample((batch, num_levels), seed=seed_generator)  # (B, L) float32
    ```
    """

    def __init__(self, p_mean=-1.2, p_std=1.2, level_noise_scale=2.0):
        self.p_mean = check_number("p_mean", p_mean)
        self.p_std = check_number("p_std", p_std, low=0.0, low_open=True)
        self.level_noise_scale = check_number("level_noise_scale", level_noise_scale, low=0.0,
                                              low_open=True)

    def level_multipliers(self, num_levels):
        return ops.power(self.level_noise_scale, ops.arange(num_levels, dtype="float32"))

    def sample(self, shape, seed=None):
        """Draws sigma of `shape = (B, L)` (float32)."""
        n = keras.random.normal(shape, dtype="float32", seed=seed)
        return ops.exp(self.p_mean + self.p_std * n) * self.level_multipliers(shape[-1])

    def get_config(self):
        return {"p_mean": self.p_mean, "p_std": self.p_std,
                "level_noise_scale": self.level_noise_scale}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
