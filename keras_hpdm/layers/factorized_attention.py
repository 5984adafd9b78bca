"""`FactorizedAttention`: spatial then temporal self-attention over video features."""

import keras
import numpy as np
from keras import ops

from keras_hpdm.checks import check_int


@keras.saving.register_keras_serializable(package="keras_hpdm")
class FactorizedAttention(keras.layers.Layer):
    """Factorised space-time self-attention for `(B, F, H, W, C)` video features.

    First spatial attention: the `H * W` tokens of each frame attend to each other (frames
    never mix). Then temporal attention: the `F` tokens at each spatial position attend to each
    other, with a learned per-head relative-position bias (attention alone is blind to frame
    order). Each part is pre-norm (LayerNorm) and residual, with a zero-initialised output
    projection, so a fresh layer is the identity. LayerNorms and the softmax run in float32
    under mixed precision. Works for images (`F == 1`).

    Args:
        num_heads: int, number of attention heads.
        head_dim: int or `None`, size of each head; `None` uses `C // num_heads`, which then
            requires `C % num_heads == 0`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        x: `(B, F, H, W, C)` channels-last video features with static `F, H, W, C`.

    Returns:
        A tensor of the same shape as `x`.

    Example:
    ```python
    attn = FactorizedAttention(num_heads=4)
    y = attn(np.ones((2, 4, 8, 8, 32), "float32"))
    y.shape  # (2, 4, 8, 8, 32)
    ```

    References:
        - Ho et al., "Video Diffusion Models", NeurIPS 2022 (factorised space-time attention,
          relative position embeddings in time).
        - Shaw et al., "Self-Attention with Relative Position Representations", NAACL 2018.
    """

    def __init__(self, num_heads, head_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.head_dim = check_int("head_dim", head_dim, low=1, allow_none=True)
        self.spatial_norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype="float32",
                                                            name="spatial_norm")
        self.temporal_norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype="float32",
                                                             name="temporal_norm")
        self.softmax = keras.layers.Softmax(axis=-1, dtype="float32", name="softmax")
        self.spatial_qkv = self.temporal_qkv = None
        self.spatial_out = self.temporal_out = None

    def build(self, input_shape):
        if len(input_shape) != 5 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                "`x` must have shape (B, F, H, W, C) with static F, H, W, C. "
                f"Received: {input_shape}"
            )
        frames, channels = input_shape[1], input_shape[-1]
        if self.head_dim is None and channels % self.num_heads:
            raise ValueError(
                f"`num_heads` must divide the channels when `head_dim` is None. "
                f"Received: num_heads={self.num_heads}, channels={channels}"
            )
        self._key_dim = self.head_dim or channels // self.num_heads
        inner = self.num_heads * self._key_dim
        token_shape = (None, None, channels)
        for part in ("spatial", "temporal"):
            getattr(self, f"{part}_norm").build(token_shape)
            qkv = keras.layers.Dense(3 * inner, dtype=self.dtype_policy, name=f"{part}_qkv")
            qkv.build(token_shape)
            out = keras.layers.Dense(channels, kernel_initializer="zeros", dtype=self.dtype_policy,
                                     name=f"{part}_out")
            out.build((None, None, inner))
            setattr(self, f"{part}_qkv", qkv)
            setattr(self, f"{part}_out", out)
        # One logit bias per head and frame offset (key - query); zero at init. Not autocast:
        # it is added to the float32 logits.
        self.relative_bias = self.add_weight(
            shape=(2 * frames - 1, self.num_heads), initializer="zeros", autocast=False,
            name="relative_bias",
        )
        offsets = np.arange(frames)[None, :] - np.arange(frames)[:, None]
        self._relative_index = (offsets + frames - 1).astype("int32")

    def _attend(self, x, norm, qkv, out, bias=None):
        """Pre-norm residual multi-head self-attention over `x` of shape (N, T, C)."""
        tokens = x.shape[1]
        h = ops.cast(norm(x), self.compute_dtype)
        q, k, v = ops.split(ops.reshape(qkv(h), (-1, tokens, 3 * self.num_heads, self._key_dim)),
                            3, axis=2)
        if tokens == 1:  # a lone token attends to itself only (images, F == 1)
            return x + out(ops.reshape(v, (-1, 1, self.num_heads * self._key_dim)))
        # Scale q before the product so float16 logits stay small.
        q = q * ops.cast(self._key_dim**-0.5, q.dtype)
        logits = ops.cast(ops.einsum("nqhd,nkhd->nhqk", q, k), "float32")
        if bias is not None:
            logits = logits + bias
        weights = ops.cast(self.softmax(logits), self.compute_dtype)  # float32 island
        h = ops.einsum("nhqk,nkhd->nqhd", weights, v)
        return x + out(ops.reshape(h, (-1, tokens, self.num_heads * self._key_dim)))

    def call(self, x):
        _, frames, height, width, channels = x.shape
        # Spatial: each frame's H*W tokens, frames folded into the batch.
        h = ops.reshape(x, (-1, height * width, channels))
        h = self._attend(h, self.spatial_norm, self.spatial_qkv, self.spatial_out)
        # Temporal: each position's F tokens, positions folded into the batch.
        h = ops.reshape(h, (-1, frames, height, width, channels))
        h = ops.reshape(ops.transpose(h, (0, 2, 3, 1, 4)), (-1, frames, channels))
        bias = ops.take(self.relative_bias, self._relative_index, axis=0)
        bias = ops.transpose(bias, (2, 0, 1))  # (heads, F_q, F_k)
        h = self._attend(h, self.temporal_norm, self.temporal_qkv, self.temporal_out, bias)
        h = ops.reshape(h, (-1, height, width, frames, channels))
        return ops.transpose(h, (0, 3, 1, 2, 4))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim})
        return config
