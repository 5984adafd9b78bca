"""`pyramid_dataset`: a `tf.data` pipeline of patch-pyramid batches from any source.

Structure (one graph, no Python in the hot path except the PyAV decode of raw files):

    epoch keys --flat_map--> (key, item) per epoch, shuffled statelessly by key
               --map (parallel)--> decode only the clip's frames -> channels -> resize
                                   -> crop -> flip -> PyramidSpec.tf_sample -> [-1, 1]
               --filter (decode ok)--> batch --> prefetch

Epoch keys come from `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`: each
pass over the data set (each Keras epoch with `repeat=False`, or each repetition) gets a new
key, and the same `seed` replays the same keys. Every example's randomness is a stateless
function of `(seed, key, example index)`.
"""

import atexit
import concurrent.futures
import dataclasses
import os
import re
import threading
import time
import warnings

import numpy as np

from keras_hpdm.checks import check_int, check_seed, is_integer
from keras_hpdm.data import decode, shards, sources
from keras_hpdm.pyramid import PyramidSpec

CROPS = ("random", "center")
# Clips in a row that may fail to decode while iterating before the data set gives up with
# an error: past this, (nearly) every file is failing (e.g. damaged after the data set was
# built) and skipping would retry forever at full CPU. A data set where half of all clips
# fail still reaches it only with probability 2**-50 per clip.
FAILURE_BUDGET = 50


class _PythonCalls:
    """Tracks `tf.py_function` decodes so interpreter exit cannot deadlock.

    A live iterator whose background threads call into Python hangs `Py_Finalize` in TF 2.21
    (they wait for the GIL that finalization holds). At exit, new decodes raise instead,
    which ends those iterators with an error, and in-flight ones are given time to finish.
    """

    def __init__(self):
        self.stopping = threading.Event()
        self.active = 0  # calls inside Python now
        self.started = 0  # calls ever started (refused ones included)
        self.lock = threading.Lock()
        self.registered = False

    def register(self):
        # Registered after TensorFlow is imported, so it runs before TF's own exit hooks.
        if not self.registered:
            atexit.register(self.stop)
            self.registered = True

    def stop(self, timeout=10.0, quiet=0.3):
        """Refuses new calls, then waits until none is running or arriving for `quiet` s."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        last, calm_since = self.started, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)  # Releases the GIL: queued calls get in, and are refused.
            if self.active or self.started != last:
                last, calm_since = self.started, time.monotonic()
            elif time.monotonic() - calm_since >= quiet:
                return

    def __enter__(self):
        with self.lock:
            self.started += 1
            if self.stopping.is_set():
                raise RuntimeError("keras_hpdm.data: the interpreter is exiting.")
            self.active += 1

    def __exit__(self, *exc):
        with self.lock:
            self.active -= 1


_CALLS = _PythonCalls()


@dataclasses.dataclass(frozen=True)
class _Settings:
    pyramid: PyramidSpec
    clip_frames: int
    frame_stride: int
    fps: float
    random_crop: bool
    flip: bool
    channels: int
    seed: int
    return_offsets: bool

    @property
    def target(self):
        return self.pyramid.target_size


def pyramid_dataset(source, pyramid, batch_size, *, frames=None, frame_stride=1, fps=None,
                    crop="random", flip=False, labels=None, seed=None, shuffle=True, repeat=True,
                    cache=False, shard=None, deterministic=True, drop_remainder=True, channels=3,
                    return_offsets=False, shuffle_buffer=None, num_parallel_calls=None,
                    tokenizer=None, start_example=0):
    """A `tf.data.Dataset` of batches of patch pyramids, ready for `model.fit`.

    Each example is a clip of the source, resized (aspect kept) so it covers
    `pyramid.target_size`, cropped to it, optionally flipped, and cut into one random
    pyramid with `PyramidSpec.tf_sample`.

    Args:
        source: one of
            - a folder (searched recursively for mp4/webm/avi/mkv/gif/mov videos and
              png/jpg/webp/bmp images; images are stills repeated in time),
            - a media file or a list of paths,
            - a folder written by `prepare` (sharded TFRecords; the fast path),
            - a numpy array `(N, T, H, W, C)` (or `(N, H, W, C)`) of uint8 or float in
              `[-1, 1]`, or a `(videos, labels)` tuple,
            - `"builtin:<name>"`: `bigbuckbunny`, `bikes`, `carphone`, `clips` (all three),
              `images` (scikit-image/scikit-learn photos), `moving_mnist` or `mnist`; options
              as a query, e.g. `"builtin:moving_mnist?num_videos=512&num_digits=2"`
              (moving_mnist defaults: 1000 videos of 20 frames, 64x64).
        pyramid: the `PyramidSpec`; examples are cut at its `target_size`.
        batch_size: examples per batch.
        frames: source frames per clip (default `target_size[0]`); a different count is
            resampled in time to `target_size[0]` by nearest frame.
        frame_stride: take every `frame_stride`-th source frame.
        fps: instead of a stride, sample at this frame rate (needs the source's rate:
            files and shards have it, arrays do not).
        crop: `"random"` (random clip start and spatial crop) or `"center"`.
        flip: random horizontal flips.
        labels: `None` (no labels), `True` (the source's own: sub-folder classes, built-in
            digit classes, labels stored in shards), `"folders"`, a CSV/JSON file or dict
            mapping paths to class labels or captions, or an array of length N for arrays.
            Class labels add `"label"` int32 `(B,)`; captions add `"text"` tf.string `(B,)`.
        seed: non-negative int; the same seed gives the same batches in the same order
            (with `deterministic=True`). `None` draws one. The per-pass epoch keys come
            from `tf.data.Dataset.random(seed)`, which also folds in TensorFlow's global
            seed when one is set (e.g. by `keras.utils.set_random_seed`): fix both.
        shuffle: shuffle examples every epoch (a full permutation for files, arrays and
            cached data; for shards, shard files in random order, interleaved, then shuffled
            in blocks of `shuffle_buffer` records).
        repeat: repeat forever (each repetition with new random clips and crops).
        cache: `True` decodes every video once, now, and keeps it in memory (files:
            resized to just cover the target and rounded to uint8; shards: as stored);
            epochs then only sample clips, crop and cut pyramids. For data sets that fit
            in memory; otherwise use `prepare`.
        shard: `(index, count)`: this host/replica reads only its part (disjoint, covering).
            `None`: the data set allows `tf.distribute` auto-sharding by data.
        deterministic: fixed element order despite parallel decoding.
        drop_remainder: drop the last incomplete batch (static batch shape).
        channels: 1 (grayscale) or 3 (RGB); sources are converted.
        return_offsets: also return, per example, `offsets` int32 `(L, 3)` (level-canvas
            pixels), `frame_indices` int32 `(F,)`, `crop_offset` int32 `(2,)` (top, left in
            the resized frames), `flipped` bool and `index` int64 (the example's position in
            the source), to reproduce the pyramid with `PyramidSpec.extract`.
        shuffle_buffer: block size of the record shuffle for shards (default
            `min(num_examples, 1024)`).
        num_parallel_calls: parallel decodes (default `tf.data.AUTOTUNE`).
        tokenizer: optional callable run in the graph on each batch's captions (tf.string
            `(B,)`), e.g. a keras-hub tokenizer with a fixed sequence length. A tensor result
            replaces `"text"`; a dict result is merged into the batch instead of `"text"`.
            Not needed for `PatchDiffusionModel.fit`, which encodes `"text"` captions with
            the model's text encoder in the pipeline on every backend.
        start_example: position in the example stream to start from: the data set equals
            the one with `start_example=0` less its first `start_example` examples (whole
            passes are skipped without reading; the rest of a pass is skipped before any
            decoding). A run resumed at step `s` passes `s * batch_size` to continue the
            data order where it stopped (exactly, as long as no file failed to decode).

    Returns:
        `tf.data.Dataset` of dicts `{"patches": float32 (B, L, f, h, w, C) in [-1, 1],
        "coords": float32 (B, L, 6)}` (+ `"label"`/`"text"`, + provenance with
        `return_offsets`). Attributes: `num_examples` (examples per epoch in this shard),
        `class_names`, `skipped` (path -> reason; also gains files that fail while
        iterating), `pyramid`.

    Bad data: unreadable, too short or degenerate files (see `keras_hpdm.data.decode`'s
    `MAX_PIXELS` and `MAX_ASPECT_RATIO`) are skipped with one `SkippedMediaWarning` when the
    data set is built; a file or shard record that fails later, while iterating, is skipped
    too (one more warning; listed in `skipped`). Only when no data is left does iteration
    stop, with a `tf.errors.InvalidArgumentError` naming the files and why they fail
    (`data_error_message` extracts the text): when `FAILURE_BUDGET` (50) clips in a row fail
    to decode, or a pass over shards reads no record.

    Example:
    ```python
    spec = keras_hpdm.PyramidSpec(patch_size=(4, 32, 32), num_levels=3)
    ds = keras_hpdm.data.pyramid_dataset("videos/", spec, batch_size=8, flip=True, seed=0)
    model.fit(ds, steps_per_epoch=1000, epochs=10)
    ```
    """
    import tensorflow as tf

    if not isinstance(pyramid, PyramidSpec):
        raise TypeError(f"`pyramid` must be a keras_hpdm.PyramidSpec, got {type(pyramid)}.")
    batch_size = check_int("batch_size", batch_size, low=1)
    clip_frames = pyramid.target_size[0] if frames is None else check_int("frames", frames, low=1)
    frame_stride, fps = decode.check_frame_rate(frame_stride, fps)
    if crop not in CROPS:
        raise ValueError(f"`crop` must be one of {CROPS}, got {crop!r}.")
    for name, value in [("flip", flip), ("shuffle", shuffle), ("repeat", repeat),
                        ("deterministic", deterministic), ("drop_remainder", drop_remainder),
                        ("return_offsets", return_offsets)]:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    if not isinstance(cache, (bool, np.bool_)):
        raise ValueError(f"`cache` must be True or False, got {cache!r}.")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    shard = _check_shard(shard)
    seed = check_seed(seed)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    if seed >= 2**63:
        raise ValueError(f"`seed` must be < 2**63, got {seed}.")
    if tokenizer is not None and not callable(tokenizer):
        raise TypeError(f"`tokenizer` must be callable, got {type(tokenizer).__name__}.")
    if shuffle_buffer is not None:
        shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, low=1)
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else check_int(
        "num_parallel_calls", num_parallel_calls, low=1)

    settings = _Settings(pyramid, clip_frames, frame_stride, fps, crop == "random", bool(flip),
                         channels, seed, bool(return_offsets))
    src = sources.resolve_source(source, labels)
    captions = (getattr(src, "texts", None) is not None
                or (getattr(src, "with_labels", False) and src.label_kind == "text"))
    if tokenizer is not None and not captions:
        raise ValueError("`tokenizer` needs captions: pass `labels=` with captions.")
    start_example = check_int("start_example", start_example, low=0)
    build = {sources.FileSource: _FileBuilder, sources.ArraySource: _ArrayBuilder,
             shards.ShardSource: _ShardBuilder}[type(src)]
    builder = build(src, settings, shard, bool(shuffle), cache, shuffle_buffer, parallel,
                    deterministic)
    passes, builder.start = divmod(start_example, builder.num_examples)
    if not repeat and passes:
        raise ValueError(f"`start_example` must be < the {builder.num_examples} examples of "
                         f"one pass when `repeat=False`, got {start_example}.")
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).skip(passes)
    if not repeat:
        keys = keys.take(1)
    ds = builder.examples(keys)
    ds = ds.filter(lambda ex: ex["ok"]).map(
        lambda ex: {k: v for k, v in ex.items() if k != "ok"})
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if tokenizer is not None:
        ds = ds.map(lambda batch: _tokenize(batch, tokenizer),
                    num_parallel_calls=parallel, deterministic=bool(deterministic))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if shard is None
        else tf.data.experimental.AutoShardPolicy.OFF
    )
    ds = ds.with_options(options)
    ds.num_examples = builder.num_examples
    ds.class_names = src.class_names
    ds.skipped = builder.skipped
    ds.pyramid = pyramid
    return ds


def _tokenize(batch, tokenizer):
    batch = dict(batch)
    tokens = tokenizer(batch.pop("text"))
    if isinstance(tokens, dict):
        batch.update(tokens)
    else:
        batch["text"] = tokens
    return batch


def _check_shard(shard):
    if shard is None:
        return None
    ok = (isinstance(shard, (tuple, list)) and len(shard) == 2
          and all(is_integer(v) for v in shard)
          and shard[1] >= 1 and 0 <= shard[0] < shard[1])
    if not ok:
        raise ValueError(f"`shard` must be None or (index, count) with 0 <= index < count, "
                         f"got {shard!r}.")
    return int(shard[0]), int(shard[1])


def raise_if_set(value, error):
    """`value`, after raising `InvalidArgumentError(error)` when `error` is not empty.

    An assertion rather than an exception in the `py_function`: the error then carries just
    the message, not a Python traceback.
    """
    import tensorflow as tf

    check = tf.debugging.Assert(tf.equal(tf.strings.length(error), 0), [error])
    with tf.control_dependencies([check]):
        return tf.identity(value)


def data_error_message(error):
    """The `keras_hpdm.data` message inside a TensorFlow error raised while iterating (e.g.
    the failure budget), without TensorFlow's decorations; `None` for any other error.

    For callers that print errors for people, such as the command line.
    """
    match = re.search(r"assertion failed: \[(keras_hpdm\.data: .*)\]", str(error))
    return match.group(1) if match else None


def _then(records, at_end):
    """Serialized `records`, then `at_end(number of records)` (a bool tensor, run for its
    effects: reports, errors) once they are exhausted.

    An empty string marks the end (records are never empty); `scan` numbers the elements, so
    the count is known at the marker, which is then dropped.
    """
    import tensorflow as tf

    marked = records.concatenate(tf.data.Dataset.from_tensors(tf.constant(b"")))
    numbered = marked.scan(tf.constant(0, tf.int64), lambda n, r: (n + 1, (r, n)))

    def is_record(record, count):
        end = tf.equal(tf.strings.length(record), 0)
        done = tf.cond(end, lambda: tf.reshape(at_end(count), []), lambda: tf.constant(False))
        return tf.logical_not(end | done)

    return numbered.filter(is_record).map(lambda record, count: record)


def _span(clip_frames, ratio):
    """Source frames a clip covers (mirrors transforms.clip_indices)."""
    return int(np.floor((clip_frames - 1) * ratio + 0.5)) + 1


# ---------------------------------------------------------------------- shared
class _Builder:
    """Common machinery: epoch streams, the per-example finish, failure accounting.

    Subclasses set `ids` (global example indices this shard reads, in a fixed order) and
    `num_examples`, and implement `examples(keys)`.
    """

    def __init__(self, src, settings, shard, shuffle, cache, shuffle_buffer, parallel,
                 deterministic):
        from keras_hpdm.data import transforms

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
        import tensorflow as tf

        ds = ds.skip(self.start)

        # The per-example graph has no Python control flow on tensors: skip AutoGraph's
        # source conversion, which otherwise dominates the time to build a data set.
        fn = tf.autograph.experimental.do_not_convert(fn)
        return ds.map(fn, num_parallel_calls=self.parallel, deterministic=self.deterministic)

    def index_stream(self, keys, count):
        """(key, position) for positions `0..count-1`, a stateless permutation per key."""
        import tensorflow as tf

        base, shuffle = self.base, self.shuffle

        def epoch(key):
            order = tf.range(count, dtype=tf.int64)
            if shuffle:
                seed = tf.random.experimental.stateless_fold_in(base, key)
                order = tf.random.experimental.stateless_shuffle(order, seed=seed)
            return tf.data.Dataset.from_tensor_slices(order).map(lambda p: (key, p))

        return keys.flat_map(epoch)

    def block_shuffle(self, ds, key):
        """Shuffles a stream of scalars in blocks of `shuffle_buffer`, statelessly.

        `Dataset.shuffle` cannot take a per-epoch tensor seed reliably (it goes through the
        global-seed logic); a block permutation keyed by (seed, epoch key, block number) can,
        and still visits every element exactly once per epoch.
        """
        import tensorflow as tf

        size = self.shuffle_buffer or max(1, min(self.num_examples, 1024))
        epoch_seed = tf.random.experimental.stateless_fold_in(self.base, key)

        def permute(block_number, block):
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, block_number)
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(block)[0]), seed=seed)
            return tf.gather(block, order)

        return ds.batch(size).enumerate().map(permute).unbatch()

    def finish(self, clip, frame_indices, key, index, extra, ok=None):
        """Transforms a `(F', H, W, C)` clip into one example dict."""
        import tensorflow as tf

        from keras_hpdm.data import transforms

        s = self.s
        f, h, w = s.target
        seeds = transforms.element_seeds(self.base, key, index, num=4)
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
        import tensorflow as tf

        from keras_hpdm.data import transforms

        seeds = transforms.element_seeds(self.base, key, index, num=4)
        indices = transforms.clip_indices(tf.shape(video)[0], ratio, self.s.clip_frames,
                                          self.s.target[0], seeds[0], self.s.random_crop)
        return tf.gather(video, indices), indices

    def label_lookup(self, labels, texts):
        """A function global index -> `{"label": int32}` / `{"text": string}` / `{}`."""
        import tensorflow as tf

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
        import tensorflow as tf

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
                sources.SkippedMediaWarning,
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
        sources.raise_if_empty(usable, self.skipped, self.src.description)
        sources.report_skipped(self.skipped, total, self.src.description, stacklevel=5)

    def check_nonempty(self, what):
        if self.num_examples == 0:
            raise ValueError(f"Shard {self.shard} of {self.src.description} has no examples "
                             f"({what}).")


# ------------------------------------------------------------------------ files
class _FileBuilder(_Builder):
    def __init__(self, *args):
        super().__init__(*args)
        src, s = self.src, self.s
        total = len(src.paths) + len(src.skipped)
        ratios, keep = [], []
        for i, (path, kind) in enumerate(zip(src.paths, src.kinds, strict=True)):
            if kind == "image":
                ratios.append(1.0)
                keep.append(i)
                continue
            if s.fps is not None and not src.fps[i] > 0:
                self.skipped[path] = "unknown frame rate: cannot resample to `fps`"
                continue
            ratio = self.ratio(float(src.fps[i]))
            need = _span(s.clip_frames, ratio)
            if src.num_frames[i] < need:
                self.skipped[path] = (f"too short: {src.num_frames[i]} frames, the clip needs "
                                      f"{need}")
                continue
            ratios.append(ratio)
            keep.append(i)
        sources.subset(src, keep)
        self.ratios = np.asarray(ratios, np.float64)
        self.ids = self.local(np.arange(len(src.paths)))
        if self.cache:
            self._decode_all()
        self.num_examples = len(self.ids)
        self.report(total, len(src.paths))
        self.check_nonempty(f"{len(src.paths)} usable files")

    def _decode_all(self):
        """`cache=True`: decode every file once now, resized to cover the target, uint8."""
        import tensorflow as tf

        from keras_hpdm.data import transforms

        target_hw = self.s.target[1:]

        def load(i):
            path = self.src.paths[i]
            try:
                video = tf.cast(decode.decode_video(path), tf.float32)
                video = transforms.resize_cover(video, target_hw)
                return tf.cast(tf.clip_by_value(tf.floor(video + 0.5), 0, 255), tf.uint8).numpy()
            except Exception as e:
                self.skipped[path] = sources._reason(e, path)
                return None

        workers = min(8, 2 * (os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            videos = list(pool.map(load, self.ids.tolist()))
        keep = [k for k, v in enumerate(videos) if v is not None]
        self.ids = self.ids[keep]
        self.videos = [videos[k] for k in keep]

    def _decode_clip(self, path, indices):
        """(clip, ok, error): a failed clip is skipped (ok False) until the failure budget is
        spent; then `error` is set and the graph raises it."""
        with _CALLS:
            path = path.numpy().decode()
            try:
                clip = decode.decode_video(path, indices=indices.numpy())
            except Exception as e:  # Anything: a bad file must never end a long run.
                error = self.clip_failed(path, sources._reason(e, path))
                return np.zeros((len(indices), 1, 1, 3), np.uint8), False, error
            self.clip_decoded()
            return clip, True, ""

    def examples(self, keys):
        import tensorflow as tf

        from keras_hpdm.data import transforms

        src, s = self.src, self.s
        labels = self.label_lookup(src.labels, src.texts)
        if self.cache:
            ids = self.ids
            return self.cached_examples(keys, self.videos, ids, self.ratios[ids],
                                        lambda p: labels(tf.gather(ids, p)))
        _CALLS.register()
        paths = tf.constant(src.paths, tf.string)
        frames_t = tf.constant(src.num_frames, tf.int32)
        ratios = tf.constant(self.ratios, tf.float64)
        ids = tf.constant(self.ids, tf.int64)

        def load(key, p):
            i = ids[p]
            seeds = transforms.element_seeds(self.base, key, i, num=4)
            indices = transforms.clip_indices(frames_t[i], ratios[i], s.clip_frames,
                                              s.target[0], seeds[0], s.random_crop)
            clip, ok, error = tf.py_function(self._decode_clip, [paths[i], indices],
                                             [tf.uint8, tf.bool, tf.string])
            clip = raise_if_set(clip, error)
            clip.set_shape((s.target[0], None, None, 3))
            ok.set_shape(())
            return self.finish(clip, indices, key, i, labels(i), ok)

        return self.map(self.index_stream(keys, len(self.ids)), load)


# ----------------------------------------------------------------------- arrays
class _ArrayBuilder(_Builder):
    def __init__(self, *args):
        super().__init__(*args)
        src, s = self.src, self.s
        if s.fps is not None:
            raise ValueError("`fps` needs the source frame rate, which arrays do not have; "
                             "use `frame_stride`.")
        length = src.videos.shape[1]
        need = _span(s.clip_frames, s.frame_stride)
        if 1 < length < need:
            raise ValueError(f"Array `source` has {length} frames per video but the clip needs "
                             f"{need} (frames={s.clip_frames}, frame_stride={s.frame_stride}).")
        self.ids = self.local(np.arange(len(src.videos)))
        self.num_examples = len(self.ids)
        self.check_nonempty(f"{len(src.videos)} videos")

    def examples(self, keys):
        import tensorflow as tf

        src = self.src
        videos = tf.convert_to_tensor(src.videos)
        labels = self.label_lookup(src.labels, src.texts)
        ratio = tf.constant(float(self.s.frame_stride), tf.float64)
        ids = tf.constant(self.ids, tf.int64)

        def load(key, p):
            i = ids[p]
            clip, indices = self.clip_of(videos[i], ratio, key, i)
            return self.finish(clip, indices, key, i, labels(i))

        return self.map(self.index_stream(keys, len(self.ids)), load)


# ----------------------------------------------------------------------- shards
class _ShardBuilder(_Builder):
    def __init__(self, *args):
        super().__init__(*args)
        src, s = self.src, self.s
        meta = src.metadata
        self.image_format, self.stored_channels = meta["image_format"], int(meta["channels"])
        names = [f["name"] for f in meta["files"]]
        present = {os.path.basename(f) for f in src.files}
        records = np.asarray(meta["records"], np.float64).reshape(-1, 2)
        file_of = np.arange(len(records)) % len(names)  # `prepare` writes round-robin.
        usable = np.array([names[k] in present for k in file_of], bool)
        lengths, rates = records[:, 0].astype(np.int64), records[:, 1]
        if s.fps is not None:
            no_rate = usable & (rates <= 0) & (lengths > 1)
            usable &= ~no_rate
            if no_rate.any():
                self.skipped[f"{src.directory} ({no_rate.sum()} records)"] = (
                    "unknown frame rate: cannot resample to `fps`")
            self.ratios = np.where(rates > 0, rates, 1.0) / s.fps
        else:
            self.ratios = np.full(len(records), float(s.frame_stride))
        needs = np.floor((s.clip_frames - 1) * self.ratios + 0.5).astype(np.int64) + 1
        short = usable & (lengths > 1) & (lengths < needs)
        if short.any():
            self.skipped[f"{src.directory} ({short.sum()} records)"] = (
                f"too short: records shorter than the clip ({needs[short].max()} frames)")
        usable &= ~short
        self.file_level = (self.shard is not None and len(src.files) == len(names)
                           and len(names) % self.shard[1] == 0)
        ids = np.flatnonzero(usable)
        if self.shard is not None:
            index, count = self.shard
            # Whole files when they divide evenly, else every `count`-th usable record.
            ids = ids[file_of[ids] % count == index] if self.file_level else ids[index::count]
        self.ids = ids
        if self.cache:
            self._decode_all()
        self.num_examples = len(self.ids)
        self.report(src.num_records + len(meta.get("skipped", {})), int(usable.sum()))
        self.check_nonempty("no usable records")

    def _file_list(self):
        """(shard files this builder reads, their record counts in the metadata)."""
        entries = [(os.path.join(self.src.directory, f["name"]), int(f["num_records"]))
                   for f in self.src.metadata["files"]]
        present = set(self.src.files)
        entries = [e for e in entries if e[0] in present]
        if self.file_level:
            index, count = self.shard
            entries = [e for k, e in enumerate(entries) if k % count == index]
        return [e[0] for e in entries], [e[1] for e in entries]

    def _serialized(self, files):
        """Serialized records of this shard, files interleaved. `files`: a data set of
        (path, expected records); a corrupt record ends its file, which is reported."""
        import tensorflow as tf

        wanted = np.zeros(len(self.ratios), bool)
        wanted[self.ids] = True
        wanted = tf.constant(wanted)
        index_only = {"index": tf.io.FixedLenFeature([], tf.int64)}

        def keep(serialized):
            return tf.gather(wanted, tf.io.parse_single_example(serialized, index_only)["index"])

        ds = files.interleave(self._checked_records,
                              cycle_length=max(1, min(len(self.src.files), 8)),
                              num_parallel_calls=self.parallel, deterministic=True)
        return ds.filter(keep)

    def _checked_records(self, file, expected):
        """A file's records; reports the file when fewer than `expected` could be read."""
        import tensorflow as tf

        records = tf.data.TFRecordDataset(file, buffer_size=1 << 20).ignore_errors()

        def at_end(count):
            return tf.cond(count < expected,
                           lambda: tf.py_function(self._damaged, [file, count, expected],
                                                  tf.bool),
                           lambda: tf.constant(False))

        return _then(records, at_end)

    def _damaged(self, file, count, expected):
        with _CALLS:
            file = file.numpy().decode()
            if file not in self.skipped:  # Truncated files were reported when built.
                self.failed(file, f"damaged shard: {int(count)} of {int(expected)} records "
                                  "readable; the rest of the file is skipped")
        return False

    def _nonempty_pass(self, records):
        """`records`, raising at the end of a pass that read none: damage found after the
        data set was built would otherwise make every later pass empty, forever."""
        import tensorflow as tf

        def at_end(count):
            return tf.cond(tf.equal(count, 0),
                           lambda: raise_if_set(tf.constant(False), tf.reshape(
                               tf.py_function(self._empty_pass, [], tf.string), [])),
                           lambda: tf.constant(False))

        return _then(records, at_end)

    def _empty_pass(self):
        with _CALLS:
            damaged = [f"{p}: {r}" for p, r in self.skipped.items() if "shard" in r]
            more = f"; and {len(damaged) - 5} more" if len(damaged) > 5 else ""
            return (f"keras_hpdm.data: a pass over the shards in {self.src.description} read "
                    "no usable record, so the data set stops instead of retrying forever. "
                    f"Prepare them again; damaged: {'; '.join(damaged[:5]) or 'none found'}"
                    f"{more}")

    def _decode_all(self):
        """`cache=True`: read and decode this shard's records once now."""
        import tensorflow as tf

        _CALLS.register()
        files, counts = self._file_list()
        files = tf.data.Dataset.from_tensor_slices((tf.constant(files, tf.string),
                                                    tf.constant(counts, tf.int64)))
        videos, ids, labels, texts = [], [], [], []
        for serialized in self._serialized(files):
            record = shards.parse_record(serialized)
            videos.append(shards.decode_frames(record["frames"], self.image_format,
                                               self.stored_channels).numpy())
            ids.append(int(record["index"]))
            labels.append(int(record["label"]))
            texts.append(record["text"].numpy().decode())
        order = np.argsort(ids)
        self.ids = np.asarray(ids, np.int64)[order]
        self.videos = [videos[k] for k in order]
        self.cached_labels = [labels[k] for k in order]
        self.cached_texts = [texts[k] for k in order]

    def _extra(self, record):
        import tensorflow as tf

        if not self.src.with_labels:
            return {}
        if self.src.label_kind == "label":
            return {"label": tf.cast(record["label"], tf.int32)}
        return {"text": record["text"]}

    def examples(self, keys):
        import tensorflow as tf

        from keras_hpdm.data import transforms

        src, s = self.src, self.s
        if self.cache:
            kind = src.label_kind if src.with_labels else None
            labels = self.label_lookup(self.cached_labels if kind == "label" else None,
                                       self.cached_texts if kind == "text" else None)
            return self.cached_examples(keys, self.videos, self.ids, self.ratios[self.ids],
                                        labels)
        _CALLS.register()
        files, counts = self._file_list()
        files, counts = tf.constant(files, tf.string), tf.constant(counts, tf.int64)
        fmt, stored = self.image_format, self.stored_channels
        base, shuffle = self.base, self.shuffle

        def epoch(key):
            order = tf.range(tf.shape(files)[0])
            if shuffle:
                seed = tf.random.experimental.stateless_fold_in(base, key)
                order = tf.random.experimental.stateless_shuffle(order, seed=seed)
            records = self._nonempty_pass(self._serialized(tf.data.Dataset.from_tensor_slices(
                (tf.gather(files, order), tf.gather(counts, order)))))
            if shuffle:
                records = self.block_shuffle(records, key)
            return records.map(lambda r: (key, r))

        def load(key, serialized):
            record = shards.parse_record(serialized)
            i = record["index"]
            if s.fps is None:
                ratio = tf.constant(float(s.frame_stride), tf.float64)
            else:
                rate = tf.cast(record["fps"], tf.float64)
                ratio = tf.where(rate > 0, rate, 1.0) / s.fps
            seeds = transforms.element_seeds(base, key, i, num=4)
            indices = transforms.clip_indices(record["num_frames"], ratio, s.clip_frames,
                                              s.target[0], seeds[0], s.random_crop)
            # Decode each needed frame once (stills and slowed-down clips repeat frames).
            unique, position = tf.unique(indices)
            frames = shards.decode_frames(tf.gather(record["frames"], unique), fmt, stored)
            clip = tf.gather(frames, position)
            return self.finish(clip, indices, key, i, self._extra(record))

        return self.map(keys.flat_map(epoch), load)
