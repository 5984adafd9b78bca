"""`ShardBuilder`: `pyramid_dataset` examples from shards written by `prepare`
(`shards.ShardSource`), read and decoded in the graph.

A record that fails its CRC ends the reading of its file, which is reported once while
iterating; a pass that reads no record at all raises instead of repeating empty passes.
"""

import os

import numpy as np
import tensorflow as tf

from keras_hpdm.data import shards, transforms
from keras_hpdm.data.builder import Builder, raise_if_set
from keras_hpdm.data.clip_frames import clip_span
from keras_hpdm.data.exit_guard import CALLS


def _then(records, at_end):
    """Serialized `records`, then `at_end(number of records)` (a bool tensor, run for its
    effects: reports, errors) once they are exhausted.

    An empty string marks the end (records are never empty); `scan` numbers the elements, so
    the count is known at the marker, which is then dropped.
    """
    marked = records.concatenate(tf.data.Dataset.from_tensors(tf.constant(b"")))
    numbered = marked.scan(tf.constant(0, tf.int64), lambda n, r: (n + 1, (r, n)))

    def is_record(record, count):
        end = tf.equal(tf.strings.length(record), 0)
        done = tf.cond(end, lambda: tf.reshape(at_end(count), []), lambda: tf.constant(False))
        return tf.logical_not(end | done)

    return numbered.filter(is_record).map(lambda record, count: record)


class ShardBuilder(Builder):
    """Examples from prepared TFRecord shards: shard files interleaved in a random order,
    records block-shuffled, only the frames a clip needs decoded."""

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
        needs = clip_span(s.clip_frames, self.ratios).astype(np.int64)
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
        records = tf.data.TFRecordDataset(file, buffer_size=1 << 20).ignore_errors()

        def at_end(count):
            return tf.cond(count < expected,
                           lambda: tf.py_function(self._damaged, [file, count, expected],
                                                  tf.bool),
                           lambda: tf.constant(False))

        return _then(records, at_end)

    def _damaged(self, file, count, expected):
        with CALLS:
            file = file.numpy().decode()
            if file not in self.skipped:  # Truncated files were reported when built.
                self.failed(file, f"damaged shard: {int(count)} of {int(expected)} records "
                                  "readable; the rest of the file is skipped")
        return False

    def _nonempty_pass(self, records):
        """`records`, raising at the end of a pass that read none: damage found after the
        data set was built would otherwise make every later pass empty, forever."""
        def at_end(count):
            return tf.cond(tf.equal(count, 0),
                           lambda: raise_if_set(tf.constant(False), tf.reshape(
                               tf.py_function(self._empty_pass, [], tf.string), [])),
                           lambda: tf.constant(False))

        return _then(records, at_end)

    def _empty_pass(self):
        with CALLS:
            damaged = [f"{p}: {r}" for p, r in self.skipped.items() if "shard" in r]
            more = f"; and {len(damaged) - 5} more" if len(damaged) > 5 else ""
            return (f"keras_hpdm.data: a pass over the shards in {self.src.description} read "
                    "no usable record, so the data set stops instead of retrying forever. "
                    f"Prepare them again; damaged: {'; '.join(damaged[:5]) or 'none found'}"
                    f"{more}")

    def _decode_all(self):
        """`cache=True`: read and decode this shard's records once now."""
        CALLS.register()
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
        if not self.src.with_labels:
            return {}
        if self.src.label_kind == "label":
            return {"label": tf.cast(record["label"], tf.int32)}
        return {"text": record["text"]}

    def examples(self, keys):
        src, s = self.src, self.s
        if self.cache:
            kind = src.label_kind if src.with_labels else None
            labels = self.label_lookup(self.cached_labels if kind == "label" else None,
                                       self.cached_texts if kind == "text" else None)
            return self.cached_examples(keys, self.videos, self.ids, self.ratios[self.ids],
                                        labels)
        CALLS.register()
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
