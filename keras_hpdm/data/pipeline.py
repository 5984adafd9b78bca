"""`pyramid_dataset`: a `tf.data` pipeline of patch-pyramid batches from any source.

Structure (one graph, no Python in the hot path except the PyAV decode of raw files):

    epoch keys --flat_map--> (key, item) per epoch, shuffled statelessly by key
               --map (parallel)--> decode only the clip's frames -> channels -> resize
                                   -> crop -> flip -> PyramidSpec.tf_sample -> [-1, 1]
               --filter (decode ok)--> batch --> prefetch

Each pass over the data gets its own epoch key, and every example's randomness is a
stateless function of `(seed, key, example index)`. Repeated (the default), the key is the
pass number: the same `seed` replays the same batches whatever else the process did. With
`repeat=False` each iteration (each Keras epoch) is one pass, and its key comes from
`tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`, which also folds in
TensorFlow's global seed.

`example_stream` checks the arguments, resolves the source (`sources.py`) and hands it to
the builder for its kind (`file_builder.py`, `array_builder.py`, `shard_builder.py`, on the
common `builder.Builder`), then filters; `batch_examples` batches and prefetches.
`pyramid_dataset` is the two in a row; `joint.py` mixes two example streams before batching.
"""

import dataclasses
import re

import numpy as np

from keras_hpdm.checks import check_bool, check_int, check_seed, is_integer
from keras_hpdm.data import decode, shards, sources
from keras_hpdm.pyramid import PyramidSpec

CROPS = ("random", "center")
RESOLVED = (sources.FileSource, sources.ArraySource, shards.ShardSource)


def pyramid_dataset(source, pyramid, batch_size, *, frames=None, frame_stride=1, fps=None,
                    crop="random", flip=False, labels=None, seed=None, shuffle=True, repeat=True,
                    cache=False, shard=None, deterministic=True, drop_remainder=True, channels=3,
                    return_offsets=False, shuffle_buffer=None, num_parallel_calls=None,
                    tokenizer=None, start_example=0, clips_per_file=1):
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
              `images` (scikit-image/scikit-learn photos), `moving_mnist`,
              `moving_mnist_captions` (captions as labels) or `mnist`; options as a query,
              e.g. `"builtin:moving_mnist?num_videos=512&num_digits=2"` (moving_mnist
              defaults: 1000 videos of 20 frames, 64x64; captions: 1000 of 16 frames).
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
            (with `deterministic=True`). `None` draws one. With `repeat=False` the
            per-iteration epoch keys come from `tf.data.Dataset.random(seed)`, which also
            folds in TensorFlow's global seed and its random ops run since it was set
            (e.g. by `keras.utils.set_random_seed`, or building a model under the
            TensorFlow backend): fix both, in the same order.
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
        clips_per_file: media files read directly (not `cache=True`): cut this many clips
            (each with its own start, crop, flip and pyramid) from one decode of a file, so
            a pass holds this many examples per file. Decoding dominates when reading video
            files, and runs from the keyframe before a clip, so k clips decoded together
            cost little more than one (`benchmarks/data_pipeline.py`). Each file's clips are
            mixed with those of 15 other files before batching. Default 1.

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
    (`data_error_message` extracts the text): when `builder.FAILURE_BUDGET` (50) clips in a
    row fail to decode, or a pass over shards reads no record.

    Example:
    ```python
    spec = keras_hpdm.PyramidSpec(patch_size=(4, 32, 32), num_levels=3)
    ds = keras_hpdm.data.pyramid_dataset("videos/", spec, batch_size=8, flip=True, seed=0)
    model.fit(ds, steps_per_epoch=1000, epochs=10)
    ```
    """
    batch_size, tokenizer = check_batching(batch_size, drop_remainder, tokenizer)
    stream = example_stream(
        source, pyramid, frames=frames, frame_stride=frame_stride, fps=fps, crop=crop,
        flip=flip, labels=labels, seed=seed, shuffle=shuffle, repeat=repeat, cache=cache,
        shard=shard, deterministic=deterministic, channels=channels,
        return_offsets=return_offsets, shuffle_buffer=shuffle_buffer,
        num_parallel_calls=num_parallel_calls, start_example=start_example,
        clips_per_file=clips_per_file)
    if tokenizer is not None and stream.label_kind != "text":
        raise ValueError("`tokenizer` needs captions: pass `labels=` with captions.")
    ds = batch_examples(stream.examples, stream, batch_size, drop_remainder, tokenizer)
    ds.num_examples = stream.num_examples
    ds.class_names = stream.class_names
    ds.skipped = stream.skipped
    ds.pyramid = pyramid
    return ds


@dataclasses.dataclass
class ExampleStream:
    """One source's examples, unbatched, and what the data set reports about them."""

    examples: object  # tf.data.Dataset of example dicts
    num_examples: int  # per pass, in this shard
    class_names: list
    skipped: dict  # live: gains files that fail while iterating
    label_kind: str  # "label", "text" or None: the key the examples carry
    shard: tuple
    parallel: int
    deterministic: bool


def check_batching(batch_size, drop_remainder, tokenizer):
    """Checks the batching arguments of `pyramid_dataset`; returns (batch_size, tokenizer)."""
    batch_size = check_int("batch_size", batch_size, low=1)
    check_bool("drop_remainder", drop_remainder)
    if tokenizer is not None and not callable(tokenizer):
        raise TypeError(f"`tokenizer` must be callable, got {type(tokenizer).__name__}.")
    return batch_size, tokenizer


def example_stream(source, pyramid, *, frames=None, frame_stride=1, fps=None, crop="random",
                   flip=False, labels=None, seed=None, shuffle=True, repeat=True, cache=False,
                   shard=None, deterministic=True, channels=3, return_offsets=False,
                   shuffle_buffer=None, num_parallel_calls=None, start_example=0,
                   clips_per_file=1):
    """The unbatched examples of `pyramid_dataset` (same arguments, checked the same way).

    `source` may also be an already resolved source (`mixed_pyramid_dataset` resolves and
    checks both of its sources before building either). Returns an `ExampleStream`.
    """
    import tensorflow as tf

    # Imported here, not at the top: they import TensorFlow, which `import keras_hpdm.data`
    # must not (it would load TensorFlow under every Keras backend).
    from keras_hpdm.data.array_builder import ArrayBuilder
    from keras_hpdm.data.builder import Settings
    from keras_hpdm.data.file_builder import FileBuilder
    from keras_hpdm.data.shard_builder import ShardBuilder

    if not isinstance(pyramid, PyramidSpec):
        raise TypeError(f"`pyramid` must be a keras_hpdm.PyramidSpec, got {type(pyramid)}.")
    clip_frames = pyramid.target_size[0] if frames is None else check_int("frames", frames, low=1)
    frame_stride, fps = decode.check_frame_rate(frame_stride, fps)
    if crop not in CROPS:
        raise ValueError(f"`crop` must be one of {CROPS}, got {crop!r}.")
    for name, value in [("flip", flip), ("shuffle", shuffle), ("repeat", repeat),
                        ("deterministic", deterministic), ("return_offsets", return_offsets),
                        ("cache", cache)]:
        check_bool(name, value)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    shard = _check_shard(shard)
    seed = draw_seed(seed)
    if shuffle_buffer is not None:
        shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, low=1)
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else check_int(
        "num_parallel_calls", num_parallel_calls, low=1)
    start_example = check_int("start_example", start_example, low=0)
    clips_per_file = check_int("clips_per_file", clips_per_file, low=1)

    settings = Settings(pyramid, clip_frames, frame_stride, fps, crop == "random", bool(flip),
                        channels, seed, bool(return_offsets), clips_per_file)
    src = source if isinstance(source, RESOLVED) else sources.resolve_source(source, labels)
    if clips_per_file > 1 and (cache or not isinstance(src, sources.FileSource)):
        raise ValueError(
            f"`clips_per_file` ({clips_per_file}) applies to media files read directly, "
            "where decoding is the cost; arrays, prepared shards and `cache=True` sample "
            "clips without decoding: pass clips_per_file=1.")
    build = {sources.FileSource: FileBuilder, sources.ArraySource: ArrayBuilder,
             shards.ShardSource: ShardBuilder}[type(src)]
    builder = build(src, settings, shard, bool(shuffle), bool(cache), shuffle_buffer,
                    parallel, deterministic)
    passes, builder.start = divmod(start_example, builder.num_examples)
    if not repeat and passes:
        raise ValueError(f"`start_example` must be < the {builder.num_examples} examples of "
                         f"one pass when `repeat=False`, got {start_example}.")
    if repeat:  # one key per pass: its number (the seed enters with `builder.base`)
        keys = tf.data.Dataset.counter(passes)
    else:  # one pass per iteration (a Keras epoch); a new key each needs TF's re-randomizing
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    examples = builder.examples(keys).filter(lambda ex: ex["ok"]).map(
        lambda ex: {k: v for k, v in ex.items() if k != "ok"})
    return ExampleStream(examples, builder.num_examples, src.class_names,
                         builder.skipped, label_kind(src), shard, parallel,
                         bool(deterministic))


def batch_examples(examples, stream, batch_size, drop_remainder, tokenizer):
    """Batches `examples` (of `stream`, or streams sharing its settings), tokenizes captions,
    prefetches and sets the data set's options."""
    import tensorflow as tf

    ds = examples.batch(batch_size, drop_remainder=bool(drop_remainder))
    if tokenizer is not None:
        ds = ds.map(lambda batch: _tokenize(batch, tokenizer),
                    num_parallel_calls=stream.parallel, deterministic=stream.deterministic)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = stream.deterministic
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if stream.shard is None
        else tf.data.experimental.AutoShardPolicy.OFF
    )
    return ds.with_options(options)


def draw_seed(seed):
    """`seed` checked, or a fresh one for None (< 2**63: `tf.data` takes int64 seeds)."""
    seed = check_seed(seed)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    if seed >= 2**63:
        raise ValueError(f"`seed` must be < 2**63, got {seed}.")
    return seed


def label_kind(src):
    """`"label"`, `"text"` or None: what the examples of a resolved source carry."""
    if isinstance(src, shards.ShardSource):
        return src.label_kind if src.with_labels else None
    if src.labels is not None:
        return "label"
    return "text" if src.texts is not None else None


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


def data_error_message(error):
    """The `keras_hpdm.data` message inside a TensorFlow error raised while iterating (e.g.
    the failure budget), without TensorFlow's decorations; `None` for any other error.

    For callers that print errors for people, such as the command line.
    """
    match = re.search(r"assertion failed: \[(keras_hpdm\.data: .*)\]", str(error))
    return match.group(1) if match else None
