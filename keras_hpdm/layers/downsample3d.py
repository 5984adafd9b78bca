"""`Downsample3D`: strided (2+1)-axis downsampling conv for the video UNet."""

import keras

from keras_hpdm.checks import check_int


@keras.saving.register_keras_serializable(package="keras_hpdm")
class Downsample3D(keras.layers.Layer):
    """Halves H and W (and F when `downsample_time`) with a strided 3x3x3 "same" Conv3D.

    The halved sizes must be even, so that the decoder's 2x upsampling restores the shapes of
    the skip connections exactly.

    Args:
        filters: int, output channels.
        downsample_time: bool, also halve the frame axis.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        x: `(B, F, H, W, C)` channels-last video features.

    Returns:
        `(B, F // 2 if downsample_time else F, H // 2, W // 2, filters)`.

    Example:
    ```python
    down = Downsample3D(filters=32, downsample_time=True)
    down(np.ones((2, 4, 8, 8, 16), "float32")).shape  # (2, 2, 4, 4, 32)
    ```

    References:
        - Ho et al., "Video Diffusion Models", NeurIPS 2022 (3D UNet).
        - Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021
          (strided-conv downsampling).
    """

    def __init__(self, filters, downsample_time=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, low=1)
        self.downsample_time = bool(downsample_time)
        self._strides = (2 if self.downsample_time else 1, 2, 2)
        self.conv = keras.layers.Conv3D(filters, 3, strides=self._strides, padding="same",
                                        dtype=self.dtype_policy, name="conv")

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(f"`x` must have shape (B, F, H, W, C). Received: {input_shape}")
        for axis, size, stride in zip("FHW", input_shape[1:4], self._strides, strict=True):
            if stride == 2 and size is not None and size % 2:
                raise ValueError(
                    f"Downsample3D halves axis {axis}, which must be even. Received: "
                    f"input shape {tuple(input_shape)} (downsample_time={self.downsample_time})"
                )
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "downsample_time": self.downsample_time})
        return config
