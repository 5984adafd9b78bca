"""Noise-level schedules for sampling."""

import numpy as np

# MAX_NUM_STEPS: the most steps a schedule has (also checked before `generate` runs).
from keras_hpdm.checks import MAX_NUM_STEPS, check_int, check_number


def _check_positive_float(name, value):
    return check_number(name, value, low=0.0, low_open=True)


def edm_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The EDM (Karras) noise levels: `num_steps + 1` sigmas from `sigma_max` down to 0.

    `sigma_i = (sigma_max**(1/rho) + i/(num_steps-1) * (sigma_min**(1/rho) -
    sigma_max**(1/rho)))**rho` for `i < num_steps`, then a final 0 (EDM Eq. 5). A single step
    goes straight from `sigma_max` to 0.

    Args:
        num_steps: number of sampler steps (positive integer).
        sigma_min: smallest non-zero noise level.
        sigma_max: starting noise level, larger than `sigma_min`.
        rho: warping exponent; larger values spend more steps at low noise.

    Returns:
        float32 numpy array of shape `(num_steps + 1,)`, decreasing, ending with 0.

    Example:
    ```python
    sigmas = keras_hpdm.diffusion.edm_sigmas(18)  # [80.0, 57.6, ..., 0.002, 0.0]
    ```

    References:
        - [Karras et al., Elucidating the Design Space of Diffusion-Based Generative Models,
          NeurIPS 2022](https://arxiv.org/abs/2206.00364)
    """
    num_steps = check_int("num_steps", num_steps, low=1, high=MAX_NUM_STEPS)
    sigma_min = _check_positive_float("sigma_min", sigma_min)
    sigma_max = _check_positive_float("sigma_max", sigma_max)
    rho = _check_positive_float("rho", rho)
    if sigma_max <= sigma_min:
        raise ValueError(
            f"`sigma_max` must be larger than `sigma_min`, got sigma_max={sigma_max} "
            f"and sigma_min={sigma_min}."
        )
    ramp = np.linspace(0.0, 1.0, int(num_steps)) if num_steps > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return np.append(sigmas, 0.0).astype(np.float32)
