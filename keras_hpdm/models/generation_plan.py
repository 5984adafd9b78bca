"""The settings of one `generate` call, resolved and validated once: `GenerationPlan`.

Imports neither Keras nor NumPy (only `keras_hpdm.checks`): the command line builds the
same plan from a model file's config, to check a request before any backend or weights load.
"""

import dataclasses
import numbers
import secrets

from keras_hpdm.checks import (
    BLENDS,
    MAX_NUM_STEPS,
    SAMPLERS,
    check_bool,
    check_conditions,
    check_guidance_scales,
    check_int,
    check_number,
    check_seed,
    is_integer,
    sequence_length,
)

# `generate`'s defaults, declared here for the library and the command line alike.
DEFAULT_OVERLAP = (0.5, 0.5, 0.0)  # the paper's best: 50% on time and height (Table 4)
DEFAULT_TILE_BATCH_SIZE = 16  # tiles per network call: bounds the device's memory
VERBOSE = ("auto", 0, 1, 2)
# How the context cache stores contexts: bfloat16 halves it (its 8-bit mantissa rounds the
# coarse features by < 0.4%).
CONTEXT_CACHE_DTYPES = ("float32", "bfloat16")
# Where a tile's context is cut: "center" (the parent patch centring it: the best samples)
# or "grid" (the coarser level's own tile holding it: tiles share parents, so the context
# cache follows the coarser levels' tile counts; see models/context_cache.py).
CONTEXT_PARENTS = ("center", "grid")

DEFAULT_SAMPLING = {
    # Paper App. C: 128 steps at level 0, halved per level (128/64/32); stochastic Heun at
    # level 0, deterministic Euler above.
    "num_steps": 128,
    "methods": ["stochastic", "euler"],
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "rho": 7.0,
    # "auto": EDM's churn per step (S_churn 40 over 256 steps), whatever the step count;
    # a fixed 40 saturates the churn at every sigma below ~100 steps.
    "S_churn": "auto",
    "S_min": 0.05,
    "S_max": 50.0,
    "S_noise": 1.003,
    # The noise level the finer levels take their coarser levels' canvases at: the
    # canvases get that much noise (training saw coarse levels at every noise level), so
    # a higher value lets the finer levels redraw details the coarse ones got wrong.
    "context_sigma": 0.002,
    # The guidance `generate(guidance_scale=None)` uses, one for all levels or one per
    # level: a trained model can carry the scale it was measured best at (1: conditional
    # without guidance).
    "guidance_scale": 1.0,
    # True: level l samples over [sigma_min, sigma_max] * level_noise_scale**l, the range
    # its training noise was shifted to (off: every level samples the same range).
    "level_sigma_scale": False,
}


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """Everything one `PatchDiffusionModel.generate` call does, per level, checked up front.

    Built by `resolve` from `generate`'s arguments and the model's settings, then handed
    whole to the level-by-level code (`keras_hpdm.models.generation.PyramidGenerator`), so
    each argument is validated and defaulted in one place and a bad one fails before any
    level runs.

    Attributes:
        num_levels: levels to generate (the output is `pyramid.level_size(num_levels - 1)`).
        num_samples: videos to generate.
        conditions: None, or one class id or prompt per sample (a tuple).
        num_steps: sampler steps, one per level.
        samplers: sampler names (`SAMPLERS`), one per level.
        guidance_scale: classifier-free guidance weight per level (1: no guidance).
        context_sigma: the noise level of the coarser levels' canvases the finer levels
            are conditioned on (`DEFAULT_SAMPLING["context_sigma"]`).
        overlap: tile overlap fraction per axis `(f, h, w)`.
        tile_batch_size: tiles denoised per network call.
        seed: the seed of every draw (a fresh one when `generate` got None).
        blend: tile weights, one of `BLENDS`.
        cache_context: whether each tile's context is computed once per level.
        context_cache_budget: bytes the cache may hold per level (None: no limit); the
            contexts beyond it are recomputed at every step.
        context_cache_dtype: how the cache stores contexts, one of `CONTEXT_CACHE_DTYPES`.
        context_parents: where tiles' contexts are cut, one of `CONTEXT_PARENTS`.
        use_ema: whether to sample with the EMA weights.
        callbacks: callables `fn(info) -> bool` called after every step.
        verbose: progress, one of `VERBOSE`.
        return_pyramid: whether every level's canvas is returned too.

    Example:
    ```python
    plan = GenerationPlan.resolve(3, DEFAULT_SAMPLING, num_classes=10, conditions=[3, 7],
                                  seed=0)
    plan.num_steps, plan.samplers  # (128, 64, 32), ('stochastic', 'euler', 'euler')
    ```
    """

    num_levels: int
    num_samples: int
    conditions: tuple | None
    num_steps: tuple
    samplers: tuple
    guidance_scale: tuple
    context_sigma: float
    overlap: tuple
    tile_batch_size: int
    seed: int
    blend: str
    cache_context: bool
    context_cache_budget: object
    context_cache_dtype: str
    context_parents: str
    use_ema: bool
    callbacks: tuple
    verbose: object
    return_pyramid: bool

    @property
    def guided(self):
        """Whether some level's network calls also run unconditioned (guidance != 1)."""
        return any(w != 1.0 for w in self.guidance_scale)

    @classmethod
    def resolve(cls, pyramid_levels, sampling, num_classes=None, text_dim=None, *,
                conditions=None, num_samples=None, num_steps=None, guidance_scale=None,
                context_sigma=None, overlap=DEFAULT_OVERLAP,
                tile_batch_size=DEFAULT_TILE_BATCH_SIZE, seed=None,
                sampler=None, blend="uniform", cache_context=True, context_cache_budget=None,
                context_cache_dtype="float32", context_parents="center", use_ema=True,
                callbacks=None, verbose="auto", return_pyramid=False, num_levels=None):
        """Validates `generate`'s arguments (see `PatchDiffusionModel.generate`) against a
        model and fills in its defaults.

        Args:
            pyramid_levels: the model's `pyramid.num_levels`.
            sampling: the model's `sampling` settings (`DEFAULT_SAMPLING`'s keys): the
                steps and samplers used when `num_steps` or `sampler` is None.
            num_classes, text_dim: the backbone's (None or 0 when it has none): what
                `conditions` may be.
            conditions, ..., num_levels: `generate`'s arguments, with its defaults.

        Returns:
            A `GenerationPlan`. Raises a `ValueError` (or `TypeError`) naming the first bad
            argument.
        """
        num_levels = pyramid_levels if num_levels is None else num_levels
        num_levels = check_int("num_levels", num_levels, low=1, high=pyramid_levels)
        if guidance_scale is None:  # the model's own, unless there is nothing to guide to
            guidance_scale = (1.0 if conditions is None
                              else _first_levels(sampling["guidance_scale"], num_levels))
        guidance_scale = check_guidance_scales(
            _first_levels(guidance_scale, num_levels, pyramid_levels), num_levels)
        n, items = check_conditions(conditions, num_classes, text_dim, guidance_scale,
                                    num_samples)
        steps = _resolve_steps(_first_levels(sampling["num_steps"], num_levels)
                               if num_steps is None else num_steps, num_levels)
        if context_sigma is None:
            context_sigma = sampling["context_sigma"]
        context_sigma = check_number("context_sigma", context_sigma, low=0.0)
        samplers = _resolve_samplers(sampler, sampling["methods"], num_levels)
        overlap = _resolve_overlap(overlap)
        tile_batch_size = check_int("tile_batch_size", tile_batch_size, low=1)
        # Type first: `in` on an array compares elementwise and raises a bare ValueError.
        if not isinstance(verbose, (str, numbers.Number)) or verbose not in VERBOSE:
            raise ValueError(f"`verbose` must be one of {VERBOSE}, got {verbose!r}.")
        if not isinstance(blend, str) or blend not in BLENDS:
            raise ValueError(f"`blend` must be one of {BLENDS}, got {blend!r}.")
        if not isinstance(context_parents, str) or context_parents not in CONTEXT_PARENTS:
            raise ValueError(f"`context_parents` must be one of {CONTEXT_PARENTS}, got "
                             f"{context_parents!r}.")
        seed = check_seed(seed)
        if seed is None:
            seed = secrets.randbits(32)  # fresh entropy, as an unseeded NumPy generator
        callbacks = [] if callbacks is None else callbacks
        if sequence_length(callbacks) is None or any(not callable(c) for c in callbacks):
            raise TypeError("`callbacks` must be a list of callables `fn(info) -> bool`, got "
                            f"{callbacks!r}.")
        return cls(
            num_levels=num_levels, num_samples=n,
            conditions=None if items is None else tuple(items), num_steps=tuple(steps),
            samplers=tuple(samplers), guidance_scale=tuple(float(w) for w in guidance_scale),
            context_sigma=float(context_sigma), overlap=overlap,
            tile_batch_size=tile_batch_size, seed=seed, blend=blend,
            cache_context=check_bool("cache_context", cache_context),
            context_cache_budget=check_int("context_cache_budget", context_cache_budget,
                                           low=0, allow_none=True),
            context_cache_dtype=_check_cache_dtype(context_cache_dtype),
            context_parents=context_parents, use_ema=check_bool("use_ema", use_ema),
            callbacks=tuple(callbacks), verbose=verbose,
            return_pyramid=check_bool("return_pyramid", return_pyramid),
        )


def _first_levels(values, num_levels, pyramid_levels=None):
    """A per-level setting of the whole pyramid (`pyramid_levels` of them; any length when
    None) cut to the `num_levels` generated; anything else as it is, for its check."""
    length = sequence_length(values)
    if length and length > num_levels and pyramid_levels in (None, length):
        return list(values)[:num_levels]
    return values


def _check_cache_dtype(dtype):
    if not isinstance(dtype, str) or dtype not in CONTEXT_CACHE_DTYPES:
        raise ValueError(f"`context_cache_dtype` must be one of {CONTEXT_CACHE_DTYPES}, got "
                         f"{dtype!r}.")
    return dtype


def _resolve_steps(num_steps, num_levels):
    if is_integer(num_steps):  # level 0's count, halved per level (at least 4)
        num_steps = _check_steps("num_steps", num_steps)
        return [max(min(4, num_steps), num_steps // 2**lv) for lv in range(num_levels)]
    return check_steps_per_level(num_steps, num_levels)


def _resolve_samplers(sampler, methods, num_levels):
    if sampler is None:  # the model's: one for level 0, one for the others
        first, rest = methods
        names = [first] + [rest] * (num_levels - 1)
    elif isinstance(sampler, str):
        names = [sampler] * num_levels
    else:  # a sequence; anything else (a number, a 0-d array) fails the check below
        names = list(sampler) if sequence_length(sampler) is not None else []
    if len(names) != num_levels or any(
            not isinstance(m, str) or m not in SAMPLERS for m in names):
        raise ValueError(
            f"`sampler` must be one of {SAMPLERS} or one per level ({num_levels}), got "
            f"{sampler!r}."
        )
    return names


def _resolve_overlap(overlap):
    values = [overlap] * 3 if isinstance(overlap, numbers.Number) else overlap
    if sequence_length(values) != 3:
        raise ValueError(
            f"`overlap` must be a number in [0, 1) or 3 of them (f, h, w), got {overlap!r}."
        )
    return tuple(check_number(f"overlap[{i}]", v, low=0.0, high=1.0, high_open=True)
                 for i, v in enumerate(values))


def check_steps_per_level(num_steps, num_levels, name="num_steps"):
    """`num_steps` as one positive int per level, or a `ValueError` naming `name`."""
    if sequence_length(num_steps) != num_levels:
        raise ValueError(
            f"`{name}` must be a positive int or {num_levels} positive ints (one per "
            f"level), got {num_steps!r}."
        )
    return [_check_steps(f"{name}[{lv}]", s) for lv, s in enumerate(num_steps)]


def _check_steps(name, value):
    value = check_int(name, value, low=1)
    if value > MAX_NUM_STEPS:  # checked before any level runs, not in `edm_sigmas` later
        raise ValueError(f"`{name}` must be at most {MAX_NUM_STEPS} (keras_hpdm.diffusion."
                         f"schedules.MAX_NUM_STEPS), got {value}.")
    return value


def check_sampling(sampling, num_levels):
    """Validates a complete `sampling` settings dict (see `DEFAULT_SAMPLING`) up front, so
    a bad value fails when the model is built, not in the middle of `generate`."""
    steps = sampling["num_steps"]
    if is_integer(steps):
        check_int('sampling["num_steps"]', steps, low=1)
    else:
        check_steps_per_level(steps, num_levels, name='sampling["num_steps"]')
    methods = sampling["methods"]
    if isinstance(methods, str) or not hasattr(methods, "__len__") or len(methods) != 2 or any(
            m not in SAMPLERS for m in methods):
        raise ValueError(f'`sampling["methods"]` must be 2 of {SAMPLERS} (level 0, then the '
                         f"other levels), got {methods!r}.")
    positive = dict(low=0.0, low_open=True)
    sigma_min = check_number('sampling["sigma_min"]', sampling["sigma_min"], **positive)
    check_number('sampling["sigma_max"]', sampling["sigma_max"], low=sigma_min, low_open=True)
    check_number('sampling["rho"]', sampling["rho"], **positive)
    if sampling["S_churn"] != "auto":
        try:
            check_number('sampling["S_churn"]', sampling["S_churn"], low=0.0)
        except ValueError:
            raise ValueError('`sampling["S_churn"]` must be "auto" or a finite number >= 0, '
                             f'got {sampling["S_churn"]!r}.') from None
    s_min = check_number('sampling["S_min"]', sampling["S_min"], low=0.0)
    check_number('sampling["S_max"]', sampling["S_max"], low=s_min, allow_inf=True)
    check_number('sampling["S_noise"]', sampling["S_noise"], low=0.0)
    check_number('sampling["context_sigma"]', sampling["context_sigma"], low=0.0)
    check_guidance_scales(sampling["guidance_scale"], num_levels, 'sampling["guidance_scale"]')
    check_bool('sampling["level_sigma_scale"]', sampling["level_sigma_scale"])
