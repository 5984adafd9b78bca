"""`Upsample3D`: nearest-neighbour 2x upsampling then a 3x3x3 conv for the video UNet."""

import keras
from keras import ops

from keras_hpdm.checks import check_int


@keras.saving.register_keras_serializable(package="keras_hpdm")
class Upsample3D(keras.layers.Layer):
    """Doubles H and W (and F when `upsample_time`) by nearest-neighbour repetition, then
    applies a 3x3x3 "same" Conv3D (repeat-then-conv avoids transposed-conv checkerboards).

    Args:
        filters: int, output channels.
        upsample_time: bool, also double the frame axis.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        x: `(B, F, H, W, C)` channels-last video features.

    Returns:
        `(B, 2 * F if upsample_time else F, 2 * H, 2 * W, filters)`.

    Example:
    ```python
    up = Upsample3D(filters=16, upsample_time=True)
    up(np.ones((2, 2, 4, 4, 32), "float32")).shape  # (2, 4, 8, 8, 16)
    ```

    References:
        - Ho et al., "Video Diffusion Models", NeurIPS 2022 (3D UNet).
        - Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016.
    """

    def __init__(self, filters, upsample_time=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, low=1)
        self.upsample_time = bool(upsample_time)
        self._axes = (1, 2, 3) if self.upsample_time else (2, 3)
        self.conv = keras.layers.Conv3D(filters, 3, padding="same", dtype=self.dtype_policy,
                                        name="conv")

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(f"`x` must have shape (B, F, H, W, C). Received: {input_shape}")
        self.conv.build(self._upsampled_shape(input_shape))

    def _upsampled_shape(self, shape):
        shape = list(shape)
        for axis in self._axes:
            shape[axis] = None if shape[axis] is None else 2 * shape[axis]
        return tuple(shape)

    def call(self, x):
        for axis in self._axes:
            x = ops.repeat(x, 2, axis=axis)
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        return self._upsampled_shape(input_shape)[:-1] + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "upsample_time": self.upsample_time})
        return config
