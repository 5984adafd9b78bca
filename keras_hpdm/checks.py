"""Argument checks shared by the whole library and the `keras-hpdm` command line.

One message format: "`name` must be <allowed>, got <value>." Python bools are rejected
where numbers are expected (True == 1 would slip through), and NaN fails every range
(comparisons with NaN are False), so it is always named.

This module imports neither Keras nor NumPy, so the CLI checks its arguments with it before
any backend is loaded (and before a model file's weights are read: `check_conditions` runs
on the model's config).
"""

import math
import numbers
import sys


def _is_bool(value):
    numpy = sys.modules.get("numpy")  # a NumPy bool exists only once NumPy is imported
    return isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_))


def is_integer(value):
    """Whether `value` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _interval(low, high, low_open, high_open):
    low, high = (f"{v:g}" if isinstance(v, float) else v for v in (low, high))
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _in_range(value, low, high, low_open=False, high_open=False):
    return ((low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))


def check_int(name, value, low=None, high=None, allow_none=False):
    """Returns `value` as a Python int in `[low, high]`, or raises a `ValueError` naming
    `name` and the allowed values. Bools and floats (even `2.0`) are rejected."""
    if value is None and allow_none:
        return None
    if not (is_integer(value) and _in_range(value, low, high)):
        allowed = "an integer" + ("" if low is None and high is None
                                  else " " + _interval(low, high, False, False))
        raise ValueError(f"`{name}` must be {allowed}{' or None' if allow_none else ''}, "
                         f"got {value!r}.")
    return int(value)


def check_bool(name, value):
    """Returns `value` as a Python bool (NumPy bools too), or raises a `ValueError` naming
    `name`: a truthy `"no"` or `0.5` would otherwise pass silently as True."""
    if not _is_bool(value):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_number(name, value, low=None, high=None, low_open=False, high_open=False,
                 allow_inf=False, allow_none=False):
    """Returns `value` as a Python float in the given range, or raises a `ValueError` naming
    `name` and the allowed values. NaN is always rejected, infinities unless `allow_inf`."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not _is_bool(value)
    ok = ok and not math.isnan(value) and (allow_inf or math.isfinite(value))
    if not (ok and _in_range(value, low, high, low_open, high_open)):
        allowed = "a number" if allow_inf else "a finite number"
        if low is not None or high is not None:
            allowed += " " + _interval(low, high, low_open, high_open)
        raise ValueError(f"`{name}` must be {allowed}{' or None' if allow_none else ''}, "
                         f"got {value!r}.")
    return float(value)


def check_seed(seed, name="seed", allow_none=True):
    """Returns `seed` as a Python int, or raises a `ValueError` naming `name`."""
    if seed is None and allow_none:
        return None
    if not is_integer(seed) or seed < 0:
        allowed = "a non-negative integer" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {allowed}, got {seed!r}.")
    return int(seed)


def sequence_length(value):
    """`len(value)` of a sequence, or None for strings, scalars and 0-d arrays (which have
    `__len__` but raise a bare `TypeError` on it)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return len(value)
    except TypeError:
        return None


def check_int_tuple(name, value, length, low=1, labels=None):
    """Returns `value` as a tuple of `length` ints >= `low` (entries named `name[i] (label)`)."""
    if sequence_length(value) != length:
        shape = f" `({', '.join(labels)})`" if labels else ""
        raise ValueError(f"`{name}` must be a tuple of {length} integers >= {low}{shape}, "
                         f"got {value!r}.")
    labels = labels or [None] * length
    return tuple(
        check_int(f"{name}[{i}]" + (f" ({label})" if label else ""), v, low=low)
        for i, (label, v) in enumerate(zip(labels, value, strict=True))
    )


def check_level_weights(name, value, num_levels=None):
    """Returns `value` as a tuple of finite floats >= 0 with a positive sum (per-level
    weights; `num_levels` of them, or any number >= 1 for None), or raises a `ValueError`
    naming `name`."""
    length = sequence_length(value)
    if length is None or length == 0 or num_levels not in (None, length):
        count = "" if num_levels is None else f"{num_levels} "
        raise ValueError(f"`{name}` must be a sequence of {count}numbers >= 0 (one per "
                         f"pyramid level), got {value!r}.")
    weights = tuple(check_number(f"{name}[{i}]", v, low=0.0) for i, v in enumerate(value))
    if sum(weights) <= 0:
        raise ValueError(f"`{name}` must be numbers >= 0 with a positive sum, got {value!r}.")
    return weights


# ------------------------------------------------------------ generation requests
# The allowed values of generation arguments, defined here (no Keras) so that the command
# line's parser offers the library's own; the modules that act on them re-export them.
SAMPLERS = ("euler", "heun", "stochastic")  # `keras_hpdm.diffusion.samplers.SAMPLERS`
BLENDS = ("uniform", "smooth")  # tile weights: `keras_hpdm.diffusion.tiling.BLENDS`
# Far beyond any sampler budget (EDM uses at most a few hundred steps); larger counts used to
# fail deep in numpy ("Maximum allowed size exceeded") or run for days.
# `keras_hpdm.diffusion.schedules.MAX_NUM_STEPS`.
MAX_NUM_STEPS = 100_000


def check_guidance_scale(value, name="guidance_scale"):
    """Classifier-free guidance weight `w` (output `u + w (c - u)`): a finite number >= 0.
    0 samples unconditionally, 1 conditionally without guidance; larger values guide.
    Finite: an infinite or NaN weight turns every guided pixel into NaN (black videos)."""
    return check_number(name, value, low=0.0)


def check_guidance_scales(value, num_levels, name="guidance_scale"):
    """A guidance weight (`check_guidance_scale`) for all levels, or one per level: a
    sequence of `num_levels` of them. Returns the list, one per level."""
    if sequence_length(value) is None:  # one number (or not one: the check names it)
        return [check_guidance_scale(value, name)] * num_levels
    if sequence_length(value) != num_levels:
        raise ValueError(f"`{name}` must be a finite number >= 0 or {num_levels} of them (one "
                         f"per level), got {value!r}.")
    return [check_guidance_scale(w, f"{name}[{lv}]") for lv, w in enumerate(value)]


def condition_items(conditions):
    """`conditions` (one or a sequence) as a list; any other number is a bad class id."""
    if isinstance(conditions, (str, bytes, numbers.Number)) or (
            getattr(conditions, "ndim", None) == 0 and hasattr(conditions, "item")):
        return [conditions if isinstance(conditions, (str, bytes, numbers.Number))
                else conditions.item()]
    if not hasattr(conditions, "__iter__"):
        raise TypeError(
            "`conditions` must be None, a class id, a prompt, or a list of one kind; got "
            f"{conditions!r}."
        )
    return list(conditions)


def check_conditions(conditions, num_classes, text_dim, guidance_scale=1.0, num_samples=None):
    """Checks a generation request against a model's conditioning: its backbone's
    `num_classes` and `text_dim` (None or 0 when it has none).

    The one check behind `PatchDiffusionModel.generate` and the CLI, which runs it on a
    model file's config before loading the weights.

    Returns:
        `(num_samples, items)`: `items` is None (no conditions) or the list of prompts or of
        class ids, one per sample (a single condition repeated `num_samples` times).
    """
    num_samples = check_int("num_samples", num_samples, low=1, allow_none=True)
    scales = check_guidance_scales(guidance_scale, sequence_length(guidance_scale) or 1)
    guided = any(w != 1.0 for w in scales)
    conditional = bool(num_classes or text_dim)
    if guided and not conditional:
        raise ValueError("`guidance_scale` != 1 needs a class- or text-conditional model.")
    if conditions is None:
        if guided:
            raise ValueError("`guidance_scale` != 1 needs `conditions` to guide towards.")
        return num_samples or 1, None
    items = condition_items(conditions)
    if not items:
        raise ValueError("`conditions` is empty.")
    if len(items) == 1 and num_samples:
        items = items * num_samples
    elif num_samples and len(items) != num_samples:
        raise ValueError(
            f"Got {len(items)} conditions but `num_samples={num_samples}`: pass one "
            "condition (repeated) or one per sample."
        )
    if all(isinstance(c, str) for c in items):
        if not text_dim:
            raise ValueError(
                "Prompts given, but the model is not text-conditional"
                + (f" (it takes class ids in [0, {num_classes - 1}])."
                   if num_classes else " (it is unconditional: pass conditions=None).")
            )
        return len(items), items
    if all(is_integer(c) for c in items):
        if not num_classes:
            raise ValueError(
                "Class ids given, but the model is not class-conditional"
                + (" (it takes prompt strings)." if text_dim
                   else " (it is unconditional: pass conditions=None).")
            )
        if min(items) < 0 or max(items) >= num_classes:
            raise ValueError(f"Class ids must be in [0, {num_classes - 1}], got {items}.")
        return len(items), items
    raise TypeError(
        "`conditions` must be None, a class id, a prompt, or a list of one kind; got "
        f"{conditions!r}."
    )
