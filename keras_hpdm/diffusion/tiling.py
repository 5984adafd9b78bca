"""Tiled denoising of canvases larger than the model's patch (paper §4.4, MultiDiffusion).

A canvas `(N, F, H, W, C)` is covered by overlapping tiles of the patch size. At every sampler
step each tile is denoised on its own and the tiles' outputs are averaged per pixel with window
weights. All tiles share the step's sigma, so averaging denoised outputs is the same as
averaging scores. `sample(tiled_denoiser(...), x, sigmas)` is tiled generation.
"""

import itertools
import math
import numbers

import numpy as np
from keras import ops

# BLENDS: the tile weights ("uniform", "smooth") of `blend_window`.
from keras_hpdm.checks import BLENDS, check_int, check_int_tuple, check_number

AXES = ("frames", "height", "width")


def _check_triple(name, value):
    return check_int_tuple(name, value, 3, labels=AXES)


def _starts(canvas, tile, overlap, names):
    canvas = check_int(names[0], canvas, low=1)
    tile = check_int(names[1], tile, low=1)
    overlap = check_number(names[2], overlap, low=0.0, high=1.0, high_open=True)
    if tile > canvas:
        raise ValueError(f"`{names[1]}` ({tile}) must not exceed `{names[0]}` ({canvas}).")
    stride = max(1, math.floor(tile * (1.0 - overlap) + 0.5))  # rounded half up
    starts = list(range(0, canvas - tile + 1, stride))
    if starts[-1] != canvas - tile:
        starts.append(canvas - tile)  # the last tile sits flush with the end
    return np.asarray(starts, dtype=np.int64)


def tile_starts(canvas, tile, overlap):
    """Start offsets of tiles covering `[0, canvas)` on one axis.

    Tiles advance by `stride = max(1, round(tile * (1 - overlap)))` (rounded half up), and a
    last tile is added flush with the end when the stride does not land there.

    Args:
        canvas: canvas length (positive integer).
        tile: tile length, at most `canvas`.
        overlap: fraction of a tile shared with its neighbour, in `[0, 1)`.

    Returns:
        int64 numpy array of increasing start offsets, first 0, last `canvas - tile`.

    Example:
    ```python
    tile_starts(16, 4, 0.5)  # [0, 2, 4, 6, 8, 10, 12]: 2 * 16 / 4 - 1 tiles, as in the paper
    ```
    """
    return _starts(canvas, tile, overlap, ("canvas", "tile", "overlap"))


def tile_grid(canvas_size, tile_size, overlap):
    """Start corners of all tiles covering a `(F, H, W)` canvas.

    Args:
        canvas_size: `(F, H, W)` canvas size.
        tile_size: `(f, h, w)` tile size, at most `canvas_size` per axis.
        overlap: a number in `[0, 1)` or one per axis, e.g. `(0.5, 0.5, 0.0)`.

    Returns:
        int64 numpy array `(num_tiles, 3)` of `(f, h, w)` starts, in C order (width fastest).

    Example:
    ```python
    tile_grid((8, 64, 64), (4, 32, 32), (0.5, 0.5, 0.0)).shape  # (3 * 3 * 2, 3)
    ```

    References:
        - [Skorokhodov et al., Hierarchical Patch Diffusion Models for High-Resolution
          Video Generation, CVPR 2024](https://arxiv.org/abs/2406.07792), §4.4 and Table 4.
    """
    canvas_size = _check_triple("canvas_size", canvas_size)
    tile_size = _check_triple("tile_size", tile_size)
    if isinstance(overlap, numbers.Real) and not isinstance(overlap, bool):
        overlap = (overlap,) * 3
    if isinstance(overlap, (str, bytes)) or not hasattr(overlap, "__len__") or len(overlap) != 3:
        raise ValueError(f"`overlap` must be a number or 3 numbers in [0, 1), got {overlap!r}.")
    per_axis = [
        _starts(c, t, o, (f"canvas_size[{i}]", f"tile_size[{i}]", f"overlap[{i}]"))
        for i, (c, t, o) in enumerate(zip(canvas_size, tile_size, overlap, strict=True))
    ]
    return np.asarray(list(itertools.product(*per_axis)), dtype=np.int64).reshape(-1, 3)


def _check_starts(starts, canvas_shape, tile_size):
    """`starts` as an int64 `(num_tiles, 3)` array of tiles inside the canvas."""
    arr = np.asarray(starts)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 3 or not np.issubdtype(
            arr.dtype, np.integer):
        raise ValueError(f"`starts` must be an int array (num_tiles, 3), got {starts!r}.")
    high = np.asarray(canvas_shape) - tile_size
    if np.any(arr < 0) or np.any(arr > high):
        raise ValueError(f"`starts` must lie in [0, {high.tolist()}] (canvas_shape - "
                         f"tile_size), got {arr.tolist()}.")
    return arr.astype(np.int64)


def blend_window(tile_size, kind="uniform"):
    """Per-pixel weights of a tile's output in the overlap average.

    `"uniform"` weighs every pixel 1. `"smooth"` is a separable triangle on pixel centres,
    `1 - |2 (k + 0.5) / n - 1|` per axis (at least `1/n`, so every pixel counts): tiles fade out
    towards their borders, which hides seams. At 50% overlap the triangles sum to a constant.

    Args:
        tile_size: `(f, h, w)` tile size.
        kind: `"uniform"` or `"smooth"`.

    Returns:
        float32 numpy array `(f, h, w)`, strictly positive.

    Example:
    ```python
    blend_window((1, 4, 4), "smooth")[0, 0]  # [0.0625, 0.1875, 0.1875, 0.0625]
    ```
    """
    tile_size = _check_triple("tile_size", tile_size)
    if kind not in BLENDS:
        raise ValueError(f"`kind` must be one of {BLENDS}, got {kind!r}.")
    if kind == "uniform":
        return np.ones(tile_size, dtype=np.float32)
    f, h, w = (1.0 - np.abs(2.0 * (np.arange(n) + 0.5) / n - 1.0) for n in tile_size)
    return np.einsum("i,j,k->ijk", f, h, w).astype(np.float32)


def tiled_denoiser(
    tile_denoise_fn,
    canvas_shape,
    tile_size,
    overlap=0.5,
    tile_batch_size=16,
    blend="uniform",
    progress=None,
    starts=None,
):
    """Turns a tile denoiser into a denoiser of a whole `(N, F, H, W, C)` canvas.

    Each call crops all `(sample, tile)` pairs, denoises them `tile_batch_size` at a time and
    returns the per-pixel weighted average of the tiles' outputs. Crops and sums live on the
    host (numpy): the device only ever holds one batch of tiles, which bounds its memory
    however large the canvas. The last batch is padded by repeating its last pair, so every
    call of `tile_denoise_fn` sees the same shapes (one XLA compilation); padded outputs are
    dropped.

    Args:
        tile_denoise_fn: `tile_denoise_fn(tiles, sigma, sample_index, tile_index)` with `tiles`
            a float32 tensor `(n, f, h, w, C)`, `sigma` a float32 tensor `(n,)` and the two
            indices int numpy arrays `(n,)`: the sample in the batch, and the tile as a row
            of `starts`, e.g. to look up context cached per tile; returns the denoised
            tiles `(n, f, h, w, C)`.
        canvas_shape: `(F, H, W)` of the canvas.
        tile_size: `(f, h, w)` of a tile (the model's patch size).
        overlap: a number in `[0, 1)` or one per axis (see `tile_grid`); unused when
            `starts` is given.
        tile_batch_size: how many tiles go through `tile_denoise_fn` at once.
        blend: `"uniform"` or `"smooth"` window weights (see `blend_window`).
        progress: `None` or a `keras.utils.Progbar` (anything with `.add(n)`), advanced by 1
            per tile batch: `ceil(N * num_tiles / tile_batch_size)` per call.
        starts: int array `(num_tiles, 3)` of tile corners, the rows `tile_index` counts;
            None computes `tile_grid(canvas_shape, tile_size, overlap)`. A caller that
            prepares something per tile passes the grid it prepared it for.

    Returns:
        `denoise_fn(x, sigma)`: `x` `(N, F, H, W, C)`, `sigma` `(N,)`; returns a float32 tensor
        of the shape of `x`. Pass it to `keras_hpdm.diffusion.sample`.

    Example:
    ```python
    denoise = tiled_denoiser(lambda t, s, i, j: model_denoise(t, s), (16, 128, 128),
                             (8, 32, 32), overlap=(0.5, 0.5, 0.0), tile_batch_size=32)
    video = sample(denoise, 80.0 * per_sample_normal((2, 16, 128, 128, 3), seed=0),
                   edm_sigmas(32))
    ```

    References:
        - [Skorokhodov et al., Hierarchical Patch Diffusion Models for High-Resolution
          Video Generation, CVPR 2024](https://arxiv.org/abs/2406.07792), §4.4.
        - [Bar-Tal et al., MultiDiffusion: Fusing Diffusion Paths for Controlled Image
          Generation, ICML 2023](https://arxiv.org/abs/2302.08113)
    """
    if not callable(tile_denoise_fn):
        raise TypeError(f"`tile_denoise_fn` must be callable, got {tile_denoise_fn!r}.")
    canvas_shape = _check_triple("canvas_shape", canvas_shape)
    tile_size = _check_triple("tile_size", tile_size)
    if starts is None:
        starts = tile_grid(canvas_shape, tile_size, overlap)
    else:
        starts = _check_starts(starts, canvas_shape, tile_size)
    tile_batch_size = check_int("tile_batch_size", tile_batch_size, low=1)
    if progress is not None and not callable(getattr(progress, "add", None)):
        raise TypeError(f"`progress` must be a keras.utils.Progbar or None, got {progress!r}.")
    window = blend_window(tile_size, blend)[..., None]
    boxes = [
        tuple(slice(s, s + t) for s, t in zip(start, tile_size, strict=True)) for start in starts
    ]
    # The normaliser depends only on the geometry: computed once, not per step.
    total = np.zeros(canvas_shape + (1,), dtype=np.float64)
    for box in boxes:
        total[box] += window
    inv_total = (1.0 / total).astype(np.float32)
    num_tiles = len(boxes)

    def denoise_fn(x, sigma):
        x = np.asarray(ops.convert_to_numpy(x), dtype=np.float32)
        if x.ndim != 5 or x.shape[1:4] != canvas_shape:
            raise ValueError(
                f"`x` must have shape (N, {', '.join(map(str, canvas_shape))}, C), "
                f"got {x.shape}."
            )
        num_samples = x.shape[0]
        sigma = np.asarray(ops.convert_to_numpy(sigma), dtype=np.float32)
        if sigma.size not in (1, num_samples):
            raise ValueError(f"`sigma` must have {num_samples} values, got shape {sigma.shape}.")
        sigma = np.broadcast_to(sigma.reshape(-1), (num_samples,))
        sample_index = np.repeat(np.arange(num_samples), num_tiles)
        tile_index = np.tile(np.arange(num_tiles), num_samples)
        batch = min(tile_batch_size, len(sample_index))
        out_sum = np.zeros_like(x)
        for begin in range(0, len(sample_index), batch):
            si, ti = sample_index[begin : begin + batch], tile_index[begin : begin + batch]
            real = len(si)
            si = np.pad(si, (0, batch - real), mode="edge")
            ti = np.pad(ti, (0, batch - real), mode="edge")
            tiles = np.stack([x[(n, *boxes[t])] for n, t in zip(si, ti, strict=True)])
            out = tile_denoise_fn(
                ops.convert_to_tensor(tiles), ops.convert_to_tensor(sigma[si]), si, ti
            )
            out = np.asarray(ops.convert_to_numpy(out), dtype=np.float32)
            if out.shape != tiles.shape:
                raise ValueError(
                    f"`tile_denoise_fn` must return the shape of its tiles {tiles.shape}, "
                    f"got {out.shape}."
                )
            for j in range(real):
                out_sum[(si[j], *boxes[ti[j]])] += out[j] * window
            if progress is not None:
                progress.add(1)
        out_sum *= inv_total
        return ops.convert_to_tensor(out_sum, dtype="float32")

    return denoise_fn
