"""Labels and captions: from sub-folder names, CSV/JSON label files, mappings or lists.

`file_labels` gives each media file its value (a class label or a caption; `None` when the
file has no entry), and `assign_values` stores the values on a source as integer class ids
with their `class_names`, or as captions.
"""

import csv
import json
import os
from collections import Counter

import numpy as np

from keras_hpdm.checks import is_integer

_PATH_KEYS = ("path", "file", "filename", "video", "image")
_LABEL_KEYS = ("label", "class", "category")
_TEXT_KEYS = ("caption", "text", "prompt")


def is_folder_labels(labels):
    """`labels` asks for one class per sub-folder (`True` for files, or `"folders"`)."""
    return labels is True or labels == "folders"


def file_labels(paths, labels, root):
    """The value of each of `paths` (`None`: no entry), relative paths resolved from `root`."""
    if is_folder_labels(labels):
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


def assign_values(source, values, kind):
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
