"""Resolving what a user points at (folder, paths, arrays, built-ins, shards) plus labels.

A source resolves to one of three descriptions that the pipeline knows how to read:
`FileSource` (probed media files), `ArraySource` (in-memory videos) and `ShardSource`
(TFRecord shards written by `prepare`, read by `shards.py`). Bad files are collected in
`skipped` (path -> reason), as `skipped.py` describes.
"""

import concurrent.futures
import dataclasses
import os
import urllib.parse

import numpy as np

from keras_hpdm.data import builtin, decode, shards
from keras_hpdm.data.labels import assign_values, file_labels, is_folder_labels
from keras_hpdm.data.skipped import skip_reason

BUILTIN_PREFIX = "builtin:"


@dataclasses.dataclass
class FileSource:
    paths: list
    kinds: list  # "video" | "image" per path
    num_frames: np.ndarray
    fps: np.ndarray
    labels: np.ndarray = None  # int64 class ids, or None
    texts: list = None  # captions, or None
    class_names: list = None
    skipped: dict = dataclasses.field(default_factory=dict)
    description: str = ""


@dataclasses.dataclass
class ArraySource:
    videos: np.ndarray  # (N, T, H, W, C) uint8, or float32 in [-1, 1]
    labels: np.ndarray = None
    texts: list = None
    class_names: list = None
    skipped: dict = dataclasses.field(default_factory=dict)
    description: str = "arrays"


def find_media(folder, recursive=True):
    """Lists the video and image files under `folder`, sorted by relative path.

    Args:
        folder: directory to scan.
        recursive: descend into sub-folders (hidden files and folders are ignored).

    Returns:
        list of str paths; videos are `.mp4 .webm .avi .mkv .gif .mov .m4v`, images
        `.png .jpg .jpeg .webp .bmp` (case-insensitive).

    Example:
    ```python
    paths = keras_hpdm.data.find_media("~/datasets/ucf101")
    ```
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise ValueError(f"`folder` must be an existing directory, got {folder!r}.")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f)
            for f in files
            if not f.startswith(".") and decode.media_kind(f) is not None
        ]
        if not recursive:
            break
    return sorted(found, key=lambda p: os.path.relpath(p, folder).split(os.sep))


# ------------------------------------------------------------------ resolution
def resolve_source(source, labels=None, channels=3):
    """Resolves `source` (+ `labels`) to a `FileSource`, `ArraySource` or `ShardSource`."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith(BUILTIN_PREFIX):
            return _resolve_builtin(text[len(BUILTIN_PREFIX):], labels)
        path = os.path.expanduser(text)
        if shards.is_shard_dir(path):
            return shards.read_shard_source(path, labels)
        if os.path.isdir(path):
            files = find_media(path)
            if not files:
                raise ValueError(
                    f"No video or image files found in {path!r} (looked for "
                    f"{', '.join(decode.VIDEO_EXTENSIONS + decode.IMAGE_EXTENSIONS)})."
                )
            return _file_source(files, labels, root=path, description=path)
        if os.path.isfile(path):
            return _file_source([path], labels, root=os.path.dirname(path), description=path)
        raise ValueError(
            f"`source` {text!r} is neither a file, a folder, a prepared shard folder nor "
            f"'builtin:<name>' with name in {list(builtin.BUILTIN_NAMES)}."
        )
    if isinstance(source, np.ndarray) or _is_tensor(source):
        return _array_source(np.asarray(source), labels)
    if isinstance(source, tuple) and len(source) == 2 and hasattr(source[0], "shape"):
        if labels not in (None, True):
            raise ValueError("Pass labels either inside `source=(videos, labels)` or as "
                             "`labels=`, not both.")
        return _array_source(np.asarray(source[0]), np.asarray(source[1]))
    if isinstance(source, (list, tuple)) and source and all(
        isinstance(p, (str, os.PathLike)) for p in source
    ):
        files = [os.path.expanduser(os.fspath(p)) for p in source]
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files])
        return _file_source(files, labels, root=root, description=f"{len(files)} paths")
    raise TypeError(
        "`source` must be a folder, a file path, a list of paths, a prepared shard folder, "
        "'builtin:<name>', a numpy array (N, T, H, W, C) or a `(videos, labels)` tuple; "
        f"got {type(source).__name__}."
    )


def _is_tensor(x):
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "numpy")


def _resolve_builtin(spec, labels):
    name, _, query = spec.partition("?")
    options = {k: _parse_number(v) for k, v in urllib.parse.parse_qsl(query)}
    if name == "moving_mnist_captions":
        options = {"num_videos": 1000, **options}
        videos, captions, _ = builtin.load_builtin(name, **options)
        source = _array_source(videos, captions if labels is True else labels)
        source.description = BUILTIN_PREFIX + spec
        return source
    if name in ("moving_mnist", "mnist"):
        if name == "moving_mnist":
            options = {"num_videos": 1000, "num_frames": 20, **options}
            videos, classes = builtin.load_builtin(name, **options)
        else:
            digits, classes = builtin.load_builtin(name, **options)
            videos = digits[:, None, :, :, None]
        source = _array_source(videos, classes if labels is True else labels)
        if labels is True:
            source.class_names = [str(i) for i in range(10)]
        source.description = BUILTIN_PREFIX + spec
        return source
    if options:
        raise ValueError(f"'builtin:{name}' takes no options, got {sorted(options)}.")
    files = builtin.builtin_paths(name)
    return _file_source(files, labels, root=os.path.dirname(files[0]),
                        description=BUILTIN_PREFIX + name)


def _parse_number(value):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _array_source(videos, labels):
    if videos.ndim == 4:  # (N, H, W, C) images -> 1-frame videos.
        videos = videos[:, None]
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3) or videos.shape[0] < 1:
        raise ValueError(
            "Array `source` must have shape (N, T, H, W, C) (or (N, H, W, C) for images) "
            f"with C in (1, 3) and N >= 1, got {videos.shape}."
        )
    if np.issubdtype(videos.dtype, np.floating):
        lo, hi = float(videos.min()), float(videos.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                f"Float array `source` must hold values in [-1, 1], got [{lo:.4g}, {hi:.4g}]. "
                "Pass uint8 frames in [0, 255] instead."
            )
        videos = videos.astype(np.float32)
    elif videos.dtype != np.uint8:
        raise ValueError(
            f"Array `source` must be uint8 or float in [-1, 1], got dtype {videos.dtype}."
        )
    source = ArraySource(videos=videos)
    if labels is True:
        raise ValueError("`labels=True` needs a source that carries labels (a folder, a "
                         "built-in data set or shards); pass an array of labels instead.")
    if labels is not None and labels is not False:
        if isinstance(labels, (str, dict)):
            raise ValueError("Array sources take `labels` as an array of length N "
                             "(ints or captions), not a file or mapping.")
        values = np.asarray(labels)
        if values.ndim == 2:  # e.g. moving_mnist(..., return_all_labels=True): first digit
            values = values[:, 0]
        if values.ndim != 1:
            raise ValueError(f"`labels` must have shape (N,), got {values.shape}.")
        values = values.tolist()
        if len(values) != len(videos):
            raise ValueError(
                f"`labels` has {len(values)} entries but `source` has {len(videos)} videos."
            )
        assign_values(source, values, kind=None)
    return source


# ---------------------------------------------------------------- file probing
def probe_all(paths, max_workers=None):
    """Probes files in parallel; returns (infos list with None for bad files, skipped dict)."""
    workers = max_workers or min(8, 2 * (os.cpu_count() or 1))
    infos, skipped = [None] * len(paths), {}

    def probe(path):
        try:
            return decode.probe_media(path), None
        except (decode.MediaDecodeError, OSError) as e:
            return None, skip_reason(e, path)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, (info, reason) in enumerate(pool.map(probe, paths)):
            infos[i] = info
            if reason is not None:
                skipped[paths[i]] = reason
    return infos, skipped


def _file_source(files, labels, root, description):
    infos, skipped = probe_all(files)
    keep = [i for i, info in enumerate(infos) if info is not None]
    source = FileSource(
        paths=[files[i] for i in keep],
        kinds=[infos[i]["kind"] for i in keep],
        num_frames=np.array([infos[i]["num_frames"] for i in keep], np.int64),
        fps=np.array([infos[i]["fps"] for i in keep], np.float64),
        skipped=skipped,
        description=description,
    )
    if labels is not None and labels is not False:
        values = file_labels(source.paths, labels, root)
        missing = [p for p, v in zip(source.paths, values, strict=True) if v is None]
        for p in missing:
            source.skipped[p] = "no label: the file has no entry in `labels`"
        present = [i for i, v in enumerate(values) if v is not None]
        subset(source, present)
        assign_values(source, [values[i] for i in present],
                      kind="label" if is_folder_labels(labels) else None)
    return source


def subset(source, keep):
    """Keeps the items of a `FileSource` whose positions are in `keep` (in place)."""
    keep = list(keep)
    source.paths = [source.paths[i] for i in keep]
    source.kinds = [source.kinds[i] for i in keep]
    source.num_frames = source.num_frames[keep]
    source.fps = source.fps[keep]
    if source.labels is not None:
        source.labels = source.labels[keep]
    if source.texts is not None:
        source.texts = [source.texts[i] for i in keep]
