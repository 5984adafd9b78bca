"""`prepare`: decode a source once and write it as sharded TFRecords (the format and the
reading side are in `shards.py`).

Files are decoded on threads, in order; each record is one video (or one chunk of `frames`
frames of it) with every frame encoded as PNG or JPEG. A file that fails is skipped and
reported, never aborting a long preparation; `hpdm_shards.json` is written last, so its
presence marks a complete preparation.
"""

import collections
import concurrent.futures
import json
import os
import time

import numpy as np

from keras_hpdm.checks import check_int, is_integer
from keras_hpdm.data import decode, shards, sources
from keras_hpdm.data.skipped import raise_if_empty, report_skipped, skip_reason


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

    t0 = time.perf_counter()
    num_shards = check_int("num_shards", num_shards, low=1)
    if image_format not in shards.IMAGE_FORMATS:
        raise ValueError(
            f"`image_format` must be one of {shards.IMAGE_FORMATS}, got {image_format!r}.")
    frames = check_int("frames", frames, low=1, allow_none=True)
    resize = _check_resize(resize)
    frame_stride, fps = decode.check_frame_rate(frame_stride, fps)
    if channels not in (None, 1, 3):
        raise ValueError(f"`channels` must be None, 1 or 3, got {channels!r}.")
    output_dir = os.path.expanduser(os.fspath(output_dir))
    if shards.is_shard_dir(output_dir) and not overwrite:
        raise ValueError(f"`output_dir` {output_dir!r} already holds prepared shards; pass "
                         "`overwrite=True` to replace them.")
    source_path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if source_path and shards.is_shard_dir(os.path.expanduser(source_path)):
        raise ValueError(f"`source` {source_path!r} is already prepared shards.")

    src = sources.resolve_source(source, labels)
    is_files = isinstance(src, sources.FileSource)
    count = len(src.paths) if is_files else len(src.videos)
    total = count + len(src.skipped)
    raise_if_empty(count, src.skipped, src.description)
    if channels is None:
        channels = 3 if is_files else int(src.videos.shape[-1])
    label_kind = "label" if src.labels is not None else ("text" if src.texts else None)

    def load(i):
        """Decoded, resized, chunked, encoded records of item `i` (or a skip reason)."""
        try:
            if is_files:
                # Shrunk on decode as the pipeline shrinks files (FFmpeg / Pillow, area
                # average): shards prepared at the target read as the files themselves do.
                video = decode.decode_video(src.paths[i], frame_stride=frame_stride, fps=fps,
                                            cover_size=_cover_size(resize))
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
            return None, skip_reason(e, src.paths[i] if is_files else i)

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
        raise_if_empty(0, skipped, src.description)

    files = [{"name": n, "num_records": c, "bytes": os.path.getsize(os.path.join(output_dir, n))}
             for n, c in zip(names, per_file, strict=True)]
    meta = {
        "format": shards.FORMAT, "version": shards.VERSION, "num_records": index,
        "num_frames": frames_written, "image_format": image_format, "channels": channels,
        "frames": frames, "frame_stride": frame_stride, "fps": fps, "resize": resize,
        "label_kind": label_kind, "class_names": src.class_names, "files": files,
        "source": src.description, "skipped": skipped, "records": records,
    }
    tmp = os.path.join(output_dir, shards.METADATA_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(output_dir, shards.METADATA_NAME))
    report_skipped(skipped, total, src.description)
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


def _cover_size(resize):
    """`resize` (checked) as `decode_video`'s `cover_size`: covering (r, r) puts r on the
    short side."""
    if resize is None:
        return None
    return (resize, resize) if isinstance(resize, int) else tuple(resize)


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
    """Resizes (TF bilinear + antialias, as the pipeline: files arrive here already shrunk
    on decode, so this enlarges or leaves them) and converts channels; uint8 out."""
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
