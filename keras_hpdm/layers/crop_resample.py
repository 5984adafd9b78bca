"""Linear resampling of an axis-aligned box of a 3-D feature grid (separable, einsum-based)."""

import keras
from keras import ops


def interpolation_matrix(start, extent, n_out, n_in, dtype="float32"):
    """Per-sample linear interpolation matrices `(B, n_out, n_in)` for one axis.

    Output cell `j` samples the input at fraction `start + extent * (j + 0.5) / n_out`
    (cell centres, align_corners=False), clamped to the input's outermost cell centres
    (scipy's `mode="nearest"`). Each row is a hat function `max(0, 1 - |x - i|)`, so linear
    interpolation becomes one matrix product: exact, differentiable, no gathers.
    """
    start = ops.cast(start, "float32")[:, None]
    extent = ops.cast(extent, "float32")[:, None]
    centres = (ops.arange(n_out, dtype="float32") + 0.5) / n_out
    position = (start + extent * centres[None, :]) * n_in - 0.5  # input index space
    position = ops.clip(position, 0.0, float(n_in - 1))
    taps = ops.arange(n_in, dtype="float32")
    weights = ops.relu(1.0 - ops.abs(position[:, :, None] - taps[None, None, :]))
    return ops.cast(weights, dtype)


@keras.saving.register_keras_serializable(package="keras_hpdm")
class CropResample(keras.layers.Layer):
    """Samples features at a box per sample onto a fixed grid with linear interpolation.

    The 3-D trilinear `grid_sample` of deep context fusion, restricted to axis-aligned boxes,
    factorised into one small interpolation matrix per axis and sample, applied with einsum.

    Args:
        output_size: `(f, h, w)` of the output grid.

    Call arguments:
        features: `(B, F, H, W, C)` tensor.
        boxes: `(B, 6)` = `(start_f, start_h, start_w, extent_f, extent_h, extent_w)` as
            fractions of the input extent.

    Returns:
        `(B, f, h, w, C)` tensor.

    Example:
    ```python
    layer = CropResample((2, 4, 4))
    out = layer(np.ones((1, 4, 8, 8, 3)), np.array([[0, 0.5, 0.5, 0.5, 0.5, 0.5]]))
    ```
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        output_size = tuple(output_size)
        if len(output_size) != 3 or any(int(n) != n or n < 1 for n in output_size):
            raise ValueError(
                f"`output_size` must be 3 positive integers (f, h, w), got {output_size!r}."
            )
        self.output_size = tuple(int(n) for n in output_size)

    def call(self, features, boxes):
        if len(features.shape) != 5:
            raise ValueError(
                f"`features` must have rank 5 (B, F, H, W, C), got shape {features.shape}."
            )
        if len(boxes.shape) != 2 or boxes.shape[-1] != 6:
            raise ValueError(f"`boxes` must have shape (B, 6), got {boxes.shape}.")
        _, n_f, n_h, n_w, _ = features.shape
        dtype = features.dtype
        m_f, m_h, m_w = (
            interpolation_matrix(boxes[:, a], boxes[:, a + 3], n_out, n_in, dtype)
            for a, n_out, n_in in zip(range(3), self.output_size, (n_f, n_h, n_w), strict=True)
        )
        out = ops.einsum("bwx,bfhxc->bfhwc", m_w, features)
        out = ops.einsum("bhy,bfywc->bfhwc", m_h, out)
        return ops.einsum("bft,bthwc->bfhwc", m_f, out)

    def compute_output_shape(self, features_shape, boxes_shape):
        return (features_shape[0],) + self.output_size + (features_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.output_size)}
