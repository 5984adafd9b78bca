"""Sharded TFRecords: the format `prepare` writes (`shard_writer.py`) and reading it back.

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

import dataclasses
import json
import os
import re

from keras_hpdm.data.labels import integer_class_names

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

    label = {"label": tf.io.FixedLenFeature([], tf.int64)}
    labels = tf.data.TFRecordDataset(files).ignore_errors().map(
        lambda r: tf.io.parse_single_example(r, label)["label"])
    top = int(labels.reduce(tf.constant(-1, tf.int64), tf.maximum))
    return integer_class_names([top] if top >= 0 else [])


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
