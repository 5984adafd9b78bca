import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_hpdm.diffusion import StopSampling, derive_seed, edm_sigmas, per_sample_normal, sample
from keras_hpdm.testing import TestCase

CHURN = dict(S_churn=10.0, S_min=0.05, S_max=50.0, S_noise=1.0)
METHOD_KWARGS = [("euler", {}), ("heun", {}), ("stochastic", CHURN)]


def gaussian_denoiser(mu, s):
    """Ideal denoiser of N(mu, s^2) data: E[x0 | x0 + sigma n = x]."""

    def denoise(x, sigma):
        var = ops.reshape(sigma, (-1,) + (1,) * (len(x.shape) - 1)) ** 2
        return mu + s**2 / (s**2 + var) * (x - mu)

    return denoise


def mixture_denoiser(weights, means, stds):
    """Ideal denoiser of a 1-D Gaussian mixture: responsibilities times per-component means."""
    log_w = ops.log(ops.convert_to_tensor(weights, "float32"))
    means, stds = (ops.convert_to_tensor(v, "float32") for v in (means, stds))

    def denoise(x, sigma):
        var = ops.reshape(sigma, (-1,) + (1,) * (len(x.shape) - 1))[..., None] ** 2 + stds**2
        xk = x[..., None]
        logits = log_w - 0.5 * ops.log(var) - 0.5 * (xk - means) ** 2 / var
        resp = ops.softmax(logits, axis=-1)
        return ops.sum(resp * (means + stds**2 / var * (xk - means)), axis=-1)

    return denoise


def discrete_gaussian_sampler(mu, s, sigmas, method, S_churn=0.0, S_min=0.0, S_max=np.inf,
                               S_noise=1.0):
    """What the *discretised* sampler does to Gaussian data, from x ~ N(0, sigmas[0]^2).

    Every step is affine in y = x - mu (plus independent churn noise), so a scalar recursion
    (EDM Algorithm 2 by hand) gives the output's exact mean and std and, without churn, the
    deterministic gain: out = mu + gain * (x - mu).
    """
    def slope(t):  # (y - (D - mu)) / t = y * t / (s^2 + t^2)
        return t / (s**2 + t**2)

    n = len(sigmas) - 1
    mean, var, total_gain = -mu, float(sigmas[0]) ** 2, 1.0
    for t, t_next in zip(sigmas[:-1].astype(float), sigmas[1:].astype(float), strict=True):
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= t <= S_max else 0.0
        t_hat = t * (1 + gamma)
        var += (t_hat**2 - t**2) * S_noise**2
        if t_next == 0:
            gain = s**2 / (s**2 + t_hat**2)
        else:
            h = t_next - t_hat
            euler = 1 + h * slope(t_hat)
            heun = 1 + h / 2 * (slope(t_hat) + slope(t_next) * euler)
            gain = euler if method == "euler" else heun
        mean, var, total_gain = gain * mean, gain**2 * var, gain * total_gain
    return mu + mean, math.sqrt(var), total_gain


class EdmSigmasTest(TestCase):
    def test_matches_formula(self):
        cases = [(18, 0.002, 80.0, 7.0), (5, 0.01, 10.0, 3.0), (2, 0.1, 1.0, 1.0)]
        for n, smin, smax, rho in cases:
            got = edm_sigmas(n, smin, smax, rho)
            ref = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho)))
                   ** rho for i in range(n)] + [0.0]
            self.assertEqual(got.dtype, np.float32)
            self.assertEqual(got.shape, (n + 1,))
            np.testing.assert_allclose(got, ref, rtol=1e-6)
            self.assertEqual(got[-1], 0.0)
            self.assertTrue(np.all(np.diff(got) < 0))
            np.testing.assert_allclose(got[[0, -2]], [smax, smin], rtol=1e-6)
        np.testing.assert_array_equal(edm_sigmas(1, sigma_max=5.0), [5.0, 0.0])

    def test_bad_args(self):
        for kwargs, name in [({"num_steps": 0}, "num_steps"), ({"num_steps": 2.0}, "num_steps"),
                             ({"num_steps": 4, "sigma_min": 0.0}, "sigma_min"),
                             ({"num_steps": 4, "sigma_max": float("inf")}, "sigma_max"),
                             ({"num_steps": 4, "rho": -1.0}, "rho"),
                             ({"num_steps": 4, "sigma_min": 2.0, "sigma_max": 1.0}, "sigma_max")]:
            with pytest.raises(ValueError, match=name):
                edm_sigmas(**kwargs)


class SampleTest(TestCase):
    def test_gaussian_moments(self):
        # 4000 iid scalars (40 samples x 100 values: the ideal denoiser is elementwise).
        mu, s, n = 1.0, 0.5, 4000
        sigmas = edm_sigmas(32)
        x = np.random.default_rng(0).standard_normal((40, 100)).astype("float32") * sigmas[0]
        for method, kwargs in METHOD_KWARGS:
            out = ops.convert_to_numpy(
                sample(gaussian_denoiser(mu, s), x, sigmas, method, seed=0, **kwargs)
            )
            self.assertEqual(out.dtype, np.float32)
            mean, std, gain = discrete_gaussian_sampler(mu, s, sigmas, method, **kwargs)
            # The known discretisation error (plus the sigma_max start bias) is small...
            self.assertLess(abs(mean - mu), 0.01, method)
            self.assertLess(abs(std - s), 0.05, method)
            # ...and the sampled moments match the discretised sampler's within 5 std errors.
            self.assertLess(abs(out.mean() - mean), 5 * std / math.sqrt(n), method)
            self.assertLess(abs(out.std() - std), 5 * std / math.sqrt(2 * n), method)
            if method != "stochastic":  # deterministic: an exact affine map, sample by sample
                np.testing.assert_allclose(out, mu + gain * (x - mu), atol=1e-4, err_msg=method)

    def test_mixture_weights(self):
        weights, means, stds, n = (0.3, 0.7), (-1.0, 1.5), (0.3, 0.4), 4000
        sigmas = edm_sigmas(32)
        x = np.random.default_rng(1).standard_normal((40, 100)).astype("float32") * sigmas[0]
        denoise = mixture_denoiser(weights, means, stds)
        for method, kwargs in METHOD_KWARGS:
            out = ops.convert_to_numpy(sample(denoise, x, sigmas, method, seed=1, **kwargs))
            # Components are > 6 std apart: the midpoint-ish threshold assigns them exactly.
            frac = np.mean(out < 0.25)
            self.assertLess(abs(frac - 0.3), 5 * math.sqrt(0.3 * 0.7 / n), method)

    def test_last_step_is_denoised_and_euler_one_step(self):
        denoise = gaussian_denoiser(0.5, 2.0)
        x = np.random.default_rng(2).standard_normal((5, 6)).astype("float32") * 10.0
        for method in ("euler", "heun", "stochastic"):
            out = sample(denoise, x, [10.0, 0.0], method)
            self.assertAllClose(out, 0.5 + 4.0 / 104.0 * (x - 0.5), atol=1e-6)

    def test_denoiser_sees_float32_sigma_per_sample(self):
        seen = []

        def denoise(x, sigma):
            seen.append((tuple(ops.shape(sigma)), ops.convert_to_numpy(sigma).dtype,
                         ops.convert_to_numpy(x).dtype))
            return x * 0.5

        out = sample(denoise, np.ones((5, 6), "float16"), edm_sigmas(3), "heun")
        self.assertEqual(ops.convert_to_numpy(out).dtype, np.float32)
        self.assertEqual(len(seen), 5)  # 2 evaluations per step, 1 on the last (Euler) step
        self.assertEqual({(shape, str(a), str(b)) for shape, a, b in seen},
                         {((5,), "float32", "float32")})

    def test_callback_and_early_stop(self):
        denoise = gaussian_denoiser(0.0, 1.0)
        x = np.random.default_rng(3).standard_normal((5, 6)).astype("float32") * 80.0
        sigmas = edm_sigmas(6)
        steps = []
        full = sample(denoise, x, sigmas, "heun",
                      callback=lambda i, n, xi, d: steps.append((i, n, ops.convert_to_numpy(d))))
        self.assertEqual([s[:2] for s in steps], [(i, 6) for i in range(6)])
        self.assertAllClose(full, steps[-1][2])

        def stop_returning(i, n, xi, d):
            return i == 2

        def stop_raising(i, n, xi, d):
            if i == 2:
                raise StopSampling

        for callback in (stop_returning, stop_raising):
            early = sample(denoise, x, sigmas, "heun", callback=callback)
            self.assertAllClose(early, steps[2][2])
            self.assertGreater(np.abs(ops.convert_to_numpy(early) - steps[-1][2]).max(), 1e-3)

    def test_bad_args(self):
        denoise = gaussian_denoiser(0.0, 1.0)
        x = np.zeros((2, 3), "float32")
        sigmas = edm_sigmas(4)
        cases = [
            (dict(method="ddim"), ValueError, "method"),
            (dict(sigmas=[1.0]), ValueError, "sigmas"),
            (dict(sigmas=[1.0, 2.0, 0.0]), ValueError, "sigmas"),
            (dict(sigmas=[1.0, 0.0, 0.0]), ValueError, "sigmas"),
            (dict(sigmas=[1.0, -0.5]), ValueError, "sigmas"),
            (dict(S_churn=1.0), ValueError, "S_churn"),
            (dict(method="stochastic", S_churn=-1.0), ValueError, "S_churn"),
            (dict(method="stochastic", S_min=2.0, S_max=1.0), ValueError, "S_max"),
            (dict(method="stochastic", S_noise=float("nan")), ValueError, "S_noise"),
            (dict(seed=-1), ValueError, "seed"),
            (dict(sample_ids=[0]), ValueError, "sample_ids"),
            (dict(callback=3), TypeError, "callback"),
            (dict(denoise_fn=lambda x, s: x[:1]), ValueError, "denoise_fn"),
        ]
        for kwargs, error, name in cases:
            args = dict(denoise_fn=denoise, x=x, sigmas=sigmas) | kwargs
            with pytest.raises(error, match=name):
                sample(**args)


class SeedingTest(TestCase):
    def test_per_sample_normal(self):
        batch = ops.convert_to_numpy(per_sample_normal((6, 3, 4), seed=7))
        self.assertEqual(batch.shape, (6, 3, 4))
        np.testing.assert_array_equal(batch, ops.convert_to_numpy(per_sample_normal((6, 3, 4), 7)))
        alone = ops.convert_to_numpy(per_sample_normal((1, 3, 4), seed=7, sample_ids=[4]))
        np.testing.assert_array_equal(alone[0], batch[4])
        bigger = ops.convert_to_numpy(per_sample_normal((9, 3, 4), seed=7))
        np.testing.assert_array_equal(bigger[:6], batch)
        for other in (per_sample_normal((6, 3, 4), seed=8),
                      per_sample_normal((6, 3, 4), seed=7, stream=1)):
            self.assertGreater(np.abs(ops.convert_to_numpy(other) - batch).min(axis=(1, 2)).max(),
                               0.0)
            self.assertFalse(np.any(np.all(ops.convert_to_numpy(other) == batch, axis=(1, 2))))
        self.assertFalse(np.any(np.all(batch[1:] == batch[:1], axis=(1, 2))))
        # Rows are standard normal draws.
        big = ops.convert_to_numpy(per_sample_normal((8, 2000), seed=0)).ravel()
        self.assertLess(abs(big.mean()), 5 / math.sqrt(big.size))
        self.assertLess(abs(big.std() - 1.0), 5 / math.sqrt(2 * big.size))

    def test_derive_seed(self):
        self.assertEqual(derive_seed(3, 1, 2), derive_seed(3, 1, 2))
        seeds = {derive_seed(s, i, k) for s in range(3) for i in range(3) for k in range(3)}
        self.assertEqual(len(seeds), 27)
        self.assertTrue(all(0 <= v < 2**32 for v in seeds))

    def test_bad_args(self):
        for kwargs, name in [(dict(shape=(2, 3), seed=None), "seed"),
                             (dict(shape=(2, 3), seed=1, sample_ids=[0, 1, 2]), "sample_ids"),
                             (dict(shape=(2, 3), seed=1, sample_ids=[0, -1]), "sample_ids"),
                             (dict(shape=(2, 3), seed=1, stream=-1), "stream"),
                             (dict(shape=(), seed=1), "shape"),
                             (dict(shape=(2, 1.5), seed=1), "shape")]:
            with pytest.raises(ValueError, match=name):
                per_sample_normal(**kwargs)
        with pytest.raises(ValueError, match="keys"):
            derive_seed(1, -2)

    def test_stochastic_sampler_is_per_sample_reproducible(self):
        denoise = gaussian_denoiser(0.0, 1.0)
        sigmas = edm_sigmas(8)
        x = ops.convert_to_numpy(per_sample_normal((5, 6), seed=2)) * sigmas[0]

        def run(x, seed, ids=None):
            return ops.convert_to_numpy(
                sample(denoise, x, sigmas, "stochastic", seed=seed, sample_ids=ids, **CHURN)
            )

        batch = run(x, 11)
        np.testing.assert_array_equal(batch, run(x, 11))
        self.assertGreater(np.abs(batch - run(x, 12)).min(axis=1).max(), 1e-3)
        heun = ops.convert_to_numpy(sample(denoise, x, sigmas, "heun"))
        self.assertGreater(np.abs(batch - heun).max(), 1e-3)  # the churn noise is really added
        # Churn only between S_min and S_max: none in range -> exactly the Heun sampler.
        outside = sample(denoise, x, sigmas, "stochastic", seed=11,
                         **(CHURN | dict(S_min=90.0, S_max=100.0)))
        self.assertAllClose(outside, heun, atol=0, rtol=0)
        for i in (0, 3):
            self.assertAllClose(run(x[i : i + 1], 11, [i])[0], batch[i], atol=1e-5, rtol=1e-5)

    def test_seed_none_follows_global_seed(self):
        denoise = gaussian_denoiser(0.0, 1.0)
        x = np.ones((5, 6), "float32") * 80.0
        outs = []
        for _ in range(2):
            keras.utils.set_random_seed(5)
            outs.append(ops.convert_to_numpy(sample(denoise, x, edm_sigmas(4), "stochastic",
                                                    **CHURN)))
        np.testing.assert_array_equal(outs[0], outs[1])
