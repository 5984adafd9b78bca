"""Where a generated digit goes: its measured direction of motion, against a requested one."""

import numpy as np

from keras_hpdm.data.moving_mnist_captions import DIRECTIONS

STILL = -1  # `measured_directions` value of a video whose digit does not move (or is absent)


def digit_centroids(videos, threshold=64):
    """Per-frame centre of the bright pixels (row, column): float `(N, T, 2)`, NaN where a
    frame has none.

    Args:
        videos: uint8 `(N, T, H, W, C)` (channels are averaged).
        threshold: pixel value above which a pixel is part of the digit.
    """
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"`videos` must have shape (N, T, H, W, C), got {videos.shape}.")
    mask = videos.astype(np.float32).mean(-1) > threshold
    weight = mask.sum(axis=(2, 3)).astype(np.float64)
    rows = np.arange(videos.shape[2])[:, None]
    cols = np.arange(videos.shape[3])[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (mask * rows).sum(axis=(2, 3)) / weight
        c = (mask * cols).sum(axis=(2, 3)) / weight
    return np.stack([r, c], axis=-1)


def measured_directions(videos, min_travel=3.0, threshold=64):
    """The compass direction of each video's digit, from its first to its last frame.

    The displacement of the bright pixels' centre between the first and last frames is
    sorted into the nearest of the 8 `DIRECTIONS` (45-degree sectors); a displacement under
    `min_travel` pixels, or a first or last frame without a digit, gives `STILL` (-1).

    Returns:
        int64 `(N,)` indices into `DIRECTIONS`, or -1.

    Example:
    ```python
    videos, captions, facts = keras_hpdm.data.captioned_moving_mnist(8)
    keras_hpdm.metrics.measured_directions(videos)  # == facts["direction"]
    ```
    """
    centres = digit_centroids(videos, threshold)
    move = centres[:, -1] - centres[:, 0]  # (row, column)
    distance = np.hypot(move[:, 0], move[:, 1])
    # Clockwise from up: up is -row.
    angle = np.arctan2(move[:, 1], -move[:, 0])
    ok = np.isfinite(distance) & (distance >= min_travel)
    sector = np.round(np.where(ok, angle, 0.0) / (np.pi / 4)).astype(np.int64) % len(DIRECTIONS)
    return np.where(ok, sector, STILL)


def direction_accuracy(videos, directions, **kwargs):
    """Fraction of videos whose measured direction (`measured_directions`) is the requested
    one (indices into `DIRECTIONS`, or names)."""
    wanted = np.array([DIRECTIONS.index(d) if isinstance(d, str) else int(d)
                       for d in directions])
    measured = measured_directions(videos, **kwargs)
    if len(wanted) != len(measured):
        raise ValueError(f"`directions` has {len(wanted)} entries for {len(measured)} videos.")
    return float(np.mean(measured == wanted))
