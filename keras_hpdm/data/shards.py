"""Sharded TFRecords: decode media once (`prepare`), then read it fast in the graph.

Each record is one video (or one chunk of `frames` frames of it) with every frame encoded as
PNG (lossless) or JPEG, plus its frame rate, size, provenance and optional label or caption.
`hpdm_shards.json` beside the shards lists the files with their record counts and byte
sizes; it is written last, so its presence marks a complete preparation.

Reading is pure TensorFlow (`TFRecordDataset` + `tf.io.decode_png/jpeg`), and only the
frames a clip needs are decoded. Damage after preparation is handled in two layers: file
sizes are checked against the metadata when a data set is built (missing or truncated shards
appear in the one skipped-files warning), and a record that fails its CRC at read time (e.g.
flipped bytes) ends the reading of that file: the file is reported once while iterating
(a `SkippedMediaWarning` naming it, and the data set's `skipped`) and the other shards go
on; a pass that reads no record at all raises instead of repeating empty passes forever. A
damaged `hpdm_shards.json` raises a `ValueError` naming it. Use `verify_shards` for a full
offline check with counts.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import time

import numpy as np

from keras_hpdm.checks import check_int, is_integer
from keras_hpdm.data import decode

METADATA_NAME = "hpdm_shards.json"
FORMAT = "keras_hpdm.shards"
VERSION = 1
IMAGE_FORMATS = ("png", "jpeg")


@dataclasses.dataclass
class ShardSource:
    directory: str
    metadata: dict
    files: list  # shard paths that exist
    num_records: int
    with_labels: bool = False
    label_kind: str = None  # "label" | "text" | None
    class_names: list = None
    skipped: dict = dataclasses.field(default_factory=dict)
    description: str = ""


def is_shard_dir(path):
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.basename(path) == METADATA_NAME:
        return True
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA_NAME))


_META_KEYS = ("files", "records", "image_format", "channels", "num_records")


def read_metadata(path):
    """Reads `hpdm_shards.json` from a shard folder (or the file itself).

    Raises:
        ValueError: the file is unreadable, not JSON, or not a complete shard index.
    """
    path = os.fspath(path)
    meta_path = path if os.path.isfile(path) else os.path.join(path, METADATA_NAME)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad UTF-8 or JSON (flipped bytes).
        raise ValueError(f"{meta_path}: damaged shard index ({e}); run `prepare` again with "
                         "overwrite=True.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get(
            "version") != VERSION:
        raise ValueError(
            f"{meta_path} is not a keras_hpdm shard index (format {FORMAT!r} v{VERSION})."
        )
    missing = [k for k in _META_KEYS if k not in meta]
    files_ok = isinstance(meta.get("files"), list) and all(
        isinstance(f, dict) and {"name", "num_records", "bytes"} <= set(f) for f in meta["files"])
    if missing or not files_ok:
        raise ValueError(f"{meta_path}: damaged shard index (missing "
                         f"{missing or ['files[].name/num_records/bytes']}); run `prepare` "
                         "again with overwrite=True.")
    return meta


def read_shard_source(path, labels=None):
    """Resolves a prepared shard folder; checks shard files against the metadata."""
    directory = os.path.dirname(path) if os.path.isfile(path) else path
    meta = read_metadata(path)
    if labels not in (None, False, True):
        raise ValueError(
            "Shards carry the labels given to `prepare`; pass `labels=True` to use them "
            f"(or None to leave them out), got {labels!r}."
        )
    if labels is True and meta.get("label_kind") is None:
        raise ValueError(f"`labels=True` but the shards in {directory} were prepared without "
                         "labels; pass `labels=` to `prepare`.")
    files, counts, skipped = [], [], {}
    for entry in meta["files"]:
        file = os.path.join(directory, entry["name"])
        if not os.path.isfile(file):
            skipped[file] = "missing shard: listed in the metadata but not on disk"
            continue
        size = os.path.getsize(file)
        if size != entry["bytes"]:
            # Still read: the records before the damage are intact (CRC-checked).
            skipped[file] = (f"damaged shard: {size} bytes on disk, {entry['bytes']} written; "
                             "records after the damage are dropped")
        files.append(file)
        counts.append(int(entry["num_records"]))
    class_names = meta.get("class_names")
    if labels is True and meta.get("label_kind") == "label" and class_names is None:
        # Integer labels prepared before their class names were stored: read them back.
        class_names = _scan_class_names(files)
    return ShardSource(
        directory=directory,
        metadata=meta,
        files=files,
        num_records=sum(counts),
        with_labels=labels is True,
        label_kind=meta.get("label_kind"),
        class_names=class_names,
        skipped=skipped,
        description=directory,
    )


def _scan_class_names(files):
    """`["0", ..., str(max label)]` from the records' integer labels."""
    import tensorflow as tf

    from keras_hpdm.data import sources

    label = {"label": tf.io.FixedLenFeature([], tf.int64)}
    labels = tf.data.TFRecordDataset(files).ignore_errors().map(
        lambda r: tf.io.parse_single_example(r, label)["label"])
    top = int(labels.reduce(tf.constant(-1, tf.int64), tf.maximum))
    return sources.integer_class_names([top] if top >= 0 else [])


# ------------------------------------------------------------------------ write
def prepare(source, output_dir, *, num_shards=8, image_format="png", frames=None, resize=None,
            labels=None, frame_stride=1, fps=None, channels=None, jpeg_quality=95,
            num_workers=None, overwrite=False):
    """Decodes a source once and writes sharded TFRecords that `pyramid_dataset` reads.

    Args:
        source: anything `pyramid_dataset` accepts except shards (folder, paths, arrays,
            `"builtin:<name>"`).
        output_dir: folder for `data-XXXXX-of-YYYYY.tfrecord` files and `hpdm_shards.json`.
        num_shards: number of shard files; records go round-robin, so shard sizes differ
            by at most one record (use a multiple of your host/replica count).
        image_format: `"png"` (lossless) or `"jpeg"` (smaller, lossy).
        frames: split each video into consecutive chunks of `frames` frames, one record each
            (the incomplete tail is dropped; shorter videos are skipped); `None` stores
            every video whole.
        resize: `None` keeps the decoded size; an int resizes so the short side has that
            size; `(h, w)` resizes to the smallest aspect-preserving size covering `(h, w)`
            (e.g. `pyramid.target_size[1:]`, leaving room for random crops).
        labels: as in `pyramid_dataset` (`"folders"`, CSV/JSON path, dict, array, `True`).
        frame_stride: store every `frame_stride`-th frame.
        fps: resample videos to this frame rate before storing.
        channels: 1 or 3 to convert; `None` keeps 3 for files and the array's channels.
            Frames over `keras_hpdm.data.decode.MAX_PIXELS` are downscaled on decode; files
            with degenerate frames (`MAX_ASPECT_RATIO`) are skipped and reported.
        jpeg_quality: JPEG quality (1-100) for `image_format="jpeg"`.
        num_workers: decoding threads (default: CPU count).
        overwrite: replace an existing preparation in `output_dir`.

    Returns:
        summary dict: `num_records`, `num_frames`, `num_shards`, `files`, `bytes`,
        `num_sources`, `num_skipped`, `skipped` (path -> reason), `seconds`, `output_dir`.

    Example:
    ```python
    summary = keras_hpdm.data.prepare("videos/", "shards/", resize=spec.target_size[1:],
                                      frames=64, labels="folders")
    ds = keras_hpdm.data.pyramid_dataset("shards/", spec, batch_size=8, labels=True)
    ```
    """
    import tensorflow as tf

    from keras_hpdm.data import sources

    t0 = time.perf_counter()
    num_shards = check_int("num_shards", num_shards, low=1)
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"`image_format` must be one of {IMAGE_FORMATS}, got {image_format!r}.")
    frames = check_int("frames", frames, low=1, allow_none=True)
    resize = _check_resize(resize)
    frame_stride, fps = decode.check_frame_rate(frame_stride, fps)
    if channels not in (None, 1, 3):
        raise ValueError(f"`channels` must be None, 1 or 3, got {channels!r}.")
    output_dir = os.path.expanduser(os.fspath(output_dir))
    if is_shard_dir(output_dir) and not overwrite:
        raise ValueError(f"`output_dir` {output_dir!r} already holds prepared shards; pass "
                         "`overwrite=True` to replace them.")
    source_path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if source_path and is_shard_dir(os.path.expanduser(source_path)):
        raise ValueError(f"`source` {source_path!r} is already prepared shards.")

    src = sources.resolve_source(source, labels)
    is_files = isinstance(src, sources.FileSource)
    count = len(src.paths) if is_files else len(src.videos)
    total = count + len(src.skipped)
    sources.raise_if_empty(count, src.skipped, src.description)
    if channels is None:
        channels = 3 if is_files else int(src.videos.shape[-1])
    label_kind = "label" if src.labels is not None else ("text" if src.texts else None)

    def load(i):
        """Decoded, resized, chunked, encoded records of item `i` (or a skip reason)."""
        try:
            if is_files:
                video = decode.decode_video(src.paths[i], frame_stride=frame_stride, fps=fps)
                rate = _effective_fps(src.fps[i], frame_stride, fps)
            else:
                video = _array_to_uint8(src.videos[i])
                if fps is not None:
                    raise ValueError("`fps` needs a frame rate; arrays have none "
                                     "(use `frame_stride`).")
                video, rate = video[::frame_stride], 0.0
            starts = [0] if frames is None else list(range(0, len(video) - frames + 1, frames))
            if is_files and src.kinds[i] == "image":
                starts = [0]  # A still is one record whatever `frames` is.
            elif not starts:
                return None, f"too short: {len(video)} frames < `frames`={frames}"
            video = _encode_ready(video, resize, channels)
            chunks = []
            for start in starts:
                clip = video if frames is None or len(video) == 1 else video[
                    start : start + frames]
                chunks.append((start, clip.shape, _encode(clip, image_format, jpeg_quality),
                               rate))
            return chunks, None
        except Exception as e:  # Skip and count; never abort a long preparation.
            return None, sources._reason(e, src.paths[i] if is_files else i)

    os.makedirs(output_dir, exist_ok=True)
    names = [f"data-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(output_dir, n)) for n in names]
    per_file = [0] * num_shards
    index = frames_written = 0
    skipped = dict(src.skipped)
    records = []  # [num_frames, fps] per record index: lets readers plan without decoding.
    try:
        for i, (chunks, reason) in _ordered_map(load, range(count), num_workers):
            name = src.paths[i] if is_files else f"array[{i}]"
            if reason is not None:
                skipped[name] = reason
                continue
            for start, shape, encoded, rate in chunks:
                label = int(src.labels[i]) if src.labels is not None else -1
                text = src.texts[i] if src.texts is not None else ""
                record = _example(encoded, shape, rate, index, name, start, label, text)
                writers[index % num_shards].write(record)
                records.append([int(shape[0]), float(rate)])
                per_file[index % num_shards] += 1
                frames_written += shape[0]
                index += 1
    finally:
        for w in writers:
            w.close()
    if index == 0:
        for n in names:
            os.remove(os.path.join(output_dir, n))
        sources.raise_if_empty(0, skipped, src.description)

    files = [{"name": n, "num_records": c, "bytes": os.path.getsize(os.path.join(output_dir, n))}
             for n, c in zip(names, per_file, strict=True)]
    meta = {
        "format": FORMAT, "version": VERSION, "num_records": index, "num_frames": frames_written,
        "image_format": image_format, "channels": channels, "frames": frames,
        "frame_stride": frame_stride, "fps": fps, "resize": resize,
        "label_kind": label_kind, "class_names": src.class_names, "files": files,
        "source": src.description, "skipped": skipped, "records": records,
    }
    tmp = os.path.join(output_dir, METADATA_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(output_dir, METADATA_NAME))
    sources.report_skipped(skipped, total, src.description)
    return {
        "output_dir": output_dir, "num_records": index, "num_frames": frames_written,
        "num_shards": num_shards, "files": [os.path.join(output_dir, n) for n in names],
        "bytes": sum(f["bytes"] for f in files), "num_sources": total,
        "num_skipped": len(skipped), "skipped": skipped, "label_kind": label_kind,
        "class_names": src.class_names, "seconds": time.perf_counter() - t0,
    }


def _check_resize(resize):
    if resize is None:
        return None
    if is_integer(resize) and resize > 0:
        return int(resize)
    if (isinstance(resize, (tuple, list)) and len(resize) == 2
            and all(is_integer(v) and v > 0 for v in resize)):
        return [int(resize[0]), int(resize[1])]
    raise ValueError(f"`resize` must be None, a positive int (short side) or (height, width), "
                     f"got {resize!r}.")


def _effective_fps(source_fps, frame_stride, fps):
    if fps is not None:
        return float(fps)
    return float(source_fps) / frame_stride if source_fps else 0.0


def _array_to_uint8(video):
    if video.dtype == np.uint8:
        return video
    return np.clip(np.floor((video.astype(np.float64) + 1.0) * 127.5 + 0.5), 0, 255).astype(
        np.uint8)


def _encode_ready(video, resize, channels):
    """Resizes (TF bilinear + antialias, as the pipeline) and converts channels; uint8 out."""
    import tensorflow as tf

    from keras_hpdm.data import transforms

    h, w = video.shape[1:3]
    if resize is None:
        size = (h, w)
    elif isinstance(resize, int):  # Covering (r, r) puts exactly r on the short side.
        size = decode.resized_cover_shape(h, w, (resize, resize))
    else:
        size = decode.resized_cover_shape(h, w, resize)
    if size == (h, w) and video.shape[-1] == channels:
        return video
    x = tf.convert_to_tensor(video, tf.float32)
    if size != (h, w):
        x = tf.image.resize(x, size, method="bilinear", antialias=True)
    x = transforms.to_channels(x, channels)
    return tf.cast(tf.clip_by_value(tf.floor(x + 0.5), 0, 255), tf.uint8).numpy()


def _encode(video, image_format, quality):
    import tensorflow as tf

    if image_format == "png":
        return [tf.io.encode_png(frame).numpy() for frame in video]
    # Full-resolution chroma: training frames should not lose colour detail twice.
    return [tf.io.encode_jpeg(frame, quality=quality, chroma_downsampling=False).numpy()
            for frame in video]


def _example(encoded, shape, rate, index, name, start, label, text):
    import tensorflow as tf

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def raw(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    feature = {
        "frames": raw(encoded),
        "num_frames": ints(shape[0]),
        "height": ints(shape[1]),
        "width": ints(shape[2]),
        "channels": ints(shape[3]),
        "fps": tf.train.Feature(float_list=tf.train.FloatList(value=[rate])),
        "index": ints(index),
        "start": ints(start),
        "source": raw([os.fspath(name).encode()]),
        "label": ints(label),
        "text": raw([text.encode()]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _ordered_map(fn, items, num_workers):
    """`map(fn, items)` on threads, in order, with a bounded window (bounded memory)."""
    workers = num_workers or os.cpu_count() or 1
    items = iter(items)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        window = collections.deque()
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 2 * workers:
                item, future = window.popleft()
                yield item, future.result()
        while window:
            item, future = window.popleft()
            yield item, future.result()


# ------------------------------------------------------------------------- read
def record_features():
    import tensorflow as tf

    return {
        "frames": tf.io.RaggedFeature(tf.string),
        "num_frames": tf.io.FixedLenFeature([], tf.int64),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "channels": tf.io.FixedLenFeature([], tf.int64),
        "fps": tf.io.FixedLenFeature([], tf.float32),
        "index": tf.io.FixedLenFeature([], tf.int64),
        "start": tf.io.FixedLenFeature([], tf.int64),
        "source": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "text": tf.io.FixedLenFeature([], tf.string),
    }


def parse_record(serialized):
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, record_features())


def decode_frames(encoded, image_format, channels):
    """Decodes a 1-D string tensor of encoded frames to uint8 `(T, H, W, channels)`."""
    import tensorflow as tf

    def one(data):
        if image_format == "png":
            return tf.io.decode_png(data, channels=channels)
        return tf.io.decode_jpeg(data, channels=channels)

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec((None, None, channels),
                                                                     tf.uint8))


def read_records(path):
    """All records of a prepared folder, decoded, in index order (for inspection and tests).

    Returns:
        list of dicts: `frames` uint8 `(T, H, W, C)`, `index`, `source`, `start`, `fps`,
        `label`, `text`.
    """
    import tensorflow as tf

    meta = read_metadata(path)
    directory = os.path.dirname(path) if os.path.isfile(path) else path
    out = []
    for entry in meta["files"]:
        file = os.path.join(directory, entry["name"])
        if not os.path.isfile(file):
            raise ValueError(f"{file}: missing shard (listed in {METADATA_NAME}, not on disk).")
        try:
            out += _read_file(file, meta)
        except (tf.errors.OpError, OSError) as e:
            raise ValueError(f"{file}: damaged shard ({op_message(e)}); `verify_shards` "
                             "lists every damaged file.") from e
    return sorted(out, key=lambda r: r["index"])


def _read_file(file, meta):
    import tensorflow as tf

    out = []
    for record in tf.data.TFRecordDataset(file).map(parse_record):
        frames = decode_frames(record["frames"], meta["image_format"], meta["channels"])
        out.append({
            "frames": frames.numpy(), "index": int(record["index"]),
            "source": record["source"].numpy().decode(), "start": int(record["start"]),
            "fps": float(record["fps"]), "label": int(record["label"]),
            "text": record["text"].numpy().decode(),
        })
    return out


def op_message(error):
    """A TensorFlow error's message without its op/function decorations."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\](\s*name:.*)?$", "", text.strip())
    return text.splitlines()[0] if text else type(error).__name__


def verify_shards(path):
    """Reads and decodes every record of a prepared folder; counts what is readable.

    Returns:
        dict: `num_records` (expected), `readable`, `damaged_files` (name -> error) and
        `ok` (True when every record reads and decodes).
    """
    import tensorflow as tf

    meta = read_metadata(path)
    directory = os.path.dirname(path) if os.path.isfile(path) else path
    readable, damaged = 0, {}
    for entry in meta["files"]:
        file = os.path.join(directory, entry["name"])
        try:
            for serialized in tf.data.TFRecordDataset(file):
                record = parse_record(serialized)
                decode_frames(record["frames"], meta["image_format"], meta["channels"])
                readable += 1
        except (tf.errors.OpError, OSError) as e:
            damaged[entry["name"]] = op_message(e)
    return {"num_records": meta["num_records"], "readable": readable,
            "damaged_files": damaged, "ok": readable == meta["num_records"] and not damaged}
