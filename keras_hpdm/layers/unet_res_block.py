"""`UNetResBlock`: the 3D-UNet residual block with (2+1)D convolutions and AdaGN conditioning."""

import keras
from keras import ops

from keras_hpdm.checks import check_int, check_number


def _conv2plus1d(filters, temporal_kernel, dtype, name, zero_init=False):
    """A (1, 3, 3) spatial conv then a (t, 1, 1) temporal conv; `zero_init`: the last one."""
    kernels = {"spatial": (1, 3, 3)}
    if temporal_kernel > 1:  # a (1, 1, 1) temporal conv would only add a redundant linear map
        kernels["temporal"] = (temporal_kernel, 1, 1)
    last = list(kernels)[-1]
    return [
        keras.layers.Conv3D(
            filters, kernel, padding="same", dtype=dtype, name=f"{name}_{axes}",
            kernel_initializer="zeros" if zero_init and axes == last else "glorot_uniform",
        )
        for axes, kernel in kernels.items()
    ]


@keras.saving.register_keras_serializable(package="keras_hpdm")
class UNetResBlock(keras.layers.Layer):
    """Residual block of the video UNet, conditioned by adaptive group norm (AdaGN).

    `GroupNorm -> SiLU -> conv(2+1)D -> GroupNorm -> x * (1 + scale) + shift -> SiLU ->
    Dropout -> conv(2+1)D`, added to the input (through a 1x1x1 conv when the channel count
    changes). `scale, shift = Dense(2 * filters)(SiLU(cond))`. Each conv(2+1)D is a (1, 3, 3)
    spatial conv followed by a (temporal_kernel, 1, 1) temporal conv, "same" padding. The last
    conv is zero-initialised, so a fresh block is the identity on its skip path. Group norms
    and the modulation run in float32 under mixed precision.

    Args:
        filters: int, output channels.
        groups: int, number of group-norm groups; must divide the input channels and `filters`.
        dropout: float in [0, 1), dropout rate before the last conv.
        temporal_kernel: odd int >= 1, kernel size of the temporal convs (1: spatial only).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        x: `(B, F, H, W, C_in)` channels-last video features (levels may be folded into B).
        cond: `(B, D)` embedded conditioning vector (noise level, class/text).
        training: bool, enables dropout.

    Returns:
        `(B, F, H, W, filters)`.

    Example:
    ```python
    block = UNetResBlock(filters=32, groups=8)
    y = block(np.ones((2, 4, 8, 8, 16), "float32"), np.ones((2, 64), "float32"))
    y.shape  # (2, 4, 8, 8, 32)
    ```

    References:
        - Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021
          (AdaGN residual blocks).
        - Ho et al., "Video Diffusion Models", NeurIPS 2022 (space-time factorised 3D UNet).
        - Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition",
          CVPR 2018 ((2+1)D convolutions).
    """

    def __init__(self, filters, groups=8, dropout=0.0, temporal_kernel=3, **kwargs):
        super().__init__(**kwargs)
        filters = check_int("filters", filters, low=1)
        groups = check_int("groups", groups, low=1)
        if filters % groups:
            raise ValueError(
                f"`groups` must be a positive int dividing `filters`. "
                f"Received: groups={groups}, filters={filters}"
            )
        dropout = check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
        temporal_kernel = check_int("temporal_kernel", temporal_kernel, low=1)
        if temporal_kernel % 2 == 0:
            raise ValueError(
                "`temporal_kernel` must be a positive odd int (centred 'same' padding). "
                f"Received: temporal_kernel={temporal_kernel}"
            )
        self.filters = filters
        self.groups = groups
        self.dropout = dropout
        self.temporal_kernel = temporal_kernel

        policy = self.dtype_policy
        # Float32 islands: group statistics overflow / lose precision in float16.
        self.norm1 = keras.layers.GroupNormalization(groups, epsilon=1e-5, dtype="float32",
                                                     name="norm1")
        self.norm2 = keras.layers.GroupNormalization(groups, epsilon=1e-5, dtype="float32",
                                                     name="norm2")
        self.conv1 = _conv2plus1d(filters, temporal_kernel, policy, "conv1")
        self.conv2 = _conv2plus1d(filters, temporal_kernel, policy, "conv2", zero_init=True)
        self.modulation = keras.layers.Dense(2 * filters, dtype=policy, name="modulation")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy, name="dropout")
        self.skip = None

    def build(self, x_shape, cond_shape):
        channels = x_shape[-1]
        if len(x_shape) != 5 or channels is None:
            raise ValueError(
                f"`x` must have shape (B, F, H, W, C) with a known C. Received: {x_shape}"
            )
        if len(cond_shape) != 2:
            raise ValueError(f"`cond` must have shape (B, D). Received: {cond_shape}")
        if channels % self.groups:
            raise ValueError(
                f"`groups` must divide the input channels. Received: groups={self.groups}, "
                f"input channels={channels}"
            )
        self.norm1.build(x_shape)
        shape = x_shape
        for conv in self.conv1:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.norm2.build(shape)
        self.modulation.build(cond_shape)
        for conv in self.conv2:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        if channels != self.filters:
            self.skip = keras.layers.Conv3D(self.filters, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(x_shape)

    def call(self, x, cond, training=None):
        h = ops.silu(ops.cast(self.norm1(x), self.compute_dtype))
        for conv in self.conv1:
            h = conv(h)
        # AdaGN: modulate the normalised features in float32 (1 + small scale is lossy in bf16).
        emb = ops.cast(self.modulation(ops.silu(cond)), "float32")
        emb = ops.reshape(emb, (-1, 1, 1, 1, 2 * self.filters))
        scale, shift = emb[..., : self.filters], emb[..., self.filters :]
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.dropout_layer(ops.silu(ops.cast(h, self.compute_dtype)), training=training)
        for conv in self.conv2:
            h = conv(h)
        skip = x if self.skip is None else self.skip(x)
        return skip + h

    def compute_output_shape(self, x_shape, cond_shape):
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "groups": self.groups,
            "dropout": self.dropout,
            "temporal_kernel": self.temporal_kernel,
        })
        return config
