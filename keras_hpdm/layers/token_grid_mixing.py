"""Depthwise (2+1)-D convolution over a grid of tokens."""

import keras
from keras import ops

from keras_hpdm.checks import check_int_tuple


@keras.saving.register_keras_serializable(package="keras_hpdm")
class TokenGridMixing(keras.layers.Layer):
    """Mixes every token with its grid neighbours: a per-channel 3x3 convolution over
    (height, width), then a per-channel 3-tap one over time, zero-padded at the borders.

    RIN's data tokens never attend to each other: a token learns what its neighbours hold
    only through a few latents. Early in training that leaves each token denoising its own
    pixels, and at noise levels where one token cannot tell a stroke from noise the
    estimate breaks into token-sized blocks (issue 13). This is the locality a convolution
    gives a UNet for `9 + 3` weights per channel; it is factorised as in (2+1)-D video
    convolutions, and depthwise because `keras.ops.depthwise_conv` is 2-D only and a grouped
    `Conv3D` is not available on every backend's CPU kernels.

    Args:
        grid_size: `(f, h, w)` token grid; inputs hold `f * h * w` tokens in that
            (row-major) order, as `PatchTokenizer` emits them.

    Call arguments:
        tokens: `(B, f * h * w, d)`.

    Returns:
        `(B, f * h * w, d)`.

    Example:
    ```python
    tokens = tokens + TokenGridMixing((4, 8, 8))(norm(tokens))  # tokens: (B, 256, d)
    ```
    """

    def __init__(self, grid_size, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = check_int_tuple("grid_size", grid_size, 3, labels=("f", "h", "w"))

    def build(self, input_shape):
        num_tokens, dim = input_shape[-2], input_shape[-1]
        f, h, w = self.grid_size
        if num_tokens is not None and num_tokens != f * h * w:
            raise ValueError(
                f"TokenGridMixing: inputs hold {num_tokens} tokens, but `grid_size` "
                f"{self.grid_size} has {f * h * w}."
            )
        self.spatial_kernel = self.add_weight(
            name="spatial_kernel", shape=(3, 3, dim, 1),
            initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
        )
        # Starts as the identity in time (centre tap 1): the spatial mixing alone at first.
        self.temporal_kernel = self.add_weight(
            name="temporal_kernel", shape=(3, dim),
            initializer=lambda shape, dtype=None: ops.stack(
                [ops.zeros(shape[1:], dtype), ops.ones(shape[1:], dtype),
                 ops.zeros(shape[1:], dtype)]),
        )
        self.bias = self.add_weight(name="bias", shape=(dim,), initializer="zeros")

    def call(self, tokens):
        f, h, w = self.grid_size
        dim = tokens.shape[-1]
        grid = ops.reshape(tokens, (-1, h, w, dim))  # frames folded into the batch
        grid = ops.depthwise_conv(grid, ops.cast(self.spatial_kernel, grid.dtype),
                                  padding="same", data_format="channels_last")
        grid = ops.reshape(grid, (-1, f, h * w, dim))
        padded = ops.pad(grid, ((0, 0), (1, 1), (0, 0), (0, 0)))
        taps = ops.cast(self.temporal_kernel, grid.dtype)
        grid = padded[:, :-2] * taps[0] + padded[:, 1:-1] * taps[1] + padded[:, 2:] * taps[2]
        return ops.reshape(grid, (-1, f * h * w, dim)) + ops.cast(self.bias, grid.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "grid_size": list(self.grid_size)}
