import itertools
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_hpdm.diffusion import (
    blend_window,
    edm_sigmas,
    sample,
    tile_grid,
    tile_starts,
    tiled_denoiser,
)
from keras_hpdm.testing import TestCase

CANVAS, TILE, CHANNELS = (4, 6, 10), (2, 4, 4), 2


def gaussian_denoiser(mu, s):
    """Ideal denoiser of N(mu, s^2) data, elementwise: the output at a pixel sees only it."""

    def denoise(x, sigma):
        var = ops.reshape(sigma, (-1,) + (1,) * (len(x.shape) - 1)) ** 2
        return mu + s**2 / (s**2 + var) * (x - mu)

    return denoise


def brute_force_average(values, starts, tile, canvas, window):
    """Per pixel: sum over the tiles covering it of window * value, over the sum of windows."""
    num = np.zeros(canvas)
    den = np.zeros(canvas)
    for p in itertools.product(*map(range, canvas)):
        for value, start in zip(values, starts, strict=True):
            local = tuple(q - s for q, s in zip(p, start, strict=True))
            if all(0 <= v < t for v, t in zip(local, tile, strict=True)):
                num[p] += window[local] * value
                den[p] += window[local]
    return num / den


class TileGeometryTest(TestCase):
    def test_tile_starts_examples(self):
        cases = [((16, 4, 0.5), [0, 2, 4, 6, 8, 10, 12]), ((10, 4, 0.0), [0, 4, 6]),
                 ((4, 4, 0.9), [0]), ((7, 3, 0.5), [0, 2, 4]), ((5, 1, 0.5), [0, 1, 2, 3, 4]),
                 ((9, 4, 0.75), [0, 1, 2, 3, 4, 5]), ((11, 5, 0.5), [0, 3, 6])]
        for args, expected in cases:
            got = tile_starts(*args)
            self.assertEqual(got.dtype, np.int64)
            np.testing.assert_array_equal(got, expected, err_msg=str(args))

    def test_tile_starts_cover_canvas(self):
        for canvas, tile, overlap in itertools.product(range(1, 20), range(1, 9),
                                                       (0.0, 0.25, 0.5, 0.6, 0.875, 0.99)):
            if tile > canvas:
                continue
            starts = tile_starts(canvas, tile, overlap)
            stride = max(1, math.floor(tile * (1 - overlap) + 0.5))
            covered = np.zeros(canvas, int)
            for s in starts:
                covered[s : s + tile] += 1
            self.assertTrue(np.all(covered >= 1), (canvas, tile, overlap))
            self.assertEqual((starts[0], starts[-1]), (0, canvas - tile))
            gaps = np.diff(starts)
            self.assertTrue(np.all(gaps[:-1] == stride) and np.all((gaps >= 1) & (gaps <= stride)))

    def test_tile_grid(self):
        grid = tile_grid((8, 64, 64), (4, 32, 32), (0.5, 0.5, 0.0))
        self.assertEqual(grid.shape, (3 * 3 * 2, 3))
        expected = list(itertools.product([0, 2, 4], [0, 16, 32], [0, 32]))
        np.testing.assert_array_equal(grid, expected)
        np.testing.assert_array_equal(tile_grid(CANVAS, TILE, 0.5),
                                      tile_grid(CANVAS, TILE, [0.5] * 3))
        np.testing.assert_array_equal(tile_grid((4, 4, 4), (4, 4, 4), 0.5), [[0, 0, 0]])

    def test_blend_window(self):
        np.testing.assert_array_equal(blend_window((2, 3, 4)), np.ones((2, 3, 4)))
        w = blend_window((1, 4, 6), "smooth")
        self.assertEqual((w.dtype, w.shape), (np.float32, (1, 4, 6)))
        self.assertTrue(np.all(w > 0))
        np.testing.assert_allclose(w[0, :, 0], [1 / 24, 3 / 24, 3 / 24, 1 / 24], rtol=1e-6)
        np.testing.assert_allclose(w, w[:, ::-1, ::-1])  # symmetric
        # Triangles at 50% overlap are a partition of unity away from the canvas ends.
        line = blend_window((1, 1, 8), "smooth")[0, 0]
        total = np.zeros(24)
        for s in tile_starts(24, 8, 0.5):
            total[s : s + 8] += line
        np.testing.assert_allclose(total[4:-4], 1.0, rtol=1e-6)

    def test_bad_args(self):
        cases = [
            (lambda: tile_starts(4, 5, 0.5), "tile"),
            (lambda: tile_starts(4, 2, 1.0), "overlap"),
            (lambda: tile_starts(4, 2, -0.1), "overlap"),
            (lambda: tile_starts(4.0, 2, 0.5), "canvas"),
            (lambda: tile_starts(4, 0, 0.5), "tile"),
            (lambda: tile_grid((4, 8), (2, 4, 4), 0.5), "canvas_size"),
            (lambda: tile_grid((4, 8, 8), (2, 9, 4), 0.5), r"tile_size\[1\]"),
            (lambda: tile_grid((4, 8, 8), (2, 4, 4), (0.5, 0.5)), "overlap"),
            (lambda: tile_grid((4, 8, 8), (2, 4, 4), (0.5, 1.5, 0)), r"overlap\[1\]"),
            (lambda: blend_window((2, 4, 4), "gaussian"), "kind"),
            (lambda: tiled_denoiser(lambda *a: a[0], CANVAS, TILE, tile_batch_size=0),
             "tile_batch_size"),
            (lambda: tiled_denoiser(lambda *a: a[0], CANVAS, TILE, blend="hann"), "kind"),
            (lambda: tiled_denoiser(lambda *a: a[0], CANVAS, (2, 8, 4)), "tile_size"),
        ]
        for fn, name in cases:
            with pytest.raises(ValueError, match=name):
                fn()
        with pytest.raises(TypeError, match="progress"):
            tiled_denoiser(lambda *a: a[0], CANVAS, TILE, progress=object())
        denoise = tiled_denoiser(lambda *a: a[0], CANVAS, TILE)
        with pytest.raises(ValueError, match="`x`"):
            denoise(np.zeros((1, 4, 6, 8, 2), "float32"), np.ones(1, "float32"))
        bad = tiled_denoiser(lambda t, *a: t[..., :1], CANVAS, TILE)
        with pytest.raises(ValueError, match="tile_denoise_fn"):
            bad(np.zeros((1,) + CANVAS + (2,), "float32"), np.ones(1, "float32"))


class TiledDenoiserTest(TestCase):
    def test_weighted_average_and_indices(self):
        # Each tile outputs a constant naming (sample, tile): the result must be the window-
        # weighted average of the covering tiles' constants, computed here pixel by pixel.
        def tile_fn(tiles, sigma, sample_index, tile_index):
            value = (10.0 * sample_index + tile_index + ops.convert_to_numpy(sigma)).astype(
                "float32")
            return ops.zeros_like(tiles) + value[:, None, None, None, None]

        starts = tile_grid(CANVAS, TILE, (0.5, 0.5, 0.25))
        x = np.zeros((2,) + CANVAS + (CHANNELS,), "float32")
        sigma = np.array([0.5, 0.25], "float32")
        for blend in ("uniform", "smooth"):
            out = ops.convert_to_numpy(tiled_denoiser(tile_fn, CANVAS, TILE, (0.5, 0.5, 0.25), 5,
                                                      blend)(x, sigma))
            for n in range(2):
                values = 10.0 * n + np.arange(len(starts)) + sigma[n]
                ref = brute_force_average(values, starts, TILE, CANVAS, blend_window(TILE, blend))
                for c in range(CHANNELS):
                    np.testing.assert_allclose(out[n, ..., c], ref, rtol=1e-6, err_msg=blend)

    def test_batches_padding_and_progress(self):
        calls = []

        def tile_fn(tiles, sigma, sample_index, tile_index):
            calls.append((tuple(ops.shape(tiles)), tuple(ops.shape(sigma)), sample_index.copy(),
                          tile_index.copy()))
            return tiles * 2.0

        class Counter(keras.utils.Progbar):
            def add(self, n, values=None):
                self.count = getattr(self, "count", 0) + n

        progress = Counter(None, verbose=0)
        num_tiles = len(tile_grid(CANVAS, TILE, 0.5))  # 3 * 2 * 4 = 24
        denoise = tiled_denoiser(tile_fn, CANVAS, TILE, 0.5, tile_batch_size=7, progress=progress)
        x = np.random.default_rng(0).standard_normal((2,) + CANVAS + (CHANNELS,)).astype("float32")
        out = denoise(x, np.ones(2, "float32"))
        self.assertAllClose(out, 2.0 * x, atol=1e-6)  # every pixel covered and normalised
        batches = math.ceil(2 * num_tiles / 7)
        self.assertEqual((len(calls), progress.count), (batches, batches))
        self.assertEqual({c[:2] for c in calls}, {((7,) + TILE + (CHANNELS,), (7,))})
        pairs = {(int(n), int(t)) for c in calls for n, t in zip(c[2], c[3], strict=True)}
        self.assertEqual(pairs, set(itertools.product(range(2), range(num_tiles))))
        # A single tile batch is never larger than the work.
        calls.clear()
        tiled_denoiser(tile_fn, CANVAS, TILE, 0.0, tile_batch_size=64)(x[:1], np.ones(1))
        self.assertEqual([c[0][0] for c in calls], [len(tile_grid(CANVAS, TILE, 0.0))])

    def test_a_given_grid_is_the_one_tile_index_counts(self):
        # A caller that prepared something per tile passes its grid: `tile_index` counts its
        # rows, in whatever order they come, and the output is the computed grid's.
        def tile_fn(tiles, sigma, sample_index, tile_index):
            seen.append(starts[tile_index])
            return tiles + ops.convert_to_tensor(
                starts[tile_index].sum(-1).astype("float32")[:, None, None, None, None])

        x = np.random.default_rng(1).standard_normal((1,) + CANVAS + (CHANNELS,)).astype(
            "float32")
        grid = tile_grid(CANVAS, TILE, 0.5)
        outs = []
        for starts in (grid, grid[::-1].copy()):
            seen = []
            outs.append(ops.convert_to_numpy(
                tiled_denoiser(tile_fn, CANVAS, TILE, tile_batch_size=5, starts=starts)(
                    x, np.ones(1, "float32"))))
            self.assertEqual(set(map(tuple, np.concatenate(seen).tolist())),
                             set(map(tuple, grid.tolist())))
        self.assertAllClose(outs[0], outs[1], atol=1e-5)
        expected = tiled_denoiser(lambda t, s, i, j: t + ops.convert_to_tensor(
            grid[j].sum(-1).astype("float32")[:, None, None, None, None]), CANVAS, TILE, 0.5)
        self.assertAllClose(outs[0], expected(x, np.ones(1, "float32")), atol=1e-6)
        for bad in ([[0, 0]], [[0, 0, 0.5]], [[0, 0, 7]], [[-1, 0, 0]], np.zeros((0, 3), int)):
            with pytest.raises(ValueError, match="`starts`"):
                tiled_denoiser(tile_fn, CANVAS, TILE, starts=np.asarray(bad))

    def test_tiled_sampling_matches_untiled(self):
        # A pixel-wise denoiser is blind to tiling: tiled sampling must equal plain sampling,
        # for any overlap, blend and tile batch size.
        denoise = gaussian_denoiser(0.3, 0.7)
        sigmas = edm_sigmas(6)
        x = (np.random.default_rng(1).standard_normal((2,) + CANVAS + (CHANNELS,)) * sigmas[0])
        x = x.astype("float32")
        for method, kwargs in [("heun", {}), ("stochastic", dict(S_churn=5.0))]:
            ref = ops.convert_to_numpy(sample(denoise, x, sigmas, method, seed=3, **kwargs))
            outs = {}
            for overlap, blend, batch in [(0.0, "uniform", 4), (0.5, "smooth", 7),
                                          ((0.5, 0.75, 0.3), "uniform", 7),
                                          ((0.5, 0.75, 0.3), "uniform", 48)]:
                tiled = tiled_denoiser(lambda t, s, i, j: denoise(t, s), CANVAS, TILE, overlap,
                                       batch, blend)
                out = ops.convert_to_numpy(sample(tiled, x, sigmas, method, seed=3, **kwargs))
                np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{method} {overlap} {blend} {batch}")
                outs.setdefault((overlap, blend), []).append(out)
            # The tile batch size only changes how the work is split, not the result.
            same = outs[((0.5, 0.75, 0.3), "uniform")]
            np.testing.assert_allclose(same[0], same[1], rtol=1e-6, atol=1e-6)
