"""`FileBuilder`: `pyramid_dataset` examples from media files (`sources.FileSource`).

Only the frames a clip needs are decoded, with PyAV in a `tf.py_function` (the one Python
call in the hot path), and shrunk to the size that covers the target inside FFmpeg's colour
conversion; a file that fails is skipped and counted against the failure budget.

`clips_per_file=k` cuts k clips from one decode of a file. Decoding runs from the keyframe
before a clip, so a clip costs the frames between them as well as its own (in a file with
one keyframe, all frames before it): k clips decoded together cost little more than the
last of them. Their examples are mixed with those of other files (stateless block
permutation over `MIX_FILES` files) so that a batch does not hold k clips of one video.
"""

import concurrent.futures
import os

import numpy as np
import tensorflow as tf

from keras_hpdm.data import decode, sources, transforms
from keras_hpdm.data.builder import Builder, raise_if_set
from keras_hpdm.data.clip_frames import clip_span
from keras_hpdm.data.exit_guard import CALLS
from keras_hpdm.data.skipped import skip_reason

# With `clips_per_file=k`, examples are permuted in blocks of `MIX_FILES * k` (those of
# `MIX_FILES` files): a batch of b examples then draws from about min(b, MIX_FILES) files.
MIX_FILES = 16


class FileBuilder(Builder):
    """Examples from media files, decoded clip by clip in a `tf.py_function` (or all at
    once with `cache=True`)."""

    def __init__(self, *args):
        super().__init__(*args)
        src, s = self.src, self.s
        total = len(src.paths) + len(src.skipped)
        ratios, keep = [], []
        for i, (path, kind) in enumerate(zip(src.paths, src.kinds, strict=True)):
            if kind == "image":
                ratios.append(1.0)
                keep.append(i)
                continue
            if s.fps is not None and not src.fps[i] > 0:
                self.skipped[path] = "unknown frame rate: cannot resample to `fps`"
                continue
            ratio = self.ratio(float(src.fps[i]))
            need = int(clip_span(s.clip_frames, ratio))
            if src.num_frames[i] < need:
                self.skipped[path] = (f"too short: {src.num_frames[i]} frames, the clip needs "
                                      f"{need}")
                continue
            ratios.append(ratio)
            keep.append(i)
        sources.subset(src, keep)
        self.ratios = np.asarray(ratios, np.float64)
        self.ids = self.local(np.arange(len(src.paths)))
        if self.cache:
            self._decode_all()
        self.num_examples = len(self.ids) * s.clips_per_file
        self.report(total, len(src.paths))
        self.check_nonempty(f"{len(src.paths)} usable files")

    def _decode_all(self):
        """`cache=True`: decode every file once now, resized to cover the target, uint8."""
        target_hw = self.s.target[1:]

        def load(i):
            path = self.src.paths[i]
            try:
                video = decode.decode_video(path, cover_size=target_hw)
                video = tf.cast(video, tf.float32)
                video = transforms.resize_cover(video, target_hw)
                return tf.cast(tf.clip_by_value(tf.floor(video + 0.5), 0, 255), tf.uint8).numpy()
            except Exception as e:
                self.skipped[path] = skip_reason(e, path)
                return None

        workers = min(8, 2 * (os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            videos = list(pool.map(load, self.ids.tolist()))
        keep = [k for k, v in enumerate(videos) if v is not None]
        self.ids = self.ids[keep]
        self.videos = [videos[k] for k in keep]

    def _decode_clip(self, path, indices):
        """(clip, ok, error): a failed clip is skipped (ok False) until the failure budget is
        spent; then `error` is set and the graph raises it."""
        with CALLS:
            path = path.numpy().decode()
            try:
                clip = decode.decode_video(path, indices=indices.numpy(),
                                           cover_size=self.s.target[1:])
            except Exception as e:  # Anything: a bad file must never end a long run.
                error = self.clip_failed(path, skip_reason(e, path))
                return np.zeros((len(indices), 1, 1, 3), np.uint8), False, error
            self.clip_decoded()
            return clip, True, ""

    def examples(self, keys):
        src, s = self.src, self.s
        labels = self.label_lookup(src.labels, src.texts)
        if self.cache:
            ids = self.ids
            return self.cached_examples(keys, self.videos, ids, self.ratios[ids],
                                        lambda p: labels(tf.gather(ids, p)))
        CALLS.register()
        paths = tf.constant(src.paths, tf.string)
        frames_t = tf.constant(src.num_frames, tf.int32)
        ratios = tf.constant(self.ratios, tf.float64)
        ids = tf.constant(self.ids, tf.int64)

        k, f = s.clips_per_file, s.target[0]

        def load(key, p):
            # Clip j of file i is example i * k + j: its randomness (clip start, crop, flip,
            # pyramid) is keyed by that index, so k=1 is the one-clip-per-file stream.
            i = ids[p]
            seed_ids = [i * k + j for j in range(k)]
            indices = [transforms.clip_indices(
                frames_t[i], ratios[i], s.clip_frames, f,
                transforms.element_seeds(self.base, key, n, num=4)[0], s.random_crop)
                for n in seed_ids]
            clips, ok, error = tf.py_function(self._decode_clip,
                                              [paths[i], tf.concat(indices, 0)],
                                              [tf.uint8, tf.bool, tf.string])
            clips = raise_if_set(clips, error)
            clips.set_shape((k * f, None, None, 3))
            ok.set_shape(())
            examples = [self.finish(clips[j * f:(j + 1) * f], indices[j], key, i, labels(i),
                                    ok, seed_index=seed_ids[j]) for j in range(k)]
            if k == 1:
                return examples[0]
            return tf.nest.map_structure(lambda *x: tf.stack(x), *examples)

        if k == 1:
            return self.map(self.index_stream(keys, len(self.ids)), load)
        return self._grouped_examples(keys, load)

    def _grouped_examples(self, keys, load):
        """`clips_per_file > 1`: each file's k examples, mixed across files per epoch.

        `start` (examples to skip) is met by skipping whole mixing blocks of files before
        anything is decoded, then the rest of a block after mixing.
        """
        k, count = self.s.clips_per_file, len(self.ids)
        files_per_block = MIX_FILES if self.shuffle else 1
        skip_blocks, skip_rest = divmod(self.start, files_per_block * k)
        load = tf.autograph.experimental.do_not_convert(load)

        def epoch(n, key):
            first = tf.where(n == 0, tf.cast(skip_blocks, tf.int64), 0)
            ds = tf.data.Dataset.from_tensor_slices(self.epoch_order(key, count))
            ds = ds.skip(first * files_per_block)
            ds = ds.map(lambda p: load(key, p), num_parallel_calls=self.parallel,
                        deterministic=self.deterministic).unbatch()
            if self.shuffle:
                ds = self.block_shuffle(ds, key, size=files_per_block * k, first_block=first)
            return ds

        return keys.enumerate().flat_map(epoch).skip(skip_rest)
