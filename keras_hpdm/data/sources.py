"""Resolving what a user points at (folder, paths, arrays, built-ins, shards) plus labels.

A source resolves to one of three descriptions that the pipeline knows how to read:
`FileSource` (probed media files), `ArraySource` (in-memory videos) and `ShardSource`
(TFRecord shards written by `prepare`). Bad files are collected in `skipped` (path ->
reason) and reported with a single warning by `report_skipped`.
"""

import concurrent.futures
import csv
import dataclasses
import json
import os
import urllib.parse
import warnings
from collections import Counter

import numpy as np

from keras_hpdm.checks import is_integer
from keras_hpdm.data import builtin, decode

BUILTIN_PREFIX = "builtin:"
_PATH_KEYS = ("path", "file", "filename", "video", "image")
_LABEL_KEYS = ("label", "class", "category")
_TEXT_KEYS = ("caption", "text", "prompt")


class SkippedMediaWarning(UserWarning):
    """Some media files were unusable and were skipped (one summary per data set)."""


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
    from keras_hpdm.data import shards

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
        _assign_values(source, values, kind=None)
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
            return None, _reason(e, path)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, (info, reason) in enumerate(pool.map(probe, paths)):
            infos[i] = info
            if reason is not None:
                skipped[paths[i]] = reason
    return infos, skipped


def _reason(error, path):
    message = str(error)
    prefix = f"{path}: "
    kind = "unsupported size" if isinstance(error, decode.MediaSizeError) else "undecodable"
    return f"{kind}: " + (message[len(prefix):] if message.startswith(prefix) else message)


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
        values = _file_labels(source.paths, labels, root)
        missing = [p for p, v in zip(source.paths, values, strict=True) if v is None]
        for p in missing:
            source.skipped[p] = "no label: the file has no entry in `labels`"
        present = [i for i, v in enumerate(values) if v is not None]
        subset(source, present)
        _assign_values(source, [values[i] for i in present],
                       kind="label" if _is_folder_labels(labels) else None)
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


# ---------------------------------------------------------------------- labels
def _is_folder_labels(labels):
    return labels is True or labels == "folders"


def _file_labels(paths, labels, root):
    if _is_folder_labels(labels):
        values = []
        for p in paths:
            parts = os.path.relpath(os.path.abspath(p), os.path.abspath(root)).split(os.sep)
            values.append(parts[0] if len(parts) > 1 and parts[0] != ".." else None)
        return values
    if isinstance(labels, (str, os.PathLike)):
        entries, kind = read_label_file(labels)
        base = os.path.dirname(os.path.abspath(os.fspath(labels)))
        return _match(paths, entries, [base, root], kind)
    if isinstance(labels, dict):
        return _match(paths, dict(labels), [root, os.getcwd()], None)
    values = list(labels)
    if len(values) != len(paths):
        raise ValueError(
            f"`labels` has {len(values)} entries but the source has {len(paths)} usable files; "
            "pass a mapping (dict, CSV or JSON file) from path to label instead."
        )
    return values


def read_label_file(path):
    """Reads a CSV or JSON label file into `({path: value}, kind)`.

    CSV: a header naming a path column (`path`/`file`/`filename`/`video`/`image`) and a
    value column (`label`/`class`/`category` -> class labels, `caption`/`text`/`prompt` ->
    captions), or two header-less columns `path,value`. JSON: `{path: value}` or a list of
    `{"path": ..., "label"|"caption": ...}` objects. `kind` is `"label"`, `"text"` or `None`
    (decided from the values: all integers -> labels, otherwise captions).
    """
    path = os.path.expanduser(os.fspath(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json", ".tsv"):
        raise ValueError(f"`labels` file must be .csv, .tsv or .json, got {path!r}; or pass "
                         "labels='folders' for one class per sub-folder.")
    if not os.path.isfile(path):
        raise ValueError(f"`labels` file {path!r} does not exist.")
    if ext == ".json":
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            return {str(k): v for k, v in data.items()}, None
        if isinstance(data, list) and all(isinstance(r, dict) for r in data):
            return _records_to_entries(data, path)
        raise ValueError(f"{path}: JSON labels must be an object {{path: label}} or a list of "
                         "objects with a path and a label/caption.")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t" if ext == ".tsv" else ",") if r]
    if not rows:
        raise ValueError(f"{path}: empty labels file.")
    header = [c.strip().lower() for c in rows[0]]
    if any(h in _PATH_KEYS for h in header):
        return _records_to_entries([dict(zip(header, r, strict=False)) for r in rows[1:]], path)
    if any(len(r) < 2 for r in rows):
        raise ValueError(f"{path}: each CSV row needs `path,label` (or use a header).")
    return {r[0].strip(): _maybe_int(r[1].strip()) for r in rows}, None


def _records_to_entries(records, path):
    keys = {k.lower() for r in records for k in r}
    path_key = next((k for k in _PATH_KEYS if k in keys), None)
    label_key = next((k for k in _LABEL_KEYS if k in keys), None)
    text_key = next((k for k in _TEXT_KEYS if k in keys), None)
    if path_key is None or (label_key is None) == (text_key is None):
        raise ValueError(
            f"{path}: labels need one path column {_PATH_KEYS} and exactly one of a label "
            f"column {_LABEL_KEYS} or a caption column {_TEXT_KEYS}; got {sorted(keys)}."
        )
    value_key = label_key or text_key
    entries = {}
    for r in records:
        r = {k.lower(): v for k, v in r.items()}
        value = r.get(value_key)
        entries[str(r[path_key]).strip()] = _maybe_int(value) if label_key else str(value)
    return entries, "label" if label_key else "text"


def _maybe_int(value):
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _norm(path):
    return os.path.normcase(os.path.normpath(path)).replace(os.sep, "/")


def _match(paths, entries, bases, kind):
    """Maps each media path to its entry: absolute, relative to `bases`, or unique basename."""
    by_key = {}
    for key, value in entries.items():
        key = os.path.expanduser(key)
        candidates = [key] if os.path.isabs(key) else [os.path.join(b, key) for b in bases]
        for c in candidates:
            by_key.setdefault(_norm(os.path.realpath(c)), value)
    # Basename fallback only where it is unambiguous on both sides.
    names = Counter(os.path.basename(k) for k in entries)
    files = Counter(os.path.basename(p) for p in paths)
    by_name = {os.path.basename(k): v for k, v in entries.items()
               if names[os.path.basename(k)] == 1 and files[os.path.basename(k)] == 1}
    values = []
    for p in paths:
        v = by_key.get(_norm(os.path.realpath(p)))
        if v is None:
            v = by_name.get(os.path.basename(p))
        values.append(v)
    return values


def _assign_values(source, values, kind):
    """Sets `labels` + `class_names` (class labels) or `texts` (captions) on `source`."""
    if kind is None:
        is_int = all(is_integer(v) for v in values)
        kind = "label" if is_int else "text"
    if kind == "text":
        source.texts = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        return
    if all(is_integer(v) for v in values):
        ids = np.asarray(values, np.int64)
        if ids.size and ids.min() < 0:
            raise ValueError(f"class labels must be >= 0, got {ids.min()}.")
        source.labels = ids
        # Integer labels name themselves; the count (max + 1) sizes the model's class table.
        source.class_names = integer_class_names(ids)
        return
    names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    source.labels = np.asarray([lookup[str(v)] for v in values], np.int64)
    source.class_names = names


def integer_class_names(ids):
    """`["0", "1", ..., str(max)]` for integer class ids (classes absent from the data
    included, so that id `k` is always class `k`)."""
    top = int(np.max(ids)) if len(ids) else -1
    return [str(i) for i in range(top + 1)]


# ------------------------------------------------------------------- reporting
def report_skipped(skipped, total, description, stacklevel=3):
    """Issues ONE `SkippedMediaWarning` summarising `skipped` (path -> reason), if any."""
    if not skipped:
        return
    kinds = Counter(reason.split(":", 1)[0] for reason in skipped.values())
    first = list(skipped.items())[:3]
    lines = "\n".join(f"  {p}: {r}" for p, r in first)
    more = f"\n  ... and {len(skipped) - len(first)} more" if len(skipped) > len(first) else ""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    warnings.warn(
        f"keras_hpdm.data: skipped {len(skipped)} of {total} files in {description} "
        f"({counts}); the rest are used. The full list is in the data set's `skipped` "
        f"attribute.\n{lines}{more}",
        SkippedMediaWarning,
        stacklevel=stacklevel,
    )


def raise_if_empty(count, skipped, description):
    if count == 0:
        reasons = Counter(r.split(":", 1)[0] for r in skipped.values())
        detail = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())) or "no files"
        first = next(iter(skipped.items()), None)
        example = f" First: {first[0]}: {first[1]}" if first else ""
        raise ValueError(f"No usable media in {description} ({detail}).{example}")
