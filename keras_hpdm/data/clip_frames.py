"""Which source frames a clip takes: clip frame `k` lies `round(k * ratio)` frames after the
clip's first frame, `ratio` being the frame stride or the source fps over the target fps.

The one definition that decoding (`decode.decode_video`), the pipeline's length checks (the
builders) and its in-graph frame sampling (`transforms.clip_indices`) share, so that a
clip accepted as long enough is always the clip that gets decoded.
"""

import numpy as np


def clip_offsets(positions, ratio, floor=np.floor):
    """Offsets (from the clip's first frame) of the clip frames at `positions`, as floats.

    Rounds half up. Pass `floor=tf.floor` (and float64 tensors) to build it in a `tf.data`
    graph; the default evaluates it with numpy.
    """
    return floor(positions * ratio + 0.5)


def clip_span(clip_frames, ratio):
    """Source frames a clip of `clip_frames` frames spans: the last frame's offset + 1.

    `ratio` may be a float or an array of them (one per source); floats come back (exact
    integers below 2**53).
    """
    return clip_offsets(clip_frames - 1, np.asarray(ratio, np.float64)) + 1
