"""EDM-weighted denoising loss over a patch pyramid."""

import keras
from keras import ops

from keras_hpdm.checks import check_level_weights
from keras_hpdm.diffusion.preconditioning import EDMPreconditioning


@keras.saving.register_keras_serializable(package="keras_hpdm")
class PyramidDenoisingLoss:
    """`sum_l w_l E[lambda(sigma_l) ||D(x_l + n; sigma_l) - x_l||^2] / sum_l w_l`.

    Args:
        sigma_data: as in the preconditioning (sets `lambda`).
        level_weights: None (every level weighs the same: a mean over levels) or one
            weight >= 0 per level. Normalised by their sum over the levels a batch has, so
            the total stays on the per-level losses' scale.

    Call arguments:
        clean: `(B, L, ...)` clean patches.
        denoised: `(B, L, ...)` denoiser outputs.
        sigma: `(B, L)` noise levels.
        sample_weight: optional `(B,)` weights (e.g. 0 for padded samples).

    Returns:
        `(total, per_level)`: the weighted scalar and the unweighted `(L,)`, float32.

    Example:
    ```python
    total, per_level = PyramidDenoisingLoss(0.5)(clean, denoised, sigma)
    ```
    """

    def __init__(self, sigma_data=0.5, level_weights=None):
        self.preconditioning = EDMPreconditioning(sigma_data)
        self.level_weights = (None if level_weights is None
                              else check_level_weights("level_weights", level_weights))

    @property
    def sigma_data(self):
        return self.preconditioning.sigma_data

    def __call__(self, clean, denoised, sigma, sample_weight=None):
        err = ops.square(ops.cast(denoised, "float32") - ops.cast(clean, "float32"))
        # A mean over the trailing axes, not a reshape: that needs only the rank, and a
        # generator's batch axis (and any other) may be unknown while TensorFlow traces.
        per_sample_level = ops.mean(err, axis=tuple(range(2, len(err.shape))))
        per_sample_level = per_sample_level * self.preconditioning.loss_weight(sigma)  # (B, L)
        if sample_weight is None:
            per_level = ops.mean(per_sample_level, axis=0)
        else:
            w = ops.cast(sample_weight, "float32")[:, None]
            per_level = ops.sum(per_sample_level * w, axis=0) / ops.maximum(ops.sum(w), 1e-12)
        if self.level_weights is None:
            return ops.mean(per_level), per_level
        num_levels = per_level.shape[0]
        if num_levels > len(self.level_weights):
            raise ValueError(f"The batch has {num_levels} levels; `level_weights` has "
                             f"{len(self.level_weights)}.")
        weights = self.level_weights[:num_levels]
        if sum(weights) <= 0:
            raise ValueError(f"`level_weights` {self.level_weights} give the batch's "
                             f"{num_levels} levels no weight.")
        total = ops.sum(per_level * ops.convert_to_tensor(weights, "float32")) / sum(weights)
        return total, per_level

    def get_config(self):
        return {"sigma_data": self.sigma_data,
                "level_weights": None if self.level_weights is None
                else list(self.level_weights)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
