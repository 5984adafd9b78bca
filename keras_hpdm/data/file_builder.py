"""`FileBuilder`: `pyramid_dataset` examples from media files (`sources.FileSource`).

Only the frames a clip needs are decoded, with PyAV in a `tf.py_function` (the one Python
call in the hot path); a file that fails is skipped and counted against the failure budget.
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
        self.num_examples = len(self.ids)
        self.report(total, len(src.paths))
        self.check_nonempty(f"{len(src.paths)} usable files")

    def _decode_all(self):
        """`cache=True`: decode every file once now, resized to cover the target, uint8."""
        target_hw = self.s.target[1:]

        def load(i):
            path = self.src.paths[i]
            try:
                video = tf.cast(decode.decode_video(path), tf.float32)
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
                clip = decode.decode_video(path, indices=indices.numpy())
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

        def load(key, p):
            i = ids[p]
            seeds = transforms.element_seeds(self.base, key, i, num=4)
            indices = transforms.clip_indices(frames_t[i], ratios[i], s.clip_frames,
                                              s.target[0], seeds[0], s.random_crop)
            clip, ok, error = tf.py_function(self._decode_clip, [paths[i], indices],
                                             [tf.uint8, tf.bool, tf.string])
            clip = raise_if_set(clip, error)
            clip.set_shape((s.target[0], None, None, 3))
            ok.set_shape(())
            return self.finish(clip, indices, key, i, labels(i), ok)

        return self.map(self.index_stream(keys, len(self.ids)), load)
