"""Does a class-conditional Moving MNIST model draw the digit it is asked for?"""

import numpy as np

from keras_hpdm.metrics.digit_reader import DigitReader, centre_digits

# A frame shows a digit when its brightest 28x28 window holds a digit's worth of ink (sum of
# pixels / 255): at least half the ink of the faintest 5% of real MNIST digits (53.6), at most
# 1.5x that of the heaviest 1% (186; more is a blob or noise) ...
VISIBLE_INK = (25.0, 280.0)
# ... most of the frame's ink is in that window (one digit on a dark background) ...
VISIBLE_CONCENTRATION = 0.5
# ... and the reader is at least this confident that it is some digit.
VISIBLE_CONFIDENCE = 0.5


def _check_videos(videos):
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError("`videos` must be (N, frames, height, width, 1 or 3) in [0, 255], got "
                         f"shape {videos.shape}.")
    return videos.astype(np.float32).mean(-1)


def read_videos(videos, reader=None):
    """The reader's view of every frame.

    Args:
        videos: `(N, T, H, W, C)` in [0, 255] (uint8 as `generate` returns), one digit each.
        reader: a `DigitReader` (default: the packaged one).

    Returns:
        dict of `probs` `(N, T, 10)`, `ink` `(N, T)` (the digit window's) and `visible`
        `(N, T)` bool (see `VISIBLE_*`).
    """
    gray = _check_videos(videos)
    n, t = gray.shape[:2]
    crops, ink = centre_digits(gray.reshape((n * t,) + gray.shape[2:]))
    probs = (reader or DigitReader()).predict(crops).reshape(n, t, 10)
    ink = ink.reshape(n, t)
    frame_ink = gray.sum((2, 3)) / 255.0
    visible = ((ink >= VISIBLE_INK[0]) & (ink <= VISIBLE_INK[1])
               & (ink >= VISIBLE_CONCENTRATION * frame_ink)
               & (probs.max(-1) >= VISIBLE_CONFIDENCE))
    return {"probs": probs, "ink": ink, "visible": visible}


def digit_video_scores(videos, labels, reader=None):
    """Class accuracy and persistence of one-digit videos.

    A video's digit is the reader's vote over its frames that show a digit (the class with
    the largest summed log-probability; all frames when none shows one).

    Args:
        videos: `(N, T, H, W, C)` in [0, 255].
        labels: `(N,)` the requested digits.
        reader: a `DigitReader` (default: the packaged one).

    Returns:
        dict: `class_accuracy` (videos read as their requested digit), `frame_accuracy`
        (frames showing a digit read as the requested one), `persistence` (frames showing a
        digit), `per_class_accuracy` (10 entries, NaN for absent classes), `num_videos`,
        `predicted` `(N,)`.

    Example:
    ```python
    videos = model.generate([0, 1, 2], seed=0)
    keras_hpdm.metrics.digit_video_scores(videos, [0, 1, 2])["class_accuracy"]
    ```
    """
    labels = np.asarray(labels).reshape(-1)
    read = read_videos(videos, reader)
    probs, visible = read["probs"], read["visible"]
    if len(labels) != len(probs) or np.any((labels < 0) | (labels > 9)):
        raise ValueError(f"`labels` must be {len(probs)} digits in [0, 9], got {labels!r}.")
    log_probs = np.log(np.maximum(probs, 1e-12))
    weight = np.where(visible.any(1, keepdims=True), visible, True)[..., None]
    predicted = (log_probs * weight).sum(1).argmax(-1)
    correct = predicted == labels
    frame_correct = visible & (probs.argmax(-1) == labels[:, None])
    per_class = [float(correct[labels == c].mean()) if np.any(labels == c) else float("nan")
                 for c in range(10)]
    return {
        "class_accuracy": float(correct.mean()),
        "frame_accuracy": float(frame_correct.mean()),
        "persistence": float(visible.mean()),
        "per_class_accuracy": per_class,
        "num_videos": int(len(labels)),
        "predicted": predicted,
    }
