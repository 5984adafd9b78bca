"""`ArrayBuilder`: `pyramid_dataset` examples from a numpy array of videos
(`sources.ArraySource`), held in the graph whole."""

import numpy as np
import tensorflow as tf

from keras_hpdm.data.builder import Builder
from keras_hpdm.data.clip_frames import clip_span


class ArrayBuilder(Builder):
    """Examples from in-memory videos, all of the same length."""

    def __init__(self, *args):
        super().__init__(*args)
        src, s = self.src, self.s
        if s.fps is not None:
            raise ValueError("`fps` needs the source frame rate, which arrays do not have; "
                             "use `frame_stride`.")
        length = src.videos.shape[1]
        need = int(clip_span(s.clip_frames, s.frame_stride))
        if 1 < length < need:
            raise ValueError(f"Array `source` has {length} frames per video but the clip needs "
                             f"{need} (frames={s.clip_frames}, frame_stride={s.frame_stride}).")
        self.ids = self.local(np.arange(len(src.videos)))
        self.num_examples = len(self.ids)
        self.check_nonempty(f"{len(src.videos)} videos")

    def examples(self, keys):
        src = self.src
        videos = tf.convert_to_tensor(src.videos)
        labels = self.label_lookup(src.labels, src.texts)
        ratio = tf.constant(float(self.s.frame_stride), tf.float64)
        ids = tf.constant(self.ids, tf.int64)

        def load(key, p):
            i = ids[p]
            clip, indices = self.clip_of(videos[i], ratio, key, i)
            return self.finish(clip, indices, key, i, labels(i))

        return self.map(self.index_stream(keys, len(self.ids)), load)
