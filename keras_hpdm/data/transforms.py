"""Per-example TensorFlow ops: seeds, clip sampling, resize, crop, flip, channels.

All randomness is stateless: each example's seed is derived from the data set seed, the
epoch key and the example's index in the source, so an example gets the same clip, crop and
pyramid whatever the parallelism, order or sharding. Frames stay in their source value range
(`[0, 255]` for uint8 sources, `[-1, 1]` for float ones) until the very end, where the small
patches are mapped to `[-1, 1]` (extraction is linear, so the order does not matter).
"""

import tensorflow as tf

from keras_hpdm.data.clip_frames import clip_offsets

# Exact ITU-R BT.601 luma weights (they sum to 1, so the conversion is range-preserving).
LUMA = (0.299, 0.587, 0.114)
SEED_SALT = 0x48504D  # "HPM": separates data-set seeds from other stateless streams.


def base_seed(seed):
    """The `(2,)` int64 root seed of a data set."""
    return tf.constant([seed, SEED_SALT], tf.int64)


def element_seeds(base, key, index, num=4):
    """`num` independent `(2,)` seeds for example `index` in the epoch with `key`."""
    seed = tf.random.experimental.stateless_fold_in(base, tf.cast(key, tf.int64))
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(index, tf.int64))
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform_int(seed, upper):
    """Uniform integer in `[0, upper]` (`upper` an int32 tensor >= 0)."""
    u = tf.random.stateless_uniform((), seed=seed, dtype=tf.float32)
    draw = tf.cast(tf.floor(u * tf.cast(upper + 1, tf.float32)), tf.int32)
    return tf.minimum(draw, upper)


def clip_indices(num_frames, ratio, clip_frames, target_frames, seed, random_start):
    """Frame indices `(target_frames,)` of a clip, as int32.

    The clip takes `clip_frames` frames every `ratio` source frames (rounded to the nearest
    frame) from a start drawn uniformly (or centred) among those that fit; a source shorter
    than the clip (an image: 1 frame) repeats its last frame. When `clip_frames !=
    target_frames` the clip is resampled in time to `target_frames` by nearest frame.

    Args:
        num_frames: int scalar tensor, frames in the source.
        ratio: float scalar tensor, source frames per clip frame (stride, or source/target fps).
        clip_frames, target_frames: Python ints.
        seed: `(2,)` seed for the start.
        random_start: Python bool; False centres the clip.
    """
    num_frames = tf.cast(num_frames, tf.int32)
    steps = tf.cast(
        clip_offsets(tf.range(clip_frames, dtype=tf.float64), tf.cast(ratio, tf.float64),
                     floor=tf.floor),
        tf.int32,
    )
    max_start = tf.maximum(num_frames - (steps[-1] + 1), 0)  # steps[-1] + 1: the clip's span
    start = _uniform_int(seed, max_start) if random_start else max_start // 2
    indices = tf.minimum(start + steps, num_frames - 1)
    if clip_frames != target_frames:
        pick = tf.range(target_frames, dtype=tf.float64) * clip_frames / target_frames
        pick = tf.cast(tf.floor(pick + clip_frames / (2 * target_frames)), tf.int32)
        indices = tf.gather(indices, tf.minimum(pick, clip_frames - 1))
    return indices


def to_channels(video, channels):
    """Float video `(..., C)` to `channels` (1: BT.601 luma, 3: gray replicated)."""
    have = video.shape[-1]
    if have == channels:
        return video
    if have == 3 and channels == 1:
        return tf.reduce_sum(video * tf.constant(LUMA, video.dtype), axis=-1, keepdims=True)
    if have == 1 and channels == 3:
        return tf.repeat(video, 3, axis=-1)
    raise ValueError(f"`channels` must be 1 or 3 and the source 1 or 3, got {have}->{channels}.")


def cover_shape(height, width, target_hw):
    """Smallest aspect-preserving `(h, w)` >= `target_hw` (mirrors `decode.resized_cover_shape`)."""
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    th, tw = target_hw
    scale = tf.maximum(th / h, tw / w)
    new_h = tf.maximum(tf.cast(tf.floor(h * scale + 0.5), tf.int32), th)
    new_w = tf.maximum(tf.cast(tf.floor(w * scale + 0.5), tf.int32), tw)
    return new_h, new_w


def resize_cover(video, target_hw):
    """Resizes float frames `(T, H, W, C)` so they just cover `target_hw`, keeping aspect.

    Bilinear with antialiasing (a proper low-pass when shrinking); a no-op when the frames
    already have the cover size (e.g. shards prepared at that size).
    """
    shape = tf.shape(video)
    new_h, new_w = cover_shape(shape[1], shape[2], target_hw)
    same = tf.logical_and(tf.equal(new_h, shape[1]), tf.equal(new_w, shape[2]))
    return tf.cond(
        same,
        lambda: video,
        lambda: tf.image.resize(video, tf.stack([new_h, new_w]), method="bilinear",
                                antialias=True),
    )


def crop(video, target_hw, seed, random_crop):
    """Crops `(T, H, W, C)` to `target_hw` (uniform or centred); returns (video, (top, left))."""
    shape = tf.shape(video)
    th, tw = target_hw
    max_top, max_left = shape[1] - th, shape[2] - tw
    if random_crop:
        seed_top, seed_left = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        top, left = _uniform_int(seed_top, max_top), _uniform_int(seed_left, max_left)
    else:
        top, left = max_top // 2, max_left // 2
    out = tf.slice(video, tf.stack([0, top, left, 0]), tf.stack([-1, th, tw, -1]))
    return out, tf.stack([top, left])


def random_flip(video, seed):
    """Mirrors `(T, H, W, C)` left-right with probability 1/2; returns (video, flipped)."""
    flipped = tf.random.stateless_uniform((), seed=seed) < 0.5
    return tf.cond(flipped, lambda: tf.reverse(video, axis=[2]), lambda: video), flipped
