"""Deep context fusion (DCF): inject coarser levels' features into each finer level."""

import keras
from keras import ops

from keras_hpdm.checks import check_bool, check_int
from keras_hpdm.layers.crop_resample import CropResample


def relative_boxes(coords, parent_coords):
    """Box of each patch inside a parent patch's normalised frame.

    Args:
        coords, parent_coords: `(..., 6)` = `(s_f, s_h, s_w, d_f, d_h, d_w)` fractions.

    Returns:
        `(..., 6)` = `(start_f, start_h, start_w, extent_f, extent_h, extent_w)` with
        `start = (d - d_parent) / s_parent`, `extent = s / s_parent` (paper Eq. 8).
    """
    scale, offset = coords[..., :3], coords[..., 3:]
    p_scale, p_offset = parent_coords[..., :3], parent_coords[..., 3:]
    return ops.concatenate([(offset - p_offset) / p_scale, scale / p_scale], axis=-1)


def coordinate_grid(coords, grid_size):
    """Absolute token-centre positions in [-1, 1] of the whole video: `(B, f, h, w, 3)`."""
    axes = []
    for a, n in enumerate(grid_size):
        centres = (ops.arange(n, dtype="float32") + 0.5) / n
        pos = coords[:, a + 3, None] + coords[:, a, None] * centres[None, :]
        axes.append(2.0 * pos - 1.0)  # (B, n)
    ones = ops.ones((1,) + tuple(grid_size), "float32")  # broadcasts each axis to the grid
    return ops.stack(
        [
            axes[0][:, :, None, None] * ones,
            axes[1][:, None, :, None] * ones,
            axes[2][:, None, None, :] * ones,
        ],
        axis=-1,
    )


@keras.saving.register_keras_serializable(package="keras_hpdm")
class DeepContextFusion(keras.layers.Layer):
    """Fuses the features of all coarser pyramid levels into each level (paper §4.2).

    For level `l`, the block-input features `a_k` of every coarser level `k < l` are
    resampled at level `l`'s box inside patch `k`, averaged over `k`, concatenated with
    `a_l` and a per-token grid of absolute coordinates, and projected back to `d` channels:
    `a'_l = W_a a_l + W_ctx ctx_l + W_pos pos_l + b`. Level 0 gets a zero context. `W_a`
    starts as the identity and `W_ctx`, `W_pos` at zero, so a fresh layer is the identity on
    `a_l`. Gradients flow into the coarse levels (no stop-gradient: the "deep" in DCF).

    Args:
        use_coords: add the coordinate term `W_pos pos_l` (the paper's default; False is
            its "no coordinates" ablation: the layer then has no `position_kernel`).
        detach_context: stop gradients from the context into the coarser levels (the
            paper's "context detach" ablation); the forward pass is unchanged.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        features: `(B, L, f, h, w, d)` token grids of the levels that run (coarse first).
        coords: `(B, L, 6)` level coordinates `(s_f, s_h, s_w, d_f, d_h, d_w)`.

    Returns:
        `(B, L, f, h, w, d)`.

    Example:
    ```python
    dcf = DeepContextFusion()
    fused = dcf(tokens, coords)  # tokens (2, 3, 4, 8, 8, 64), coords (2, 3, 6)
    ```

    References:
        - [Skorokhodov et al., CVPR 2024](https://arxiv.org/abs/2406.07792), Eq. 7-9.
    """

    def __init__(self, use_coords=True, detach_context=False, **kwargs):
        super().__init__(**kwargs)
        self.use_coords = check_bool("use_coords", use_coords)
        self.detach_context = check_bool("detach_context", detach_context)

    def __call__(self, features, coords, num_context_levels=0, **kwargs):
        # Checked before Keras turns NumPy values into tensors (a uint64 fails on torch).
        shape = getattr(features, "shape", ())
        levels = shape[1] if len(shape) > 1 else None  # 0 levels: `build` says so
        num_context_levels = check_int("num_context_levels", num_context_levels, low=0,
                                       high=levels - 1 if levels else None)
        return super().__call__(features, coords, num_context_levels=num_context_levels,
                                **kwargs)

    def build(self, features_shape, coords_shape):
        if len(features_shape) != 6:
            raise ValueError(
                "`features` must have rank 6 (B, L, f, h, w, d), got shape "
                f"{tuple(features_shape)}."
            )
        if len(coords_shape) != 3 or coords_shape[-1] != 6:
            raise ValueError(f"`coords` must have shape (B, L, 6), got {tuple(coords_shape)}.")
        for axis, what in ((0, "batch size"), (1, "levels")):
            if None not in (features_shape[axis], coords_shape[axis]) and (
                    features_shape[axis] != coords_shape[axis]):
                raise ValueError(f"`features` has {what} {features_shape[axis]} but `coords` "
                                 f"has {coords_shape[axis]}.")
        if features_shape[1] == 0:
            raise ValueError("`features` must have at least one level, got shape "
                             f"{tuple(features_shape)}.")
        self.features_shape = tuple(features_shape[2:])
        dim = features_shape[-1]
        self.grid_size = tuple(features_shape[2:5])
        # Boxes come from coordinates checked on the host before training / generation;
        # checking them here would copy them to the host at every eager call.
        self.resample = CropResample(self.grid_size, check_boxes=False,
                                     dtype=self.dtype_policy, name="resample")
        # Weightless, but never called in a block that only runs level 0 (adaptive
        # computation): mark it built, or Keras sees an unbuilt model (predict_on_batch then
        # re-runs the model eagerly on every call).
        self.resample.build(None)
        self.feature_kernel = self.add_weight(
            name="feature_kernel", shape=(dim, dim), initializer="identity"
        )
        self.context_kernel = self.add_weight(
            name="context_kernel", shape=(dim, dim), initializer="zeros"
        )
        self.position_kernel = (
            self.add_weight(name="position_kernel", shape=(3, dim), initializer="zeros")
            if self.use_coords else None
        )
        self.bias = self.add_weight(name="bias", shape=(dim,), initializer="zeros")

    def context(self, features, coords, first_level=0):
        """Averaged coarse-level context `(B, L - first_level, f, h, w, d)` (zeros at 0)."""
        contexts = []
        for level in range(first_level, features.shape[1]):
            if level == 0:
                contexts.append(ops.zeros_like(features[:, 0]))
                continue
            coarse = [features[:, k] for k in range(level)]
            if self.detach_context:
                coarse = [ops.stop_gradient(x) for x in coarse]
            samples = [
                self.resample(x, relative_boxes(coords[:, level], coords[:, k]))
                for k, x in enumerate(coarse)
            ]
            contexts.append(ops.mean(ops.stack(samples, axis=0), axis=0))
        return ops.stack(contexts, axis=1)

    def call(self, features, coords, num_context_levels=0):
        """Fuses every level; with `num_context_levels=k`, the first `k` levels only serve as
        context (e.g. cached coarse features at generation) and only the rest are returned."""
        coords = ops.cast(coords, "float32")
        num_levels = features.shape[1]
        # The weights fix (f, h, w, d); other grids would fail in a backend op, unnamed.
        if len(features.shape) != 6 or any(
                None not in (n, m) and n != m
                for n, m in zip(features.shape[2:], self.features_shape, strict=True)):
            raise ValueError(f"`features` must have shape (B, L, *{self.features_shape}) (the "
                             f"shape the layer was built for), got {tuple(features.shape)}.")
        context = self.context(features, coords, first_level=num_context_levels)
        features = features[:, num_context_levels:]
        dtype = self.compute_dtype
        fused = (
            ops.matmul(features, ops.cast(self.feature_kernel, dtype))
            + ops.matmul(context, ops.cast(self.context_kernel, dtype))
            + ops.cast(self.bias, dtype)
        )
        if not self.use_coords:
            return fused
        positions = ops.stack([coordinate_grid(coords[:, lv], self.grid_size)
                               for lv in range(num_context_levels, num_levels)], axis=1)
        return fused + ops.matmul(ops.cast(positions, dtype),
                                  ops.cast(self.position_kernel, dtype))

    def get_config(self):
        return {**super().get_config(), "use_coords": self.use_coords,
                "detach_context": self.detach_context}

    def compute_output_shape(self, features_shape, coords_shape, num_context_levels=0):
        n = None if features_shape[1] is None else features_shape[1] - num_context_levels
        return (features_shape[0], n) + tuple(features_shape[2:])
