"""Linear resampling of an axis-aligned box of a 3-D feature grid (separable, einsum-based)."""

import keras
import numpy as np
from keras import ops

from keras_hpdm.checks import check_int_tuple
from keras_hpdm.pyramid import AXES

# Float32 boxes computed as differences and ratios of coordinates (deep context fusion) can
# overshoot [0, 1] by a few ulps.
_BOX_TOLERANCE = 1e-6


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
        check_boxes: validate box values whenever they are concrete (numpy arrays or eager
            tensors), at the cost of a device-to-host copy per call: every value finite,
            extents > 0, and each box inside the input (`start >= 0`,
            `start + extent <= 1`). `DeepContextFusion` turns it off: its boxes derive from
            coordinates validated before training and generation.

    Call arguments:
        features: `(B, F, H, W, C)` tensor.
        boxes: `(B, 6)` = `(start_f, start_h, start_w, extent_f, extent_h, extent_w)` as
            fractions of the input extent; the batch sizes must match.

    Returns:
        `(B, f, h, w, C)` tensor.

    Traced values (inside `jit`, `tf.function` or a compiled model) cannot be checked.
    There, nothing is clamped on the box itself: each output cell samples its position
    `start + extent * (j + 0.5) / n_out`, clamped to the input's outermost cell centres, so
    parts of a box outside [0, 1] repeat the border values; a zero extent repeats one
    point, a negative one samples in reverse order, and NaN boxes give NaN outputs.

    Example:
    ```python
    layer = CropResample((2, 4, 4))
    out = layer(np.ones((1, 4, 8, 8, 3)), np.array([[0, 0.5, 0.5, 0.5, 0.5, 0.5]]))
    ```
    """

    def __init__(self, output_size, check_boxes=True, **kwargs):
        super().__init__(**kwargs)
        self.output_size = check_int_tuple("output_size", output_size, 3, labels=AXES)
        if not isinstance(check_boxes, (bool, np.bool_)):
            raise ValueError(f"`check_boxes` must be True or False, got {check_boxes!r}.")
        self.check_boxes = bool(check_boxes)

    def __call__(self, features, boxes, **kwargs):
        # Here, not in `call`: these are the caller's own values (`call` also runs on
        # placeholders while Keras infers shapes).
        _check_shapes(_static_shape(features), _static_shape(boxes))
        if self.check_boxes:
            values = _host_values(boxes)
            if values is not None:
                _check_box_values(values)
        return super().__call__(features, boxes, **kwargs)

    def call(self, features, boxes):
        _check_shapes(tuple(features.shape), tuple(boxes.shape))
        _, n_f, n_h, n_w, _ = features.shape
        if not keras.backend.is_float_dtype(features.dtype):
            # Interpolation weights cast to an int dtype would truncate to 0 (bool fails).
            features = ops.cast(features, self.compute_dtype)
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
        return {**super().get_config(), "output_size": list(self.output_size),
                "check_boxes": self.check_boxes}


def _static_shape(x):
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _check_shapes(features_shape, boxes_shape):
    if len(features_shape) != 5:
        raise ValueError(
            f"`features` must have rank 5 (B, F, H, W, C), got shape {features_shape}."
        )
    if 0 in features_shape[1:4]:  # nothing to interpolate from: zeros would come out
        raise ValueError(f"`features` must have non-empty (F, H, W), got shape {features_shape}.")
    if len(boxes_shape) != 2 or boxes_shape[-1] != 6:
        raise ValueError(f"`boxes` must have shape (B, 6), got {boxes_shape}.")
    if None not in (features_shape[0], boxes_shape[0]) and features_shape[0] != boxes_shape[0]:
        raise ValueError(
            "`features` and `boxes` must have the same batch size (one box per sample), got "
            f"{features_shape[0]} and {boxes_shape[0]}."
        )


def _host_values(x):
    """`x` as a numpy array when its values exist now (numpy, Python, eager tensors), or
    None while it is traced or symbolic (its values cannot be read there)."""
    if isinstance(x, keras.KerasTensor):
        return None
    if not ops.is_tensor(x):
        return np.asarray(x)
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return None
    elif backend == "torch":
        import torch

        if x.device.type == "meta" or torch.compiler.is_compiling():
            return None
    return np.asarray(ops.convert_to_numpy(x))


def _check_box_values(boxes):
    """Finite, positive extents, inside [0, 1] (up to float rounding); raises naming it."""
    if boxes.dtype.kind not in "biuf":  # strings, objects, complex: no fractions to check
        raise ValueError(f"`boxes` must hold real numbers, got dtype {boxes.dtype}.")
    boxes = boxes.astype(np.float64)
    start, extent = boxes[:, :3], boxes[:, 3:]
    bad = ~np.isfinite(boxes).all(axis=1)
    bad |= (extent <= 0).any(axis=1)
    bad |= ((start < -_BOX_TOLERANCE) | (start + extent > 1 + _BOX_TOLERANCE)).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            "`boxes` must be finite (start_f, start_h, start_w, extent_f, extent_h, "
            "extent_w) fractions with extents > 0 and each box inside the input "
            f"(start >= 0, start + extent <= 1); box {i} is {boxes[i].tolist()}"
            f" ({int(bad.sum())} of {len(bad)} boxes are invalid)."
        )
