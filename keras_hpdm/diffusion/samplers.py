"""EDM samplers as pure functions over an explicit sigma schedule.

The sampler sees only a denoiser `D(x, sigma)`, so the same code runs a single patch, a tiled
canvas (`keras_hpdm.diffusion.tiled_denoiser`) or a toy analytic model.
"""

import math

import numpy as np
from keras import ops

# SAMPLERS: the sampler names ("euler", "heun", "stochastic"), the `method`s of `sample`;
# defined in `keras_hpdm.checks`, without Keras, for the command line's parser.
from keras_hpdm.checks import SAMPLERS, check_number, check_seed
from keras_hpdm.diffusion.seeding import check_sample_ids, per_sample_normal


class StopSampling(Exception):  # noqa: N818 (named like StopIteration)
    """Raise from a `sample` callback to stop early; `sample` returns the current denoised
    estimate.

    Example:
    ```python
    def stop_after_3(step, num_steps, x, denoised):
        if step == 2:
            raise keras_hpdm.diffusion.StopSampling
    ```
    """


def _check_sigmas(sigmas):
    if ops.is_tensor(sigmas):
        sigmas = ops.convert_to_numpy(sigmas)
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.size < 2 or not np.all(np.isfinite(s)):
        raise ValueError(
            f"`sigmas` must be a 1-D array of at least 2 finite noise levels, got {sigmas!r}."
        )
    if np.any(s[:-1] <= 0) or s[-1] < 0 or np.any(np.diff(s) > 0):
        raise ValueError(
            "`sigmas` must be non-increasing, positive except for a final 0 "
            f"(e.g. `edm_sigmas(...)`), got {s.tolist()}."
        )
    return s


def _denoise(denoise_fn, x, sigma, num_samples):
    # The denoiser sees one sigma per sample: the tiled and batched callers rely on it.
    out = denoise_fn(x, ops.full((num_samples,), sigma, dtype="float32"))
    if tuple(ops.shape(out)) != tuple(ops.shape(x)):
        raise ValueError(
            f"`denoise_fn` must return the shape of its input {tuple(ops.shape(x))}, "
            f"got {tuple(ops.shape(out))}."
        )
    return ops.cast(out, "float32")


def sample(
    denoise_fn,
    x,
    sigmas,
    method="euler",
    seed=None,
    sample_ids=None,
    S_churn=0.0,
    S_min=0.0,
    S_max=float("inf"),
    S_noise=1.0,
    callback=None,
):
    """Integrates the EDM probability-flow ODE (or SDE) from `sigmas[0]` to `sigmas[-1]`.

    EDM Algorithm 2: at each step `t_i -> t_(i+1)`, `method="stochastic"` first raises the
    noise to `t_hat = t_i * (1 + gamma)`, `gamma = min(S_churn / num_steps, sqrt(2) - 1)` when
    `S_min <= t_i <= S_max`, by adding fresh noise of std `S_noise * sqrt(t_hat**2 - t_i**2)`,
    then takes an Euler step with a Heun (2nd order) correction. `"heun"` is the deterministic
    2nd order sampler and `"euler"` the 1st order one. A step to sigma 0 is always Euler, which
    lands exactly on the denoised estimate. The state is kept in float32. The loop over steps
    runs in Python (one `denoise_fn` call per evaluation), so `denoise_fn` may be jit-compiled.

    Args:
        denoise_fn: `denoise_fn(x, sigma) -> denoised`, with `sigma` a float32 tensor of shape
            `(N,)`; returns the same shape as `x`.
        x: the starting sample at noise level `sigmas[0]`, shape `(N, ...)`, e.g.
            `sigmas[0] * per_sample_normal(shape, seed)`.
        sigmas: decreasing noise levels, positive except a final 0 (`edm_sigmas(...)`).
        method: `"euler"`, `"heun"` or `"stochastic"`.
        seed: non-negative integer fixing the churn noise (`"stochastic"` only); `None` draws
            one from numpy's global generator (set by `keras.utils.set_random_seed`).
        sample_ids: `N` non-negative integers naming the samples (default `arange(N)`). Churn
            noise of sample `i` depends only on `(seed, sample_ids[i], step)`, so a sample
            generated alone with `sample_ids=[i]` equals sample `i` of a batch.
        S_churn, S_min, S_max, S_noise: EDM's stochasticity parameters (`"stochastic"` only;
            `S_churn=0` makes it equal to `"heun"`).
        callback: `callback(step, num_steps, x, denoised)`, called after every step with the
            new state and the latest denoised estimate. Returning True or raising
            `StopSampling` stops sampling and returns that denoised estimate.

    Returns:
        float32 tensor, the sample at `sigmas[-1]` (or the denoised estimate on early stop).

    Example:
    ```python
    sigmas = keras_hpdm.diffusion.edm_sigmas(32)
    x = sigmas[0] * keras_hpdm.diffusion.per_sample_normal((4, 8, 32, 32, 3), seed=0)
    video = keras_hpdm.diffusion.sample(denoiser, x, sigmas, method="stochastic", seed=0,
                                        S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    ```

    References:
        - [Karras et al., Elucidating the Design Space of Diffusion-Based Generative Models,
          NeurIPS 2022](https://arxiv.org/abs/2206.00364), Algorithm 2.
    """
    if not callable(denoise_fn):
        raise TypeError(f"`denoise_fn` must be callable, got {denoise_fn!r}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable or None, got {callback!r}.")
    if method not in SAMPLERS:
        raise ValueError(f"`method` must be one of {SAMPLERS}, got {method!r}.")
    sigmas = _check_sigmas(sigmas)
    S_churn = check_number("S_churn", S_churn, low=0.0)
    S_min = check_number("S_min", S_min, low=0.0)
    S_max = check_number("S_max", S_max, low=S_min, allow_inf=True)
    S_noise = check_number("S_noise", S_noise, low=0.0)
    if S_churn > 0 and method != "stochastic":
        raise ValueError(f"`S_churn` > 0 needs method='stochastic', got method={method!r}.")
    seed = check_seed(seed)
    if seed is None and S_churn > 0:
        seed = int(np.random.randint(0, 2**31 - 1))
    x = ops.cast(ops.convert_to_tensor(x), "float32")
    num_samples = ops.shape(x)[0]
    ids = check_sample_ids(sample_ids, num_samples)

    num_steps = len(sigmas) - 1
    gamma_max = min(S_churn / num_steps, math.sqrt(2.0) - 1.0)
    denoised = x
    for i in range(num_steps):
        t, t_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = gamma_max if S_min <= t <= S_max else 0.0
        t_hat = t * (1.0 + gamma)
        if gamma > 0:
            noise = per_sample_normal(ops.shape(x), seed, ids, stream=i)
            x = x + (S_noise * math.sqrt(t_hat**2 - t**2)) * noise
        denoised = _denoise(denoise_fn, x, t_hat, num_samples)
        if t_next == 0.0:
            x_next = denoised  # Euler to sigma 0: x + (0 - t_hat) * (x - D) / t_hat == D.
        else:
            slope = (x - denoised) / t_hat
            x_next = x + (t_next - t_hat) * slope
            if method != "euler":
                denoised = _denoise(denoise_fn, x_next, t_next, num_samples)
                slope_next = (x_next - denoised) / t_next
                x_next = x + (t_next - t_hat) * 0.5 * (slope + slope_next)
        x = x_next
        if callback is not None:
            try:
                stop = callback(i, num_steps, x, denoised)
            except StopSampling:
                stop = True
            if stop:
                return denoised
    return x
