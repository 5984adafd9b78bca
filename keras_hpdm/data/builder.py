"""`Builder`: what the three example builders of `pyramid_dataset` share.

A builder turns one resolved source (`sources.FileSource`, `sources.ArraySource`,
`shards.ShardSource`) into a `tf.data` stream of examples: it decides which examples this
shard reads (`ids`), streams them in a stateless per-epoch order keyed by the epoch keys,
and `finish`es each clip into a pyramid example. It also keeps the skipped-files account
and the failure budget that ends iteration when nearly every clip fails.

This module and the builders import TensorFlow at the top: `pyramid_dataset` imports them
on its first call, so that importing `keras_hpdm.data` stays free of TensorFlow.
"""

import dataclasses
import threading
import warnings

import numpy as np
import tensorflow as tf

from keras_hpdm.data import transforms
from keras_hpdm.data.skipped import SkippedMediaWarning, raise_if_empty, report_skipped
from keras_hpdm.pyramid import PyramidSpec

# Clips in a row that may fail to decode while iterating before the data set gives up with
# an error: past this, (nearly) every file is failing (e.g. damaged after the data set was
# built) and skipping would retry forever at full CPU. A data set where half of all clips
# fail still reaches it only with probability 2**-50 per clip.
FAILURE_BUDGET = 50


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `pyramid_dataset` asks of every example, checked."""

    pyramid: PyramidSpec
    clip_frames: int
    frame_stride: int
    fps: float
    random_crop: bool
    flip: bool
    channels: int
    seed: int
    return_offsets: bool
    clips_per_file: int = 1

    @property
    def target(self):
        return self.pyramid.target_size


def raise_if_set(value, error):
    """`value`, after raising `InvalidArgumentError(error)` when `error` is not empty.

    An assertion rather than an exception in the `py_function`: the error then carries just
    the message, not a Python traceback.
    """
    check = tf.debugging.Assert(tf.equal(tf.strings.length(error), 0), [error])
    with tf.control_dependencies([check]):
        return tf.identity(value)


class Builder:
    """Common machinery: epoch streams, the per-example finish, failure accounting.

    Subclasses set `ids` (global example indices this shard reads, in a fixed order) and
    `num_examples`, and implement `examples(keys)`.
    """

    def __init__(self, src, settings, shard, shuffle, cache, shuffle_buffer, parallel,
                 deterministic):
        self.src, self.s, self.shard, self.shuffle = src, settings, shard, shuffle
        self.cache, self.shuffle_buffer = cache, shuffle_buffer
        self.parallel, self.deterministic = parallel, bool(deterministic)
        self.base = transforms.base_seed(settings.seed)
        self.skipped = dict(src.skipped)
        self._lock = threading.Lock()
        self._warned = False
        self._failing = {}  # path -> reason, for the current run of failed clips
        self._run = 0  # clips failed in a row
        self.start = 0  # stream positions to skip before decoding (see `start_example`)

    def ratio(self, source_fps):
        return self.s.frame_stride if self.s.fps is None else source_fps / self.s.fps

    def local(self, global_ids):
        """The part of `global_ids` (example indices) this shard reads."""
        if self.shard is None:
            return np.asarray(global_ids, np.int64)
        index, count = self.shard
        return np.asarray(global_ids, np.int64)[index::count]

    def map(self, ds, fn):
        """Maps the `(key, position)` stream to examples, after `start` positions."""
        ds = ds.skip(self.start)

        # The per-example graph has no Python control flow on tensors: skip AutoGraph's
        # source conversion, which otherwise dominates the time to build a data set.
        fn = tf.autograph.experimental.do_not_convert(fn)
        return ds.map(fn, num_parallel_calls=self.parallel, deterministic=self.deterministic)

    def epoch_order(self, key, count):
        """Positions `0..count-1` in the order of the epoch with `key`: a stateless
        permutation (or in order without `shuffle`)."""
        order = tf.range(count, dtype=tf.int64)
        if self.shuffle:
            seed = tf.random.experimental.stateless_fold_in(self.base, key)
            order = tf.random.experimental.stateless_shuffle(order, seed=seed)
        return order

    def index_stream(self, keys, count):
        """(key, position) for positions `0..count-1`, a stateless permutation per key."""

        def epoch(key):
            order = self.epoch_order(key, count)
            return tf.data.Dataset.from_tensor_slices(order).map(lambda p: (key, p))

        return keys.flat_map(epoch)

    def block_shuffle(self, ds, key, size=None, first_block=0):
        """Shuffles a stream (of scalars or example dicts) in blocks, statelessly.

        `Dataset.shuffle` cannot take a per-epoch tensor seed reliably (it goes through the
        global-seed logic); a block permutation keyed by (seed, epoch key, block number) can,
        and still visits every element exactly once per epoch. Blocks hold `size` elements
        (default `shuffle_buffer`) and are numbered from `first_block`, so a stream that
        starts some whole blocks into an epoch is permuted as it would have been.
        """
        size = size or self.shuffle_buffer or max(1, min(self.num_examples, 1024))
        epoch_seed = tf.random.experimental.stateless_fold_in(self.base, key)

        def permute(block_number, block):
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, block_number)
            count = tf.shape(tf.nest.flatten(block)[0])[0]
            order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=seed)
            return tf.nest.map_structure(lambda x: tf.gather(x, order), block)

        first_block = tf.cast(first_block, tf.int64)
        return ds.batch(size).enumerate(first_block).map(permute).unbatch()

    def finish(self, clip, frame_indices, key, index, extra, ok=None, seed_index=None):
        """Transforms a `(F', H, W, C)` clip into one example dict (its randomness keyed by
        `seed_index`, default `index`)."""
        s = self.s
        f, h, w = s.target
        seed_index = index if seed_index is None else seed_index
        seeds = transforms.element_seeds(self.base, key, seed_index, num=4)
        is_uint8 = clip.dtype == tf.uint8
        x = transforms.to_channels(tf.cast(clip, tf.float32), s.channels)
        x = transforms.resize_cover(x, (h, w))
        x, crop_offset = transforms.crop(x, (h, w), seeds[1], s.random_crop)
        flipped = tf.constant(False)
        if s.flip:
            x, flipped = transforms.random_flip(x, seeds[2])
        x = tf.ensure_shape(x, (f, h, w, s.channels))
        pyramid = s.pyramid.tf_sample(x, seeds[3])
        patches = pyramid["patches"]
        if is_uint8:  # [0, 255] -> [-1, 1] on the small patches only.
            patches = patches / 127.5 - 1.0
        out = {"patches": patches, "coords": pyramid["coords"],
               "ok": tf.constant(True) if ok is None else ok}
        out.update(extra)
        if s.return_offsets:
            out.update(offsets=pyramid["offsets"], frame_indices=frame_indices,
                       crop_offset=crop_offset, flipped=flipped,
                       index=tf.cast(index, tf.int64))
        return out

    def clip_of(self, video, ratio, key, index):
        """Selects the clip frames of a full in-memory video; returns (clip, indices)."""
        seeds = transforms.element_seeds(self.base, key, index, num=4)
        indices = transforms.clip_indices(tf.shape(video)[0], ratio, self.s.clip_frames,
                                          self.s.target[0], seeds[0], self.s.random_crop)
        return tf.gather(video, indices), indices

    def label_lookup(self, labels, texts):
        """A function global index -> `{"label": int32}` / `{"text": string}` / `{}`."""
        if labels is not None:
            table = tf.constant(np.asarray(labels), tf.int32)
            return lambda i: {"label": tf.gather(table, i)}
        if texts is not None:
            table = tf.constant(list(texts), tf.string)
            return lambda i: {"text": tf.gather(table, i)}
        return lambda i: {}

    def cached_examples(self, keys, videos, ids, ratios, extra):
        """Examples from decoded videos held in memory (`cache=True`), random access.

        Videos of different sizes live in one flat uint8 buffer with offset/shape tables, so
        each epoch is a full stateless permutation, as for arrays.
        """
        sizes = np.array([v.size for v in videos], np.int64)
        flat = tf.constant(np.concatenate([v.reshape(-1) for v in videos]))
        starts = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]), tf.int64)
        shapes = tf.constant(np.array([v.shape for v in videos], np.int64))
        channels = videos[0].shape[-1]
        ids_t = tf.constant(np.asarray(ids, np.int64))
        ratios_t = tf.constant(np.asarray(ratios, np.float64))

        def load(key, p):
            shape = shapes[p]
            video = tf.reshape(flat[starts[p] : starts[p] + tf.reduce_prod(shape)], shape)
            video = tf.ensure_shape(video, (None, None, None, channels))
            i = ids_t[p]
            clip, indices = self.clip_of(video, ratios_t[p], key, i)
            return self.finish(clip, indices, key, i, extra(p))

        return self.map(self.index_stream(keys, len(videos)), load)

    def failed(self, name, reason):
        with self._lock:
            first = name not in self.skipped and not self._warned
            self.skipped[name] = reason
            self._warned = self._warned or first
        if first:
            warnings.warn(
                f"keras_hpdm.data: {name} failed to decode while iterating ({reason}); it is "
                "skipped. Further failures are skipped silently and listed in the data set's "
                "`skipped` attribute.",
                SkippedMediaWarning,
                stacklevel=2,
            )

    def clip_failed(self, name, reason):
        """Counts a failed clip; returns the error that ends iteration, or "" to skip it."""
        self.failed(name, reason)
        with self._lock:
            self._run += 1
            self._failing[name] = reason
            if self._run < FAILURE_BUDGET:
                return ""
            run, files = self._run, list(self._failing.items())
        listed = "; ".join(f"{p}: {r}" for p, r in files[:5])
        more = f"; and {len(files) - 5} more files" if len(files) > 5 else ""
        return (f"keras_hpdm.data: {run} clips in a row failed to decode "
                f"(FAILURE_BUDGET={FAILURE_BUDGET}) in {self.src.description}, so the data "
                f"set stops instead of retrying forever. Fix or remove these files: "
                f"{listed}{more}")

    def clip_decoded(self):
        with self._lock:
            self._run = 0
            self._failing = {}

    def report(self, total, usable):
        # Nothing usable: the error alone (a warning that "the rest are used" would mislead).
        raise_if_empty(usable, self.skipped, self.src.description)
        # Points at the user's call: report_skipped <- report <- a builder's __init__ <-
        # example_stream <- pyramid_dataset / mixed_pyramid_dataset <- the caller.
        report_skipped(self.skipped, total, self.src.description, stacklevel=6)

    def check_nonempty(self, what):
        if self.num_examples == 0:
            raise ValueError(f"Shard {self.shard} of {self.src.description} has no examples "
                             f"({what}).")
