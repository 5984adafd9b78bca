"""Tiled, level-by-level generation for `PatchDiffusionModel.generate` (paper §4.4)."""

import contextlib
import math
import numbers
import sys
import weakref

import keras
import numpy as np
from keras import ops

from keras_hpdm.checks import check_conditions
from keras_hpdm.diffusion.samplers import sample
from keras_hpdm.diffusion.schedules import MAX_NUM_STEPS, edm_sigmas
from keras_hpdm.diffusion.seeding import derive_seed, per_sample_normal
from keras_hpdm.diffusion.tiling import BLENDS, tile_grid, tiled_denoiser
from keras_hpdm.pyramid import check_int, check_number, check_seed, sequence_length

SAMPLERS = ("euler", "heun", "stochastic")
VERBOSE = ("auto", 0, 1, 2)
# EDM's ImageNet-64 setting (S_churn 40 at 256 steps) as churn per step: gamma = 0.156.
EDM_CHURN_PER_STEP = 40.0 / 256.0


def parent_offset(spec, level, offset):
    """Offset of the level `level - 1` patch that holds a level-`level` patch at `offset`.

    Among the valid parents (`2 p <= o <= 2 p + r`), take the one that centres the child.
    """
    r = np.asarray(spec.patch_size)
    mask = np.asarray(spec.pyramided)
    lo = np.maximum(np.ceil((offset - r) / 2), 0)
    hi = np.minimum(np.floor(offset / 2), np.asarray(spec.max_offset(level - 1)))
    centred = np.round((offset + r / 2) / 2 - r / 2)
    return np.where(mask, np.clip(centred, lo, hi), 0).astype(np.int64)


def context_offsets(spec, level, offset):
    """Offsets `(level + 1, 3)` of the nested chain of patches ending at `offset`."""
    chain = [np.asarray(offset, np.int64)]
    for lv in range(level, 0, -1):
        chain.append(parent_offset(spec, lv, chain[-1]))
    return np.stack(chain[::-1])


def progress_verbosity(verbose):
    """Keras' `verbose` for progress: "auto" is a progress bar (1) on a terminal and one
    plain line per level or epoch (2) elsewhere, where a bar's ANSI text would pile up."""
    if isinstance(verbose, str) and verbose == "auto":
        return 1 if hasattr(sys.stdout, "isatty") and sys.stdout.isatty() else 2
    return verbose


def to_uint8(video):
    """[-1, 1] float video -> uint8, grayscale repeated to RGB."""
    video = np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255)
    video = video.astype(np.uint8)
    return np.repeat(video, 3, axis=-1) if video.shape[-1] == 1 else video


class CompiledNetwork:
    """Calls the model's network through Keras' compiled predict function (`jax.jit`,
    `tf.function`; torch runs it without autograd), one function per input signature.

    Keeping a function per signature (mode, levels, tile batch) matters on TensorFlow: one
    `tf.function` seeing a second shape relaxes every axis to unknown, including the level
    axis that adaptive computation slices statically.
    """

    def __init__(self, model):
        self.model = model
        self.functions = {}

    def __call__(self, inputs):
        key = (tuple(sorted(inputs)),
               tuple(tuple(np.shape(x)) for x in keras.tree.flatten(inputs)))
        model = self.model
        saved = model.predict_function
        model.predict_function = self.functions.get(key)
        try:
            out = model.predict_on_batch(inputs)
            self.functions[key] = model.predict_function
        finally:
            model.predict_function = saved
        return out


_NETWORKS = weakref.WeakKeyDictionary()


class PyramidGenerator:
    """Generates the pyramid of a `PatchDiffusionModel` level by level.

    Level 0 is one patch per sample. Level `l` is a canvas of `r * 2**l`, covered by tiles
    of size `r` that overlap; at every step each tile is denoised against its context (the
    finished coarser levels, cut at the nested parent patches holding it) and the tiles'
    outputs are averaged per pixel (`keras_hpdm.diffusion.tiled_denoiser`).
    """

    def __init__(self, model):
        self.model = model
        self.spec = model.pyramid
        self.settings = model.sampling
        if model not in _NETWORKS:  # compiled functions live as long as the model
            _NETWORKS[model] = CompiledNetwork(model)
        self.network = _NETWORKS[model]

    # ------------------------------------------------------------ arguments
    def resolve_conditions(self, conditions, num_samples, guidance_scale):
        bb = self.model.backbone
        n, items = check_conditions(conditions, bb.num_classes, bb.text_dim, guidance_scale,
                                    num_samples)
        if items is None:
            return n, (self.model.null_conditions(n) if bb.num_classes or bb.text_dim else {})
        if isinstance(items[0], str):
            return n, {"text_embeddings": self.model.encode_text(items)}
        return n, {"label": np.asarray(items, "int32")}

    def resolve_steps(self, num_steps, num_levels):
        num_steps = self.settings["num_steps"] if num_steps is None else num_steps
        if isinstance(num_steps, numbers.Integral) and not isinstance(num_steps, bool):
            num_steps = _check_steps("num_steps", num_steps)
            return [max(min(4, num_steps), num_steps // 2**lv) for lv in range(num_levels)]
        return check_steps_per_level(num_steps, num_levels)

    def resolve_samplers(self, sampler, num_levels):
        if sampler is None:
            first, rest = self.settings["methods"]
            methods = [first] + [rest] * (num_levels - 1)
        elif isinstance(sampler, str):
            methods = [sampler] * num_levels
        else:  # a sequence; anything else (a number, a 0-d array) fails the check below
            methods = list(sampler) if sequence_length(sampler) is not None else []
        if len(methods) != num_levels or any(
                not isinstance(m, str) or m not in SAMPLERS for m in methods):
            raise ValueError(
                f"`sampler` must be one of {SAMPLERS} or one per level ({num_levels}), got "
                f"{sampler!r}."
            )
        return methods

    @staticmethod
    def resolve_overlap(overlap):
        values = [overlap] * 3 if isinstance(overlap, numbers.Number) else overlap
        if sequence_length(values) != 3:
            raise ValueError(
                f"`overlap` must be a number in [0, 1) or 3 of them (f, h, w), got {overlap!r}."
            )
        return tuple(check_number(f"overlap[{i}]", v, low=0.0, high=1.0, high_open=True)
                     for i, v in enumerate(values))

    # ----------------------------------------------------------- generation
    def __call__(self, conditions=None, num_samples=None, num_steps=None, guidance_scale=1.0,
                 overlap=(0.5, 0.5, 0.0), tile_batch_size=16, seed=None, sampler=None,
                 blend="uniform", cache_context=True, callbacks=None, verbose="auto",
                 return_pyramid=False, num_levels=None, use_ema=False):
        """Validates every argument, then samples level by level (with the EMA weights
        swapped in when `use_ema`; see `PatchDiffusionModel.generate`)."""
        spec = self.spec
        num_levels = spec.num_levels if num_levels is None else num_levels
        num_levels = check_int("num_levels", num_levels, low=1, high=spec.num_levels)
        n, conds = self.resolve_conditions(conditions, num_samples, guidance_scale)
        steps = self.resolve_steps(num_steps, num_levels)
        methods = self.resolve_samplers(sampler, num_levels)
        overlap = self.resolve_overlap(overlap)
        tile_batch_size = check_int("tile_batch_size", tile_batch_size, low=1)
        # Type first: `in` on an array compares elementwise and raises a bare ValueError.
        if not isinstance(verbose, (str, numbers.Number)) or verbose not in VERBOSE:
            raise ValueError(f"`verbose` must be one of {VERBOSE}, got {verbose!r}.")
        if not isinstance(blend, str) or blend not in BLENDS:
            raise ValueError(f"`blend` must be one of {BLENDS}, got {blend!r}.")
        seed = check_seed(seed)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        callbacks = [] if callbacks is None else callbacks
        if sequence_length(callbacks) is None or any(not callable(c) for c in callbacks):
            raise TypeError("`callbacks` must be a list of callables `fn(info) -> bool`, got "
                            f"{callbacks!r}.")
        callbacks = list(callbacks)
        conds = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in conds.items()}
        null = ({k: np.asarray(ops.convert_to_numpy(v))
                 for k, v in self.model.null_conditions(n).items()}
                if guidance_scale != 1.0 else None)

        canvases = []
        with _ema_weights(self.model, use_ema):
            for level in range(num_levels):
                canvases.append(self.level(
                    level, canvases, n, conds, null, guidance_scale, steps[level],
                    methods[level], overlap, tile_batch_size, seed, blend, cache_context,
                    callbacks, verbose,
                ))
        video = to_uint8(canvases[-1])
        return (video, canvases) if return_pyramid else video

    def level(self, level, canvases, n, conds, null, guidance_scale, num_steps, method,
              overlap, tile_batch_size, seed, blend, cache_context, callbacks, verbose):
        spec, model = self.spec, self.model
        s = self.settings
        canvas_size = spec.level_size(level)
        channels = model.backbone.channels
        starts = tile_grid(canvas_size, spec.patch_size, overlap)
        chains = np.stack([context_offsets(spec, level, o) for o in starts])  # (T, l+1, 3)
        coords = np.stack([spec.coords_from_offsets(_pad_chain(spec, c)) for c in chains])
        coords = coords[:, : level + 1]  # (T, l+1, 6)
        context_sigma = float(s["context_sigma"])
        cache = {}

        def conditions_for(sample_index):
            out = {k: v[sample_index] for k, v in conds.items()}
            if null is not None:
                out = {k: np.concatenate([out[k], null[k][sample_index]]) for k in out}
            return out

        def context_for(sample_index, tile_index, cond):
            key = (sample_index.tobytes(), tile_index.tobytes())
            if key in cache:
                return cache[key]
            r = spec.patch_size
            patches = np.stack([
                np.stack([
                    canvases[k][i, o[0]:o[0] + r[0], o[1]:o[1] + r[1], o[2]:o[2] + r[2]]
                    for k, o in enumerate(chains[t, :level])
                ])
                for i, t in zip(sample_index, tile_index, strict=True)
            ])  # (b, level, f, h, w, C)
            ctx_coords = coords[tile_index, :level]
            if null is not None:
                patches = np.concatenate([patches, patches])
                ctx_coords = np.concatenate([ctx_coords, ctx_coords])
            sigma = np.full(patches.shape[:2], context_sigma, "float32")
            context = self.network(
                {"context_patches": patches, "sigma": sigma, "coords": ctx_coords, **cond})
            if cache_context:
                cache[key] = context
            return context

        def denoise_tiles(tiles, sigma, sample_index, tile_index):
            cond = conditions_for(sample_index)
            new_coords = coords[tile_index, level:]
            x = np.asarray(ops.convert_to_numpy(tiles), np.float32)[:, None]
            sig = np.asarray(ops.convert_to_numpy(sigma), np.float32).reshape(-1, 1)
            if null is not None:
                x, sig = np.concatenate([x, x]), np.concatenate([sig, sig])
                new_coords = np.concatenate([new_coords, new_coords])
            inputs = {"patches": x, "sigma": sig, "coords": new_coords, **cond}
            if level > 0:
                inputs["context"] = context_for(sample_index, tile_index, cond)
            out = self.network(inputs)[:, 0]
            if null is not None:
                cond_out, uncond_out = np.split(out, 2)
                out = uncond_out + guidance_scale * (cond_out - uncond_out)
            return out

        evals = num_steps if method == "euler" else 2 * num_steps - 1
        batches = math.ceil(n * len(starts) / tile_batch_size)
        progress = keras.utils.Progbar(evals * batches, verbose=progress_verbosity(verbose),
                                       unit_name=f"level {level} tile batches")
        denoise_fn = tiled_denoiser(
            denoise_tiles, canvas_size, spec.patch_size, overlap, tile_batch_size, blend,
            progress=progress,
        )
        sigmas = edm_sigmas(num_steps, s["sigma_min"], s["sigma_max"], s["rho"])
        shape = (n,) + canvas_size + (channels,)
        x = per_sample_normal(shape, derive_seed(seed, level), stream=0) * float(sigmas[0])
        options = {}
        if method == "stochastic":
            options = {k: s[k] for k in ("S_churn", "S_min", "S_max", "S_noise")}
            if options["S_churn"] == "auto":
                options["S_churn"] = EDM_CHURN_PER_STEP * num_steps

        def on_step(step, total, x_t, denoised):
            info = {"level": level, "step": step, "num_steps": total, "x": x_t,
                    "denoised": denoised}
            return any(bool(cb(info)) for cb in callbacks)

        out = sample(denoise_fn, x, sigmas, method=method, seed=derive_seed(seed, level, 1),
                     callback=on_step if callbacks else None, **options)
        return np.asarray(ops.convert_to_numpy(out), np.float32)


@contextlib.contextmanager
def _ema_weights(model, use_ema):
    """Swaps the EMA weights in (when kept) and the live ones back after."""
    swap = bool(use_ema) and bool(model.ema_weights)
    if swap:
        model.swap_ema_weights()
    try:
        yield
    finally:
        if swap:
            model.swap_ema_weights()


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
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
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


def _pad_chain(spec, chain):
    """Pads a chain of offsets for levels `[0, l]` to all levels (for `coords_from_offsets`)."""
    full = np.zeros((spec.num_levels, 3), np.int64)
    full[: len(chain)] = chain
    return full
