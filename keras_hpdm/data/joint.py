"""`mixed_pyramid_dataset`: joint image + video training, each image entering as a still video.

HPDM's text-to-video model trains on images and videos together at a 1:1 batch ratio, an image
being a video whose frames all repeat it (the paper's Table 8: 4096 videos + 4096 images per
batch). Both sources become example streams cut into the same pyramid
(`pipeline.example_stream`: a one-frame source repeats its frame over the clip), and a fixed
interleave picks from them: example `i` of the mixed stream is an image when
`floor((i + 1) * f) > floor(i * f)` for `f = image_fraction`. Any `B` consecutive examples
then hold `floor(B * f)` or `ceil(B * f)` images (exactly `B * f` when that is whole, as the
paper's fixed per-batch counts), with no sampling noise. Because the pattern depends on the
position alone, a resumed run (`start_example`) knows exactly how many images and videos it
has already seen, and skips just those in each stream.
"""

import collections
import fractions

from keras_hpdm.checks import check_int, check_number
from keras_hpdm.data import pipeline, sources

# `pyramid_dataset` keywords taken by `mixed_pyramid_dataset` for both sources; the frame
# ones apply to the videos only (an image has one frame, repeated).
OPTIONS = ("frames", "frame_stride", "fps", "crop", "flip", "shuffle", "repeat", "cache",
           "shard", "deterministic", "channels", "return_offsets", "shuffle_buffer",
           "num_parallel_calls", "clips_per_file")
VIDEO_ONLY = ("frames", "frame_stride", "fps", "clips_per_file")
# `image_fraction` becomes a ratio of integers p/q for the interleave (exact integer
# arithmetic at any stream position); 1/3 stays 1/3, 0.1234567 becomes 0.1235 (1000/8097).
MAX_DENOMINATOR = 10_000


def mixed_pyramid_dataset(video_source, image_source, pyramid, batch_size, *,
                          image_fraction=0.5, labels=None, image_labels=None, seed=None,
                          start_example=0, drop_remainder=True, tokenizer=None, **options):
    """Batches of patch pyramids mixing videos and images (as still videos), for `fit`.

    The paper's text-to-video recipe: images train alongside videos, each image repeated over
    the pyramid's frames and cut into the same pyramid; HPDM's T2V model mixes them 1:1
    (`image_fraction=0.5`). Examples alternate in a fixed pattern, so every batch holds
    `floor` or `ceil` of `batch_size * image_fraction` images (exactly that many when it is
    a whole number): no sampling noise in the mix.

    Args:
        video_source: the videos: anything `pyramid_dataset` takes as `source`.
        image_source: the images: a folder, file(s) or `"builtin:images"`/`"builtin:mnist"`
            of still images only, shards `prepare`d from images, or an array `(N, H, W, C)`
            (or `(N, 1, H, W, C)`). A source holding any video raises.
        pyramid: the `PyramidSpec` both sources are cut into.
        batch_size: examples per batch (videos and images together).
        image_fraction: the share of images in the stream, a number in `[0, 1]` (0.5: the
            paper's 1:1 for text-to-video; 0: videos only; 1: images only). It is used as a
            ratio of integers with denominator at most 10000.
        labels: the videos' labels or captions, as `pyramid_dataset`'s `labels`.
        image_labels: the images' labels or captions; `None` takes `labels` when that is
            `True`, `"folders"`, a file or a mapping (a file may list both sources' paths),
            and no labels otherwise. Both sources must end up with the same kind: both
            class labels (with class names where one list starts the other, so an id is
            one class in both), both captions, or neither.
        seed: non-negative int; the same seed gives the same batches. The videos are read
            with `seed` itself (so `image_fraction=0` equals `pyramid_dataset(video_source,
            ..., seed=seed)`), the images with a seed derived from it.
        start_example: position in the mixed stream to start from (a resumed run passes
            `steps * batch_size`): each source skips exactly the examples it gave before.
        drop_remainder: drop the last incomplete batch.
        tokenizer: as `pyramid_dataset`'s, run on the mixed batches' captions.
        **options: `pyramid_dataset`'s `crop`, `flip`, `shuffle`, `repeat`, `cache`,
            `shard`, `deterministic`, `channels`, `shuffle_buffer` and
            `num_parallel_calls` for both sources; `frames`, `frame_stride`, `fps` and
            `clips_per_file` for the videos. With `repeat=False` the stream ends when the
            source whose turn it is runs out. `return_offsets=True` adds, besides the
            provenance, `"image"` bool `(B,)`: which examples are images (`index` counts
            within each source).

    Returns:
        `tf.data.Dataset` of dicts with the structure of `pyramid_dataset`'s: `"patches"`
        float32 `(B, L, f, h, w, C)`, `"coords"` float32 `(B, L, 6)` (+ `"label"`/`"text"`).
        Attributes: `num_examples` (both sources' examples per pass together),
        `num_video_examples`, `num_image_examples`, `image_fraction` (the ratio used, a
        float), `class_names`, `skipped` (both sources' skipped files), `pyramid`.

    Raises:
        ValueError: `image_fraction` is not a number in `[0, 1]`; `image_source` holds no
            images or holds videos; the two sources' labels differ in kind or classes.
        TypeError: an unknown keyword.

    Example:
    ```python
    spec = keras_hpdm.PyramidSpec(patch_size=(4, 32, 32), num_levels=3)
    ds = keras_hpdm.data.mixed_pyramid_dataset(
        "videos/", "photos/", spec, batch_size=16, image_fraction=0.5,
        labels="video_captions.csv", image_labels="photo_captions.csv", seed=0)
    model.fit(ds, steps_per_epoch=1000)
    ```
    """
    import tensorflow as tf

    batch_size, tokenizer = pipeline.check_batching(batch_size, drop_remainder, tokenizer)
    ratio = interleave_ratio(image_fraction)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"mixed_pyramid_dataset() got unexpected keyword arguments {unknown}; "
                        f"it takes pyramid_dataset's {list(OPTIONS)}.")
    seed = pipeline.draw_seed(seed)
    start = check_int("start_example", start_example, low=0)
    if image_labels is None and _applies_to_any_source(labels):
        image_labels = labels

    videos = sources.resolve_source(video_source, labels)
    images = sources.resolve_source(image_source, image_labels)
    check_stills(images)
    class_names, kind = _joint_labels(videos, images)
    if tokenizer is not None and kind != "text":
        raise ValueError("`tokenizer` needs captions: pass `labels=`/`image_labels=` with "
                         "captions.")

    images_before = start * ratio.numerator // ratio.denominator
    image_options = {k: v for k, v in options.items() if k not in VIDEO_ONLY}
    # Both streams are built whatever the fraction (their arguments are checked the same
    # way), but one that is never chosen is never read.
    video_stream = pipeline.example_stream(videos, pyramid, seed=seed,
                                           start_example=start - images_before, **options)
    image_stream = pipeline.example_stream(images, pyramid, seed=image_seed(seed),
                                           start_example=images_before, **image_options)
    streams = [video_stream.examples, image_stream.examples]
    if options.get("return_offsets", False):
        streams = [s.map(lambda ex, flag=flag: {**ex, "image": tf.constant(flag)})
                   for s, flag in zip(streams, (False, True), strict=True)]
    if ratio in (0, 1):
        examples = streams[int(ratio)]
    else:
        p, q = ratio.numerator, ratio.denominator
        choice = tf.data.Dataset.counter(start).map(
            lambda i: (i + 1) * p // q - i * p // q)  # 1: an image
        examples = tf.data.Dataset.choose_from_datasets(streams, choice,
                                                        stop_on_empty_dataset=True)
    ds = pipeline.batch_examples(examples, video_stream, batch_size, drop_remainder, tokenizer)
    ds.num_video_examples = video_stream.num_examples
    ds.num_image_examples = image_stream.num_examples
    ds.num_examples = video_stream.num_examples + image_stream.num_examples
    ds.image_fraction = float(ratio)
    ds.class_names = class_names
    ds.skipped = collections.ChainMap(video_stream.skipped, image_stream.skipped)
    ds.pyramid = pyramid
    return ds


def interleave_ratio(image_fraction):
    """`image_fraction` checked, as a `fractions.Fraction` with a small denominator."""
    value = check_number("image_fraction", image_fraction, low=0.0, high=1.0)
    return fractions.Fraction(value).limit_denominator(MAX_DENOMINATOR)


def image_seed(seed):
    """The images' seed: another stream than the videos' for the same `seed`, so an image
    and a video at the same position do not share their crops and pyramid draws."""
    return (seed * 6364136223846793005 + 1442695040888963407) % 2**63


def check_stills(src):
    """Raises a `ValueError` naming `image_source` unless every item of `src` is one frame."""
    if isinstance(src, sources.FileSource):
        total = len(src.paths)
        moving = [p for p, kind in zip(src.paths, src.kinds, strict=True) if kind != "image"]
    elif isinstance(src, sources.ArraySource):
        total = len(src.videos)
        moving = [] if src.videos.shape[1] == 1 else [
            f"arrays of {src.videos.shape[1]} frames"]
    else:
        lengths = [int(n) for n, _ in src.metadata["records"]]
        total = len(lengths)
        moving = [f"{sum(n > 1 for n in lengths)} records of more than one frame"
                  ] if any(n > 1 for n in lengths) else []
    where = f" in {src.description}" if src.description else ""
    if total == 0:
        raise ValueError(f"`image_source` must hold images (still frames); found none{where}.")
    if moving:
        listed = ", ".join(map(str, moving[:3])) + (
            f" and {len(moving) - 3} more" if len(moving) > 3 else "")
        raise ValueError(f"`image_source` must hold only images (still frames), but holds "
                         f"videos{where}: {listed}. Pass videos as `video_source`.")


def _applies_to_any_source(labels):
    """Whether `labels` can label the images too: the sources' own or a path mapping."""
    return labels is True or isinstance(labels, (str, dict)) or hasattr(labels, "__fspath__")


def _joint_labels(videos, images):
    """(class_names, label kind) of the mixed batches; raises when the sources disagree."""
    kinds = pipeline.label_kind(videos), pipeline.label_kind(images)
    if kinds[0] != kinds[1]:
        names = {"label": "class labels", "text": "captions", None: "no labels"}
        raise ValueError(
            f"`labels` and `image_labels` must give both sources the same kind of labels "
            f"(class labels, captions or none): the videos have {names[kinds[0]]}, the "
            f"images {names[kinds[1]]}.")
    if kinds[0] != "label":
        return None, kinds[0]
    short, long = sorted([videos.class_names or [], images.class_names or []], key=len)
    if long[:len(short)] != short:
        raise ValueError(
            "`image_labels` must use the videos' classes (a class id must name the same "
            f"class in both sources): the videos have classes {_clip(videos.class_names)}, "
            f"the images {_clip(images.class_names)}.")
    return long, "label"


def _clip(names, n=8):
    names = list(names or [])
    return repr(names[:n])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > n else "]")

