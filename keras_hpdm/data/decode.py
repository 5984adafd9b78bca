"""Decoding video and image files to uint8 arrays (PyAV for video, Pillow for images).

Everything here runs in Python, outside the TensorFlow graph: `file_builder.py` calls it
through `tf.py_function` when reading media files directly, and `shard_writer.py` calls it
once per file when preparing TFRecord shards. Failures raise `MediaDecodeError` naming the
file, so callers can skip and count bad files instead of crashing a long run.

Frame size limits (one decoded frame or image):
- `MAX_PIXELS`: larger frames are downscaled on decode, aspect ratio kept, to fit the budget
  (area-averaging), so one huge photo or 8K video cannot multiply a run's memory. Every
  consumer then sees the downscaled size (`probe_media` reports it).
- `MAX_ASPECT_RATIO`: a frame longer than this many times its width (or wider than this many
  times its height), e.g. a 1x8000 strip, raises `MediaSizeError` (a `MediaDecodeError`;
  data sets report it as a skipped file). Downscaling cannot help there: covering a square
  training crop needs the strip enlarged along its long side by the same factor, which is
  what multiplies memory.
"""

import math
import os

import numpy as np

from keras_hpdm.checks import check_int, check_number, is_integer
from keras_hpdm.data.clip_frames import clip_offsets

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".gif", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 4096 * 4096  # Per decoded frame; 4K UHD and DCI 4K frames fit whole.
MAX_ASPECT_RATIO = 10  # Long side / short side; wider panoramas and strips are refused.


class MediaDecodeError(ValueError):
    """A media file could not be decoded (corrupt, truncated, empty or too short)."""


class MediaSizeError(MediaDecodeError):
    """A media file decodes, but its frames are a degenerate shape (see `MAX_ASPECT_RATIO`)."""


def media_kind(path):
    """`"video"`, `"image"` or `None` from the file extension."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def _check_channels(channels):
    # Type first: True == 1, and `in` on an array compares elementwise.
    if not is_integer(channels) or channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
    return channels


def decoded_size(path, height, width):
    """The `(height, width)` a `height x width` frame is decoded at: itself, or downscaled
    (aspect ratio kept) to fit `MAX_PIXELS`.

    Raises:
        MediaSizeError: the long side is more than `MAX_ASPECT_RATIO` times the short side.
    """
    if min(height, width) < 1 or max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise MediaSizeError(
            f"{path}: degenerate frame size {width}x{height} (width x height); the long side "
            f"may be at most {MAX_ASPECT_RATIO} times the short side "
            "(keras_hpdm.data.decode.MAX_ASPECT_RATIO).")
    if height * width <= MAX_PIXELS:
        return height, width
    scale = math.sqrt(MAX_PIXELS / (height * width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def _open_video(path):
    import av

    if os.path.getsize(path) == 0:
        raise MediaDecodeError(f"{path}: empty file (0 bytes).")
    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises many FFmpeg error types; all mean "unreadable".
        raise MediaDecodeError(f"{path}: cannot open as video ({e}).") from e
    if not container.streams.video:
        container.close()
        raise MediaDecodeError(f"{path}: no video stream.")
    return container


def _stream_fps(stream):
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_media(path):
    """Checks that a media file decodes; returns its size, length and frame rate.

    Videos are demuxed completely (packets are counted, cheap next to decoding) and their
    first frame is decoded, which catches empty, corrupt and most truncated files. A video
    whose header promises more frames than its packets hold (a truncated MP4 with its index
    in front) also has its last frames decoded, so `num_frames` counts the frames that
    really decode. Images are decoded fully.

    Args:
        path: a video or image file.

    Returns:
        dict with `kind` (`"video"`/`"image"`), `num_frames`, `fps` (0.0 for images or when
        unknown), `height`, `width` (as decoded: frames over `MAX_PIXELS` are downscaled).

    Raises:
        MediaDecodeError: the file is unreadable; `MediaSizeError` when its frames are a
            degenerate shape (`MAX_ASPECT_RATIO`).

    Example:
    ```python
    info = keras_hpdm.data.probe_media("clip.mp4")  # {"num_frames": 120, "fps": 29.97, ...}
    ```
    """
    path = os.fspath(path)
    kind = media_kind(path)
    if kind == "image":
        image = read_image(path)
        return {"kind": "image", "num_frames": 1, "fps": 0.0,
                "height": int(image.shape[0]), "width": int(image.shape[1])}
    if kind is None:
        raise MediaDecodeError(f"{path}: unknown media extension.")
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        try:
            first = next(container.decode(stream), None)
            if first is None:
                raise MediaDecodeError(f"{path}: no decodable video frame.")
            height, width = decoded_size(path, first.height, first.width)
            container.seek(0)
            packets, last_key = _count_packets(container, stream, first.pts)
            num_frames = min(packets, stream.frames) if stream.frames else packets
            if stream.frames > packets:
                # The header's count claims frames a truncated file no longer has, and the
                # last packets present may be cut short: decode from the last keyframe on.
                num_frames = min(num_frames, _decodable_frames(container, stream, last_key))
        except MediaDecodeError:
            raise
        except Exception as e:
            raise MediaDecodeError(f"{path}: corrupt video ({e}).") from e
        if num_frames < 1:
            raise MediaDecodeError(f"{path}: no video frames.")
        return {"kind": "video", "num_frames": int(num_frames), "fps": fps,
                "height": int(height), "width": int(width)}
    finally:
        container.close()


def _count_packets(container, stream, origin):
    """(number of non-empty packets, frame index of the last keyframe) from one demux pass."""
    rate, base = stream.average_rate, stream.time_base
    packets, last_key = 0, 0
    for packet in container.demux(stream):
        if packet.size > 0:
            packets += 1
            if packet.is_keyframe and packet.pts is not None and origin is not None and (
                    rate and base):
                last_key = max(0, round((packet.pts - origin) * base * rate))
    return packets, last_key


def _decodable_frames(container, stream, first):
    """Frames that decode, counted from frame `first` (a keyframe) to the first failure."""
    container.seek(0)
    count = 0
    try:
        for index, _ in _frame_numbers(container, stream, first):
            count = index + 1
    except Exception:  # The damage: frames from here on do not decode.
        pass
    return count


def check_frame_rate(frame_stride, fps):
    """Validates `frame_stride` (positive int) and `fps` (positive number or None)."""
    return (check_int("frame_stride", frame_stride, low=1),
            check_number("fps", fps, low=0.0, low_open=True, allow_none=True))


def clip_steps(num_frames, frame_stride=1, fps=None, source_fps=0.0):
    """Frame offsets (from the clip start) of a clip of `num_frames` frames.

    With `fps`, frames are taken every `source_fps / fps` source frames (rounded to the
    nearest frame); otherwise every `frame_stride` frames (see `clip_frames`).
    """
    ratio = _frame_ratio(frame_stride, fps, source_fps)
    steps = clip_offsets(np.arange(num_frames), ratio)
    # Saturated: past 2**63, int64 would wrap round to negative (wrong) frame indices.
    return np.minimum(steps, 2**62).astype(np.int64)


def _frame_ratio(frame_stride, fps, source_fps):
    if fps is None:
        return float(frame_stride)
    if not source_fps or source_fps <= 0:
        raise ValueError(
            "`fps` needs the source frame rate, which is unknown for this source; "
            "use `frame_stride` instead."
        )
    return float(source_fps) / float(fps)


def decode_video(path, *, start=0, num_frames=None, frame_stride=1, fps=None, indices=None,
                 channels=3, cover_size=None):
    """Decodes frames of a video file to a uint8 array.

    Decoding is sequential from the first frame and stops at the last frame needed; only the
    kept frames are converted to RGB. Frames over `MAX_PIXELS` are downscaled (aspect ratio
    kept); frames longer than `MAX_ASPECT_RATIO` times their width (or the reverse) raise.

    Args:
        path: video file (mp4/webm/avi/mkv/gif/mov, anything FFmpeg reads).
        start: index of the first frame to keep.
        num_frames: number of frames to keep; `None` keeps all frames to the end.
        frame_stride: keep every `frame_stride`-th frame (ignored when `fps` is set).
        fps: resample to this frame rate by taking the nearest source frames.
        indices: explicit frame indices to return (overrides `start`/`num_frames`/stride).
        channels: 3 (RGB) or 1 (luma-weighted grayscale).
        cover_size: optional `(height, width)`: frames larger than needed to cover it are
            shrunk (aspect ratio kept, area averaging) to the smallest size that covers it
            (`resized_cover_shape`), inside FFmpeg's colour conversion. Much cheaper than
            converting full frames and resizing them afterwards (the pyramid pipeline's
            path); frames that are already that small are returned as decoded.

    Returns:
        uint8 array `(T, H, W, channels)`.

    Raises:
        MediaDecodeError: unreadable file, fewer frames than requested, or (`MediaSizeError`)
            degenerate frames.

    Example:
    ```python
    clip = keras_hpdm.data.decode_video(keras_hpdm.data.builtin_clip_path("bikes"),
                                        num_frames=16, frame_stride=2)
    clip.shape  # (16, 272, 640, 3)
    ```
    """
    path = os.fspath(path)
    _check_channels(channels)
    check_frame_rate(frame_stride, fps)
    start = check_int("start", start, low=0, high=2**62)  # frame indices are int64
    cover_size = _check_cover_size(cover_size)
    num_frames = check_int("num_frames", num_frames, low=1, allow_none=True)
    if indices is not None:
        indices = np.asarray(indices)
        if indices.size and indices.dtype.kind not in "iu":  # floats, None, strings, 2**70
            raise ValueError(f"`indices` must be integer frame indices, got {indices!r}.")
        indices = indices.astype(np.int64).reshape(-1)
        if indices.size and indices.min() < 0:
            raise ValueError(f"`indices` (frame indices) must be >= 0, got {indices.min()}.")
    if media_kind(path) == "image":
        image = read_image(path, channels=channels, cover_size=cover_size)
        count = len(indices) if indices is not None else (num_frames or 1)  # as for videos
        return np.repeat(image[None], count, axis=0)
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_fps = _stream_fps(stream)
        if indices is None and num_frames is not None:
            indices = start + clip_steps(num_frames, frame_stride, fps, source_fps)
        frames = _decode_frames(container, stream, path, indices, start, cover_size)
    finally:
        container.close()
    if indices is None and (fps is not None or frame_stride != 1):
        # Whole video at a stride: the length is only known once decoded.
        steps = clip_steps(len(frames), frame_stride, fps, source_fps)
        frames = frames[steps[steps < len(frames)]]
    return _to_channels(frames, channels)


SEEK_MIN_FRAMES = 48  # Seek (to the keyframe before the clip) only past this many frames.


class _SeekMiss(Exception):
    """Timestamps cannot place a frame after a seek: decode from the start instead."""


def _frame_numbers(container, stream, first):
    """Yields (index, frame), seeking near `first` when timestamps allow it.

    Indices come from presentation timestamps at the stream's average rate (exact for
    constant-frame-rate video); a stream without usable timestamps, or a seek that lands
    past `first`, falls back to counting frames from the start.
    """
    rate, base = stream.average_rate, stream.time_base
    if first >= SEEK_MIN_FRAMES and rate and base:
        # Frame 0's own timestamp, not the stream's start time: some containers (AVI with
        # B-frames) shift every presentation timestamp by the decoder delay.
        origin = next(container.decode(stream)).pts
        try:
            if origin is None:
                raise _SeekMiss
            try:
                container.seek(origin + int(first / (rate * base)), stream=stream,
                               backward=True, any_frame=False)
            except Exception as e:  # Not seekable (some GIFs, pipes): count from the start.
                raise _SeekMiss from e
            started = False
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise _SeekMiss
                index = round((frame.pts - origin) * base * rate)
                if not started and index > first:
                    raise _SeekMiss
                started = True
                yield index, frame
            return
        except _SeekMiss:
            container.seek(0, stream=stream, backward=True, any_frame=False)
    yield from enumerate(container.decode(stream))


def _decode_frames(container, stream, path, indices, start, cover_size=None):
    wanted = None if indices is None else set(indices.tolist())
    last = None if indices is None else (int(indices.max()) if indices.size else -1)
    first = start if indices is None else (int(indices.min()) if indices.size else 0)
    kept = {}
    count = 0
    try:
        for i, frame in _frame_numbers(container, stream, first):
            count = i + 1
            if (wanted is None and i >= start) or (wanted is not None and i in wanted):
                kept[i] = _frame_rgb(frame, path, cover_size)
            if last is not None and i >= last:
                break
    except MediaDecodeError:
        raise
    except Exception as e:
        raise MediaDecodeError(
            f"{path}: corrupt or truncated video after {count} frames ({e})."
        ) from e
    if indices is None:
        if not kept:
            raise MediaDecodeError(f"{path}: no frames at or after frame {start}.")
        return np.stack([kept[i] for i in sorted(kept)])
    if last is not None and last >= count:
        raise MediaDecodeError(
            f"{path}: needs frame {last} but the video has only {count} decodable frames."
        )
    if not indices.size:
        raise MediaDecodeError(f"{path}: no frames requested.")
    return np.stack([kept[i] for i in indices.tolist()])


def _check_cover_size(cover_size):
    if cover_size is None:
        return None
    ok = (isinstance(cover_size, (tuple, list)) and len(cover_size) == 2
          and all(is_integer(v) and v >= 1 for v in cover_size))
    if not ok:
        raise ValueError("`cover_size` must be None or (height, width) of positive ints, "
                         f"got {cover_size!r}.")
    return int(cover_size[0]), int(cover_size[1])


def shrunk_size(height, width, cover_size):
    """The size frames of `height x width` are decoded at for `cover_size`: the cover size
    when that shrinks them, else unchanged (enlarging is left to the caller's resize)."""
    if cover_size is None:
        return height, width
    new_h, new_w = resized_cover_shape(height, width, cover_size)
    if new_h <= height and new_w <= width:
        return new_h, new_w
    return height, width


def _frame_rgb(frame, path, cover_size=None):
    """A decoded frame as uint8 RGB, downscaled by FFmpeg (area average) over `MAX_PIXELS`
    and, with `cover_size`, to the size that just covers it."""
    height, width = shrunk_size(*decoded_size(path, frame.height, frame.width), cover_size)
    if (height, width) == (frame.height, frame.width):
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")


def _to_channels(frames, channels):
    if frames.shape[-1] == channels:
        return frames
    if channels == 1:
        # Exact ITU-R BT.601 luma (the weights sum to 1), as in transforms.to_channels.
        luma = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.floor(luma + 0.5), 0, 255).astype(np.uint8)[..., None]
    return np.repeat(frames, 3, axis=-1)


def read_image(path, channels=3, cover_size=None):
    """Decodes an image file (png/jpg/webp/bmp; first frame of animations) to uint8.

    EXIF orientation is applied; 16-bit images are scaled to 8 bits; alpha is dropped.
    Images over `MAX_PIXELS` are downscaled (aspect ratio kept; JPEGs are decoded at a reduced
    scale directly); images longer than `MAX_ASPECT_RATIO` times their width (or the reverse)
    raise `MediaSizeError`.

    Args:
        path: image file.
        channels: 3 (RGB) or 1 (grayscale).
        cover_size: optional `(height, width)`: an image larger than needed to cover it is
            shrunk (aspect kept, area averaging) to the smallest size covering it.

    Returns:
        uint8 array `(H, W, channels)`.

    Raises:
        MediaDecodeError: unreadable, truncated or empty file; `MediaSizeError` for a
            degenerate shape.

    Example:
    ```python
    image = keras_hpdm.data.read_image("photo.jpg")  # (H, W, 3) uint8
    ```
    """
    from PIL import Image, ImageOps

    path = os.fspath(path)
    _check_channels(channels)
    cover_size = _check_cover_size(cover_size)
    if os.path.getsize(path) == 0:
        raise MediaDecodeError(f"{path}: empty file (0 bytes).")
    try:
        with Image.open(path) as image:
            # Before the EXIF rotation, so the draft covers a square: either orientation.
            square = None if cover_size is None else (max(cover_size),) * 2
            size = shrunk_size(*decoded_size(path, image.height, image.width), square)
            if size != (image.height, image.width):
                image.draft(image.mode, size[::-1])  # JPEG: decode at 1/2, 1/4 or 1/8 scale.
            image.load()  # Full decode: truncated files fail here, not later.
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                scale = 65535.0 if array.max() > 255 else 255.0
                image = Image.fromarray(np.floor(array / scale * 255 + 0.5).astype(np.uint8))
            image = image.convert("L" if channels == 1 else "RGB")
            size = shrunk_size(*decoded_size(path, image.height, image.width), cover_size)
            if size != (image.height, image.width):
                image = image.resize(size[::-1], Image.Resampling.BOX)  # Area average.
            array = np.asarray(image, dtype=np.uint8)
    except MediaDecodeError:
        raise
    except Exception as e:
        raise MediaDecodeError(f"{path}: cannot decode image ({e}).") from e
    return array[..., None] if channels == 1 else array


def resized_cover_shape(height, width, target_hw):
    """The smallest aspect-preserving `(h, w)` with `h >= target_h` and `w >= target_w`."""
    scale = max(target_hw[0] / height, target_hw[1] / width)
    return (max(target_hw[0], math.floor(height * scale + 0.5)),
            max(target_hw[1], math.floor(width * scale + 0.5)))
