"""Patch-pyramid geometry: level sizes, offset sampling, coordinates, extraction.

A pyramid of `L` levels covers a video of `target_size`. Level `l` lives on a virtual
canvas of size `r * 2**l` (on pyramided axes): the video area-downsampled by `2**(L-1-l)`.
A level-`l` patch is an integer crop of size `r` of that canvas at offset `o_l`, and lies
inside the level `l-1` patch: `o_l in [2*o_(l-1), 2*o_(l-1) + r]` per axis. Level 0 is the
whole video at patch size; the finest level is a plain pixel crop (paper §1).

Everything here is plain numpy, except the `tf_*` methods, which are the same geometry as
TensorFlow ops for `tf.data` pipelines (no Python in the graph).
"""

import math

import keras
import numpy as np

from keras_hpdm.checks import check_int, check_seed, sequence_length

AXES = ("frames", "height", "width")


# ------------------------------------------------------------- size limits
# Far beyond any video a diffusion model generates today, and far below sizes whose
# allocation fails only after minutes: a too-deep pyramid fails at construction instead.
MAX_TARGET_SIZE = 16384  # per axis (frames, height, width) of `target_size`
MAX_TARGET_VOXELS = 2**30  # frames * height * width of `target_size` (12 GiB as RGB float32)


@keras.saving.register_keras_serializable(package="keras_hpdm")
class PyramidSpec:
    """Geometry of a hierarchical patch pyramid.

    Args:
        patch_size: `(f, h, w)`, the resolution `r` every patch has at every level.
        num_levels: number of pyramid levels `L` (level 0 covers the whole video). The
            resulting `target_size` must fit `MAX_TARGET_SIZE` (16384) per axis and
            `MAX_TARGET_VOXELS` (2**30) in all, so a pyramid too deep for any machine fails
            here rather than in an allocation minutes later.
        pyramid_time: whether time is pyramided like height and width. When False, every
            level keeps all `f` frames (the paper's T2V-1K setting) and only space is
            refined.

    Example:
    ```python
    spec = keras_hpdm.PyramidSpec(patch_size=(4, 32, 32), num_levels=3)
    spec.target_size  # (16, 128, 128)
    pyramid = spec.sample(video, seed=0)  # video: (16, 128, 128, 3)
    pyramid["patches"].shape  # (3, 4, 32, 32, 3)
    pyramid["coords"].shape   # (3, 6): (s_f, s_h, s_w, d_f, d_h, d_w) per level
    ```

    References:
        - [Skorokhodov et al., Hierarchical Patch Diffusion Models for High-Resolution
          Video Generation, CVPR 2024](https://arxiv.org/abs/2406.07792)
    """

    def __init__(self, patch_size, num_levels, pyramid_time=True):
        if sequence_length(patch_size) is None:
            raise ValueError(
                f"`patch_size` must be a tuple `(frames, height, width)`, got {patch_size!r}."
            )
        if len(patch_size) != 3:
            raise ValueError(
                "`patch_size` must have 3 entries `(frames, height, width)`, "
                f"got {len(patch_size)}: {tuple(patch_size)!r}."
            )
        self.patch_size = tuple(
            check_int(f"patch_size[{i}] ({axis})", v, low=1)
            for i, (axis, v) in enumerate(zip(AXES, patch_size, strict=True))
        )
        self.num_levels = check_int("num_levels", num_levels, low=1)
        if not isinstance(pyramid_time, (bool, np.bool_)):
            raise ValueError(f"`pyramid_time` must be True or False, got {pyramid_time!r}.")
        self.pyramid_time = bool(pyramid_time)
        self._check_size_limits()

    def _check_size_limits(self):
        """Rejects pyramids whose `target_size` no machine could hold (see
        `MAX_TARGET_SIZE`, `MAX_TARGET_VOXELS`), before anything is allocated."""
        depth = self.num_levels - 1
        if depth > MAX_TARGET_SIZE.bit_length():  # 2**depth alone exceeds the limit
            raise ValueError(
                f"`num_levels`={self.num_levels} is too deep: the target size doubles per "
                f"level, and `patch_size` * 2**{depth} exceeds the maximum of "
                f"{MAX_TARGET_SIZE} per axis (keras_hpdm.pyramid.MAX_TARGET_SIZE)."
            )
        size = self.target_size
        for axis, n in zip(AXES, size, strict=True):
            if n > MAX_TARGET_SIZE:
                raise ValueError(
                    f"The pyramid's target {axis} would be {n} (`patch_size` {self.patch_size}"
                    f" * 2**{depth} with `num_levels`={self.num_levels}); the maximum is "
                    f"{MAX_TARGET_SIZE} per axis (keras_hpdm.pyramid.MAX_TARGET_SIZE). Use "
                    "fewer levels or a smaller patch."
                )
        voxels = math.prod(size)
        if voxels > MAX_TARGET_VOXELS:
            raise ValueError(
                f"The pyramid's target size {size} has {voxels} voxels (frames * height * "
                f"width); the maximum is {MAX_TARGET_VOXELS} (keras_hpdm.pyramid."
                "MAX_TARGET_VOXELS). Use fewer levels, a smaller patch or "
                "`pyramid_time=False`."
            )

    # ------------------------------------------------------------------ sizes
    @property
    def pyramided(self):
        """Per axis `(f, h, w)`: whether the axis is refined level by level."""
        return (self.pyramid_time, True, True)

    def level_size(self, level):
        """Size of level `level`'s virtual canvas, per axis."""
        level = self._check_level(level)
        return tuple(
            r * 2**level if p else r for r, p in zip(self.patch_size, self.pyramided, strict=True)
        )

    @property
    def target_size(self):
        """The full resolution `(F, H, W)`: the finest level's canvas."""
        return self.level_size(self.num_levels - 1)

    def level_scale(self, level):
        """Fraction of the whole video a level-`level` patch spans, per axis."""
        level = self._check_level(level)
        return tuple(2.0**-level if p else 1.0 for p in self.pyramided)

    def level_factor(self, level):
        """Integer downsampling factor from full resolution to level `level`, per axis."""
        level = self._check_level(level)
        k = 2 ** (self.num_levels - 1 - level)
        return tuple(k if p else 1 for p in self.pyramided)

    def max_offset(self, level):
        """Largest valid offset (in level-canvas pixels) of a level-`level` patch."""
        return tuple(
            c - r for c, r in zip(self.level_size(level), self.patch_size, strict=True)
        )

    def _check_level(self, level):
        level = check_int("level", level)
        if not 0 <= level < self.num_levels:
            raise ValueError(
                f"`level` must be in [0, {self.num_levels - 1}] for a "
                f"{self.num_levels}-level pyramid, got {level}."
            )
        return level

    # -------------------------------------------------------------- offsets
    def sample_offsets(self, seed=None):
        """Random nested integer offsets, shape `(L, 3)` in level-canvas pixels.

        Drawn bottom-up so that every level covers its whole canvas, borders and first/last
        frames included (the paper's `delta_l ~ U[0, 1 - s_l]`): the finest offset is
        uniform over its canvas, then each parent is uniform among the offsets that contain
        its child. (Drawing top-down, each child uniform inside its parent, starves the
        borders: at r=64, 3 levels, a finest patch touches a border 20x less often than a
        uniform one, while generation tiles touch borders all the time.)
        """
        rng = np.random.default_rng(check_seed(seed))
        return self.offsets_from_uniform(rng.random((self.num_levels, 3)))

    def offsets_from_uniform(self, u):
        """Nested offsets `(..., L, 3)` from uniforms `u` `(..., L, 3)` in [0, 1) (see
        `sample_offsets`).

        Row `l` of `u` picks level `l`'s offset among its choices; the arithmetic runs in
        float32, exactly as `tf_offsets_from_uniform`, so the twins agree draw for draw.
        """
        u = np.asarray(u, np.float32)
        if u.shape[-2:] != (self.num_levels, 3):
            raise ValueError(f"`u` must have shape (..., {self.num_levels}, 3), got {u.shape}.")
        # [0, 1] in float32 (float64 draws below 1 may round up to 1: `_pick` caps them);
        # NaN fails too: it would pick garbage offsets.
        outside = ~((u >= 0) & (u <= 1))
        if outside.any():
            raise ValueError("`u` must hold uniforms in [0, 1), got "
                             f"{int(outside.sum())} values outside, e.g. {u[outside][:3]}.")
        offsets = np.zeros(u.shape, np.int64)
        hi = np.asarray(self.max_offset(self.num_levels - 1), np.int64)
        offsets[..., -1, :] = self._pick(u[..., -1, :], 0, hi)
        for level in range(self.num_levels - 1, 0, -1):
            lo, hi = self._parent_range(level, offsets[..., level, :])
            offsets[..., level - 1, :] = self._pick(u[..., level - 1, :], lo, hi)
        return offsets

    def _parent_range(self, level, offset):
        """`[lo, hi]` of the level `level - 1` offsets whose patch contains `offset`."""
        r = np.asarray(self.patch_size, np.int64)
        lo = np.maximum(-((r - offset) // 2), 0)  # ceil((offset - r) / 2), at least 0
        hi = np.minimum(offset // 2, np.asarray(self.max_offset(level - 1), np.int64))
        return lo, hi

    @staticmethod
    def _pick(u, lo, hi):
        """`lo + floor(u * (hi - lo + 1))` in float32, at most `hi`."""
        count = (np.asarray(hi) - lo + 1).astype(np.float32)
        return np.minimum(lo + np.floor(u * count).astype(np.int64), hi)

    def check_offsets(self, offsets):
        """Validates nested integer offsets `(L, 3)`; returns them as an int64 array."""
        arr = np.asarray(offsets)
        if arr.shape != (self.num_levels, 3):
            raise ValueError(
                f"`offsets` must have shape ({self.num_levels}, 3), got {arr.shape}."
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"`offsets` must be integers, got dtype {arr.dtype}.")
        arr = arr.astype(np.int64)
        for level in range(self.num_levels):
            hi = np.asarray(self.max_offset(level))
            if np.any(arr[level] < 0) or np.any(arr[level] > hi):
                raise ValueError(
                    f"`offsets[{level}]` = {arr[level].tolist()} is outside [0, {hi.tolist()}]."
                )
            if level > 0:
                lo = 2 * arr[level - 1] * np.asarray(self.pyramided)
                up = lo + np.asarray(self.patch_size) * np.asarray(self.pyramided)
                if np.any(arr[level] < lo) or np.any(arr[level] > up):
                    raise ValueError(
                        f"`offsets[{level}]` = {arr[level].tolist()} is not inside the level "
                        f"{level - 1} patch (allowed [{lo.tolist()}, {up.tolist()}])."
                    )
        return arr

    def coords_from_offsets(self, offsets):
        """Coordinates `(L, 6)` = `(s_f, s_h, s_w, d_f, d_h, d_w)` as fractions of the video."""
        offsets = np.asarray(offsets, dtype=np.float64)
        scales = np.array([self.level_scale(level) for level in range(self.num_levels)])
        canvas = np.array([self.level_size(level) for level in range(self.num_levels)])
        return np.concatenate([scales, offsets / canvas], axis=-1).astype(np.float32)

    # ---------------------------------------------------------------- chains
    def parent_offset(self, level, offset):
        """Offset of the level `level - 1` patch that holds a level-`level` patch at `offset`.

        Among the valid parents (`2 p <= o <= 2 p + r`, see `_parent_range`), take the one
        that centres the child: generation cuts a tile's context there.

        Args:
            level: the child's level, in `[1, num_levels)`.
            offset: the child's `(3,)` integer offset, in level-`level` canvas pixels.

        Returns:
            int64 numpy array `(3,)` (0 on axes that are not pyramided).
        """
        r = np.asarray(self.patch_size)
        lo, hi = self._parent_range(level, np.asarray(offset, np.int64))
        centred = np.round((offset + r / 2) / 2 - r / 2)
        return np.where(self.pyramided, np.clip(centred, lo, hi), 0).astype(np.int64)

    def context_offsets(self, level, offset):
        """Offsets `(level + 1, 3)` of the nested chain of patches ending at `offset`: the
        level-`level` patch, then each parent (`parent_offset`) up to level 0.

        Example:
        ```python
        spec = keras_hpdm.PyramidSpec((2, 8, 8), 3)
        spec.context_offsets(2, [6, 24, 12])  # [[0, 0, 0], [2, 8, 4], [6, 24, 12]]
        ```
        """
        chain = [np.asarray(offset, np.int64)]
        for lv in range(level, 0, -1):
            chain.append(self.parent_offset(lv, chain[-1]))
        return np.stack(chain[::-1])

    def chain_coords(self, chain):
        """Coordinates `(l + 1, 6)` (see `coords_from_offsets`) of a chain of offsets for
        levels `[0, l]`, e.g. from `context_offsets`."""
        return self.coords_from_offsets(self._pad_chain(chain))[: len(chain)]

    def _pad_chain(self, chain):
        """Pads a chain of offsets for levels `[0, l]` with zeros to all levels (the shape
        `coords_from_offsets` takes; the padding rows are dropped after)."""
        full = np.zeros((self.num_levels, 3), np.int64)
        full[: len(chain)] = chain
        return full

    # ------------------------------------------------------------ extraction
    def check_video(self, video, name="video"):
        """Validates a `(F, H, W, C)` video at `target_size`; returns it as an array."""
        if not hasattr(video, "shape"):
            video = np.asarray(video)
        if len(video.shape) != 4:
            raise ValueError(
                f"`{name}` must have rank 4 (frames, height, width, channels), "
                f"got shape {tuple(video.shape)}."
            )
        if tuple(video.shape[:3]) != self.target_size:
            raise ValueError(
                f"`{name}` must be at the pyramid's `target_size` {self.target_size} "
                f"(patch_size {self.patch_size} * 2**(num_levels-1)), got "
                f"{tuple(video.shape[:3])}. Resize/crop it first (keras_hpdm.data does)."
            )
        return video

    def extract(self, video, offsets):
        """Cuts the pyramid at `offsets` from a `(F, H, W, C)` video.

        Level `l` is the full-resolution box `[o_l * k, (o_l + r) * k)` averaged over
        `k x k x k` blocks, `k = level_factor(l)`: an exact box filter, so the finest level is
        a plain pixel crop.

        Returns:
            float32 array `(L, f, h, w, C)`, in the value range of `video`.
        """
        video = self.check_video(video)
        offsets = self.check_offsets(offsets)
        patches = [self._extract_level(video, offsets[lv], lv) for lv in range(self.num_levels)]
        return np.stack(patches).astype(np.float32)

    def _extract_level(self, video, offset, level):
        (rf, rh, rw), (kf, kh, kw) = self.patch_size, self.level_factor(level)
        start = np.asarray(offset) * (kf, kh, kw)
        box = video[
            start[0] : start[0] + rf * kf,
            start[1] : start[1] + rh * kh,
            start[2] : start[2] + rw * kw,
        ].astype(np.float64)
        channels = box.shape[-1]
        return box.reshape(rf, kf, rh, kh, rw, kw, channels).mean(axis=(1, 3, 5))

    def sample(self, video, seed=None):
        """Samples one random pyramid from a video at `target_size`.

        Args:
            video: array `(F, H, W, C)` with `(F, H, W) == target_size`.
            seed: non-negative int (or None for fresh randomness).

        Returns:
            dict with `patches` `(L, f, h, w, C)` float32, `coords` `(L, 6)` float32 and
            `offsets` `(L, 3)` int64 (level-canvas pixels).
        """
        video = self.check_video(video)
        offsets = self.sample_offsets(seed)
        return {
            "patches": self.extract(video, offsets),
            "coords": self.coords_from_offsets(offsets),
            "offsets": offsets,
        }

    # ----------------------------------------------------- TensorFlow twins
    def tf_sample_offsets(self, seed):
        """`sample_offsets` as TF ops. `seed`: int tensor of shape `(2,)` (stateless RNG)."""
        import tensorflow as tf

        return self.tf_offsets_from_uniform(
            tf.random.stateless_uniform((self.num_levels, 3), seed=seed))

    def tf_offsets_from_uniform(self, u):
        """`offsets_from_uniform` as TF ops: int32 `(L, 3)`, equal draw for draw."""
        import tensorflow as tf

        def pick(u_row, lo, hi):
            count = tf.cast(hi - lo + 1, tf.float32)
            return tf.minimum(lo + tf.cast(tf.floor(u_row * count), tf.int32), hi)

        u = tf.cast(u, tf.float32)
        r = tf.constant(self.patch_size, tf.int32)
        offsets = [pick(u[-1], 0, tf.constant(self.max_offset(self.num_levels - 1), tf.int32))]
        for level in range(self.num_levels - 1, 0, -1):
            child = offsets[-1]
            lo = tf.maximum(-tf.math.floordiv(r - child, 2), 0)
            hi = tf.minimum(tf.math.floordiv(child, 2),
                            tf.constant(self.max_offset(level - 1), tf.int32))
            offsets.append(pick(u[level - 1], lo, hi))
        return tf.stack(offsets[::-1])

    def tf_coords_from_offsets(self, offsets):
        """`coords_from_offsets` as TF ops."""
        import tensorflow as tf

        scales = np.array([self.level_scale(lv) for lv in range(self.num_levels)])
        canvas = np.array([self.level_size(lv) for lv in range(self.num_levels)])
        offsets = tf.cast(offsets, tf.float64)
        coords = tf.concat([tf.constant(scales, tf.float64), offsets / canvas], axis=-1)
        return tf.cast(coords, tf.float32)

    def tf_extract(self, video, offsets):
        """`extract` as TF ops (static patch size, dynamic offsets); float32 output."""
        import tensorflow as tf

        video = tf.convert_to_tensor(video)
        channels = video.shape[-1]
        if video.shape.rank != 4 or tuple(video.shape[:3]) != self.target_size:
            raise ValueError(
                f"`video` must have static shape {self.target_size + (channels,)}, "
                f"got {tuple(video.shape)}."
            )
        offsets = tf.cast(offsets, tf.int32)
        patches = []
        for level in range(self.num_levels):
            (rf, rh, rw), k = self.patch_size, self.level_factor(level)
            start = offsets[level] * tf.constant(k, tf.int32)
            box = tf.slice(
                video,
                tf.concat([start, [0]], axis=0),
                [rf * k[0], rh * k[1], rw * k[2], channels],
            )
            box = tf.reshape(tf.cast(box, tf.float32), (rf, k[0], rh, k[1], rw, k[2], channels))
            patches.append(tf.reduce_mean(box, axis=(1, 3, 5)))
        return tf.stack(patches)

    def tf_sample(self, video, seed):
        """`sample` as TF ops; `seed` is an int tensor of shape `(2,)`."""
        offsets = self.tf_sample_offsets(seed)
        return {
            "patches": self.tf_extract(video, offsets),
            "coords": self.tf_coords_from_offsets(offsets),
            "offsets": offsets,
        }

    # ---------------------------------------------------------------- config
    def get_config(self):
        return {
            "patch_size": list(self.patch_size),
            "num_levels": self.num_levels,
            "pyramid_time": self.pyramid_time,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, PyramidSpec) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((self.patch_size, self.num_levels, self.pyramid_time))

    def __repr__(self):
        return (
            f"PyramidSpec(patch_size={self.patch_size}, num_levels={self.num_levels}, "
            f"pyramid_time={self.pyramid_time}, target_size={self.target_size})"
        )
