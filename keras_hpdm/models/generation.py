"""Tiled, level-by-level generation for `PatchDiffusionModel.generate` (paper §4.4)."""

import contextlib
import math
import sys
import weakref

import keras
import ml_dtypes
import numpy as np
from keras import ops

from keras_hpdm.diffusion.samplers import sample
from keras_hpdm.diffusion.schedules import edm_sigmas
from keras_hpdm.diffusion.seeding import derive_seed, host_normal, per_sample_normal
from keras_hpdm.diffusion.tiling import tile_grid, tiled_denoiser
from keras_hpdm.models.backend_quirks import (
    batch_replicas,
    per_replica_inputs,
    shard_batch,
    strategy_replicas,
)
from keras_hpdm.models.context_cache import ContextCache, context_chains

# `GenerationPlan.context_cache_dtype` -> the numpy type the context cache stores.
CACHE_STORAGE = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}

# EDM's ImageNet-64 setting (S_churn 40 at 256 steps) as churn per step: gamma = 0.156.
EDM_CHURN_PER_STEP = 40.0 / 256.0


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

    Under a JAX `keras.distribution` (e.g. `DataParallel` over all local devices) each batch
    is split over the devices: padded to a multiple of their count by repeating its last
    row, placed sharded along the batch, and cut back after. Rows never interact, so the
    output is one device's (to float rounding).

    In a multi-process run every process generates the same videos in lockstep (the same
    seeds give the same tile batches everywhere) and each batch is split over all
    processes: under JAX over every process's devices, the output gathered back to each
    (`backend_quirks.replicated_across_processes`). Under a TensorFlow strategy (one or
    several workers) each replica is given its contiguous share of the padded batch and
    `predict_on_batch` returns all replicas' outputs, in order.
    """

    def __init__(self, model):
        self.model = model
        self.functions = {}

    def __call__(self, inputs):
        tf_replicas = strategy_replicas(self.model)
        replicas = batch_replicas() * tf_replicas
        if replicas == 1:
            return self._call(inputs)
        size = len(inputs["sigma"])
        pad = -size % replicas
        if pad:
            inputs = keras.tree.map_structure(
                lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]), inputs)
        key = self._key(inputs)  # of the arrays: distributed inputs have no plain shape
        inputs = (per_replica_inputs(self.model, inputs) if tf_replicas > 1
                  else shard_batch(inputs))
        out = self._call(inputs, key)
        return keras.tree.map_structure(lambda x: x[:size], out)

    @staticmethod
    def _key(inputs):
        return (tuple(sorted(inputs)),
                tuple(tuple(np.shape(x)) for x in keras.tree.flatten(inputs)))

    def _call(self, inputs, key=None):
        key = self._key(inputs) if key is None else key
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

    # ----------------------------------------------------------- generation
    def __call__(self, plan):
        """Samples `plan` (a `GenerationPlan`) level by level, with the EMA weights swapped
        in when `plan.use_ema` (see `PatchDiffusionModel.generate`).

        Returns:
            uint8 `(N, T, H, W, 3)` videos, and with `plan.return_pyramid` also the list of
            level canvases (float32 in [-1, 1]).
        """
        conds, null = self.condition_inputs(plan)
        canvases = []
        with _ema_weights(self.model, plan.use_ema):
            for level in range(plan.num_levels):
                guided = plan.guidance_scale[level] != 1.0  # else no unconditioned half
                contexts = noised_contexts(canvases, plan.context_sigma, plan.seed, level)
                canvases.append(self.level(plan, level, contexts, conds,
                                           null if guided else None))
        video = to_uint8(canvases[-1])
        return (video, canvases) if plan.return_pyramid else video

    def condition_inputs(self, plan):
        """The network's condition inputs `(conds, null)` as numpy arrays: `plan`'s
        conditions (labels or encoded prompts, the null ones when it has none) and, when
        guided, the null conditions guidance steers away from (else None)."""
        model, n = self.model, plan.num_samples
        if plan.conditions is None:
            bb = model.backbone
            conds = model.null_conditions(n) if bb.num_classes or bb.text_dim else {}
        elif isinstance(plan.conditions[0], str):
            conds = {"text_embeddings": model.encode_text(plan.conditions)}
        else:
            conds = {"label": np.asarray(plan.conditions, "int32")}
        conds = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in conds.items()}
        null = ({k: np.asarray(ops.convert_to_numpy(v))
                 for k, v in model.null_conditions(n).items()} if plan.guided else None)
        return conds, null

    def level(self, plan, level, canvases, conds, null):
        """Samples level `level` of `plan` given the finished coarser `canvases` (noised to
        `plan.context_sigma`), guided away from the `null` conditions unless None; returns
        its float32 canvas `(N,) + pyramid.level_size(level) + (C,)`."""
        spec, model = self.spec, self.model
        s = self.settings
        n, num_steps, method = plan.num_samples, plan.num_steps[level], plan.samplers[level]
        canvas_size = spec.level_size(level)
        channels = model.backbone.channels
        # The one tile grid of this level: `tile_index` below counts its rows, for the
        # contexts cut here and the tiles `tiled_denoiser` crops alike.
        starts = tile_grid(canvas_size, spec.patch_size, plan.overlap)
        chains = context_chains(spec, level, starts, plan.overlap,
                                plan.context_parents)  # (T, l+1, 3)
        coords = np.stack([spec.chain_coords(c) for c in chains])  # (T, l+1, 6)
        context_sigma = plan.context_sigma
        guidance_scale = plan.guidance_scale[level]
        halves = 1 if null is None else 2
        cache = ContextCache(chains, CACHE_STORAGE[plan.context_cache_dtype],
                             plan.context_cache_budget if plan.cache_context else 0)

        def conditions_for(sample_index):
            out = {k: v[sample_index] for k, v in conds.items()}
            if null is not None:
                out = {k: np.concatenate([out[k], null[k][sample_index]]) for k in out}
            return out

        def context_coords(tile_index):
            ctx_coords = coords[tile_index, :level]
            return ctx_coords if null is None else np.concatenate([ctx_coords, ctx_coords])

        def context_for(sample_index, tile_index, cond):
            context = cache.lookup(sample_index, tile_index, halves,
                                   context_coords(tile_index))
            if context is None:
                context = compute_context(sample_index, tile_index, cond)
                cache.store(context, sample_index, tile_index, halves)
            return context

        def compute_context(sample_index, tile_index, cond):
            r = spec.patch_size
            patches = np.stack([
                np.stack([
                    canvases[k][i, o[0]:o[0] + r[0], o[1]:o[1] + r[1], o[2]:o[2] + r[2]]
                    for k, o in enumerate(chains[t, :level])
                ])
                for i, t in zip(sample_index, tile_index, strict=True)
            ])  # (b, level, f, h, w, C)
            if null is not None:
                patches = np.concatenate([patches, patches])
            sigma = np.full(patches.shape[:2], context_sigma, "float32")
            return self.network({"context_patches": patches, "sigma": sigma,
                                 "coords": context_coords(tile_index), **cond})

        def fill_cache():
            """Computes the context of every distinct parent chain once, in tile batches
            (the last padded to a full one: no new compiled shape), before sampling."""
            reps = cache.parent_representatives()
            work = [(i, t) for i in range(n) for t in reps]
            size = plan.tile_batch_size
            for begin in range(0, len(work), size):
                if cache.full:
                    break
                batch = work[begin:begin + size]
                batch = batch + batch[-1:] * (size - len(batch)) if len(work) > size else batch
                sample_index = np.array([i for i, _ in batch])
                tile_index = np.array([t for _, t in batch])
                cond = conditions_for(sample_index)
                cache.store(compute_context(sample_index, tile_index, cond), sample_index,
                            tile_index, halves)

        if level > 0 and plan.cache_context:
            fill_cache()

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
        batches = math.ceil(n * len(starts) / plan.tile_batch_size)
        progress = keras.utils.Progbar(evals * batches, verbose=progress_verbosity(plan.verbose),
                                       unit_name=f"level {level} tile batches")
        denoise_fn = tiled_denoiser(
            denoise_tiles, canvas_size, spec.patch_size, plan.overlap, plan.tile_batch_size,
            plan.blend, progress=progress, starts=starts,
        )
        scale = (model.noise_distribution.level_noise_scale ** level
                 if s["level_sigma_scale"] else 1.0)
        sigmas = edm_sigmas(num_steps, s["sigma_min"] * scale, s["sigma_max"] * scale, s["rho"])
        shape = (n,) + canvas_size + (channels,)
        x = per_sample_normal(shape, derive_seed(plan.seed, level), stream=0) * float(sigmas[0])
        options = {}
        if method == "stochastic":
            options = {k: s[k] for k in ("S_churn", "S_min", "S_max", "S_noise")}
            if options["S_churn"] == "auto":
                options["S_churn"] = EDM_CHURN_PER_STEP * num_steps

        def on_step(step, total, x_t, denoised):
            info = {"level": level, "step": step, "num_steps": total, "x": x_t,
                    "denoised": denoised, "context_cache_bytes": cache.bytes}
            return any(bool(cb(info)) for cb in plan.callbacks)

        out = sample(denoise_fn, x, sigmas, method=method, seed=derive_seed(plan.seed, level, 1),
                     callback=on_step if plan.callbacks else None, **options)
        return np.asarray(ops.convert_to_numpy(out), np.float32)


def noised_contexts(canvases, context_sigma, seed, level):
    """The finished coarser `canvases` as level `level` is conditioned on them: with
    `context_sigma` of noise, drawn per sample (`host_normal`: batch-independent, the same
    on every backend) and apart from the sampler's own noise. Training noises every level
    at its own sigma, so the finer levels know coarse canvases at any noise level: a noisy
    one keeps its layout and leaves its details to them."""
    if context_sigma == 0.0:
        return canvases
    return [c + np.float32(context_sigma) * host_normal(c.shape, derive_seed(seed, level, 2),
                                                        stream=k)
            for k, c in enumerate(canvases)]


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
