"""Continuous noise-level embedding, the entry point of every condition (float32 island)."""

import math

import keras
from keras import ops

from keras_hpdm.checks import check_int, check_number


@keras.saving.register_keras_serializable(package="keras_hpdm")
class SigmaEmbedding(keras.layers.Layer):
    """Embeds a continuous noise level `sigma` as EDM does: `c_noise = ln(sigma) / 4`,
    sinusoidal features, then a 2-layer MLP.

    Other conditions (class, pooled text) are added to the sinusoidal features *before* the
    MLP, as EDM and ADM do: the features have unit-scale entries, so a condition embedded
    at that scale moves the output as much as the noise level does. (Added after the MLP,
    a class embedding is drowned: trained sigma embeddings grow to norms of ~150.)

    Always computes in float32 (whatever the dtype policy): log-sigma spans ~[-2, 1.5] and
    its sinusoids need full precision to keep nearby noise levels apart.

    Args:
        dim: output width.
        frequency_dim: number of sinusoidal features (half sin, half cos).
        max_period: longest period of the sinusoids.

    Call arguments:
        sigma: `(...)` positive noise levels.
        condition: optional `(..., frequency_dim)` embedding (broadcast against `sigma`'s
            shape) added to the noise features before the MLP.

    Returns:
        `(..., dim)` float32.

    Example:
    ```python
    emb = SigmaEmbedding(256)(sigma)  # sigma (B, L) -> (B, L, 256)
    emb = SigmaEmbedding(256)(sigma, condition=class_emb[:, None, :])  # class_emb (B, 256)
    ```

    References:
        - [Karras et al., Elucidating the Design Space of Diffusion-Based Generative
          Models, NeurIPS 2022](https://arxiv.org/abs/2206.00364)
    """

    float32_island = True

    def __init__(self, dim, frequency_dim=256, max_period=10000.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.dim = check_int("dim", dim, low=1)
        self.frequency_dim = check_int("frequency_dim", frequency_dim, low=2)
        if self.frequency_dim % 2:
            raise ValueError(f"`frequency_dim` must be even (half sin, half cos), got "
                             f"{frequency_dim!r}.")
        self.max_period = check_number("max_period", max_period, low=0.0, low_open=True)

    def build(self, input_shape):
        self.hidden = keras.layers.Dense(self.dim, activation="silu", dtype="float32",
                                         name="hidden")
        self.out = keras.layers.Dense(self.dim, dtype="float32", name="out")
        self.hidden.build(tuple(input_shape) + (self.frequency_dim,))
        self.out.build(tuple(input_shape) + (self.dim,))

    def features(self, sigma):
        """The sinusoidal noise features `(..., frequency_dim)`, before the MLP."""
        c_noise = ops.log(ops.maximum(ops.cast(sigma, "float32"), 1e-20)) / 4.0
        half = self.frequency_dim // 2
        freqs = ops.exp(-math.log(self.max_period) * ops.arange(half, dtype="float32") / half)
        # Scale so that c_noise's range (a few units) spans many periods of the fast features.
        angles = (c_noise[..., None] * 1000.0) * freqs
        return ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1)

    def call(self, sigma, condition=None):
        features = self.features(sigma)
        if condition is not None:
            features = features + ops.cast(condition, "float32")
        return self.out(self.hidden(features))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.dim,)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        return {
            **config,
            "dim": self.dim,
            "frequency_dim": self.frequency_dim,
            "max_period": self.max_period,
        }
