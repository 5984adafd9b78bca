import keras
import numpy as np
import pytest
from keras import ops

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.diffusion import edm_sigmas, per_sample_normal, sample
from keras_hpdm.diffusion.seeding import derive_seed, host_normal
from keras_hpdm.models.generation import PyramidGenerator

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)


def with_context_weights(model, scale=0.2):
    """`model` with random context-fusion kernels, in its live and its EMA weights (what
    `generate` samples with): zero-initialised, they would make the context inert."""
    rng = np.random.default_rng(0)
    for fusion in model.backbone.fusions:
        fusion.context_kernel.assign(rng.normal(scale=scale, size=fusion.context_kernel.shape))
    for ema, weight in zip(model.ema_weights, model.backbone.trainable_weights, strict=True):
        ema.assign(ops.cast(weight, "float32"))
    return model


@pytest.fixture(scope="module")
def model():
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=3)
    return with_context_weights(keras_hpdm.PatchDiffusionModel(backbone, seed=0))


def pixelwise_denoise(x, sigma, coords, conditions=None, context=None, mean=0.2):
    """The ideal denoiser of N(mean, 0.3^2) pixels: output at a pixel depends on it alone."""
    s2 = ops.reshape(ops.square(ops.cast(sigma, "float32")), (-1, x.shape[1], 1, 1, 1, 1))
    mean = ops.cast(mean, "float32")
    return mean + 0.09 / (0.09 + s2) * (ops.cast(x, "float32") - mean)


def test_output_shape_dtype_and_determinism(model):
    video = model.generate([0, 2], num_steps=3, seed=1, verbose=0)
    assert video.shape == (2,) + SPEC.target_size + (3,) and video.dtype == np.uint8
    again = model.generate([0, 2], num_steps=3, seed=1, verbose=0)
    np.testing.assert_array_equal(video, again)
    other = model.generate([0, 2], num_steps=3, seed=2, verbose=0)
    assert np.abs(other.astype(int) - video.astype(int)).max() > 0


def test_per_sample_results_independent_of_batch_and_tiles(model):
    a = model.generate([0, 1, 2], num_steps=3, seed=5, verbose=0, tile_batch_size=16,
                       return_pyramid=True)[1][-1]
    b = model.generate([0, 1], num_steps=3, seed=5, verbose=0, tile_batch_size=3,
                       return_pyramid=True)[1][-1]
    np.testing.assert_allclose(a[:2], b, atol=2e-5)


def test_cached_context_equals_recomputed(model):
    kw = dict(conditions=[1], num_steps=3, seed=3, verbose=0, return_pyramid=True)
    cached = model.generate(cache_context=True, **kw)[1][-1]
    fresh = model.generate(cache_context=False, **kw)[1][-1]
    np.testing.assert_allclose(cached, fresh, atol=2e-5)


@pytest.mark.parametrize("fusion_mode", ["shallow", "none"])
def test_ablation_models_generate_with_and_without_the_cache(fusion_mode):
    """The ablation switches change what the context cache holds (one block, or nothing):
    generation still runs through the compiled predict path and the cache stays exact."""
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=3,
                                       fusion_mode=fusion_mode, use_coords=False)
    m = with_context_weights(keras_hpdm.PatchDiffusionModel(backbone, seed=0))
    kw = dict(conditions=[1], num_steps=2, seed=3, verbose=0, return_pyramid=True)
    cached = m.generate(cache_context=True, **kw)[1][-1]
    fresh = m.generate(cache_context=False, **kw)[1][-1]
    np.testing.assert_allclose(cached, fresh, atol=2e-5)


def test_tiled_generation_is_exact_for_a_pixelwise_denoiser(model, monkeypatch):
    """Tiling adds nothing for a pixel-wise denoiser: every overlap / tile batch size gives
    the untiled result (one `sample` call on the whole canvas with the same noise)."""
    def network(inputs):  # generation's network calls, context-free and pixel-wise
        if "context_patches" in inputs:
            return {}
        out = pixelwise_denoise(inputs["patches"], inputs["sigma"], inputs["coords"])
        return np.asarray(ops.convert_to_numpy(out))

    monkeypatch.setattr(model, "predict_on_batch", network)
    results = []
    for overlap, tbs in ((0.0, 1), (0.5, 3), ((0.5, 0.75, 0.25), 16)):
        _, canvases = model.generate([1, 2], num_steps=4, seed=9, overlap=overlap,
                                     tile_batch_size=tbs, sampler="euler", verbose=0,
                                     return_pyramid=True)
        results.append(canvases[-1])
    level = SPEC.num_levels - 1
    sigmas = edm_sigmas(4)
    x = per_sample_normal((2,) + SPEC.level_size(level) + (3,), derive_seed(9, level)) * float(
        sigmas[0])

    def whole(x, sigma):
        return pixelwise_denoise(x[:, None], sigma[:, None], None)[:, 0]

    untiled = np.asarray(ops.convert_to_numpy(sample(whole, x, sigmas, method="euler")))
    for tiled in results:
        np.testing.assert_allclose(tiled, untiled, atol=1e-5)


def one_step_guided_reference(model, labels, guidance_scale, seed):
    """Level 0 with one Euler step from sigma_max lands on the guided denoised estimate
    `u + w (c - u)` of the start noise: computed here by running the model's denoiser on
    the conditional and the null labels and combining the two explicitly. (It runs through
    generation's compiled network function, which these inputs' shapes reuse.)"""
    n = len(labels)
    sigma = model.sampling["sigma_max"]
    x = per_sample_normal((n,) + SPEC.level_size(0) + (3,), derive_seed(seed, 0)) * sigma
    x = np.asarray(ops.convert_to_numpy(x), "float32")[:, None]  # (n, 1 level, ...)
    coords = np.tile(np.array([[[1, 1, 1, 0, 0, 0]]], "float32"), (n, 1, 1))  # whole video
    null = np.full(n, model.backbone.null_label, "int32")
    out = PyramidGenerator(model).network({
        "patches": np.concatenate([x, x]), "sigma": np.full((2 * n, 1), sigma, "float32"),
        "coords": np.concatenate([coords, coords]),
        "label": np.concatenate([np.asarray(labels, "int32"), null]),
    })
    cond, uncond = np.split(np.asarray(out, np.float64)[:, 0], 2)
    return uncond + guidance_scale * (cond - uncond), cond, uncond


def test_guidance_and_ema(model):
    live = [np.array(ops.convert_to_numpy(v)) for v in model.backbone.trainable_weights]
    for ema in model.ema_weights:  # make EMA differ from the live weights
        ema.assign(ops.convert_to_numpy(ema) * 0.5)
    labels, w = [1, 2], 2.0
    kw = dict(num_steps=1, num_levels=1, sampler="euler", seed=4, verbose=0,
              guidance_scale=w, return_pyramid=True)
    with_ema = model.generate(labels, **kw)[1][0]
    without = model.generate(labels, use_ema=False, **kw)[1][0]
    expected, cond, uncond = one_step_guided_reference(model, labels, w, seed=4)
    np.testing.assert_allclose(without, expected, atol=1e-4)
    assert np.abs(cond - uncond).max() > 1e-2  # the check can see a wrong combination
    model.swap_ema_weights()
    try:
        expected_ema = one_step_guided_reference(model, labels, w, seed=4)[0]
    finally:
        model.swap_ema_weights()
    np.testing.assert_allclose(with_ema, expected_ema, atol=1e-4)
    assert np.abs(expected_ema - expected).max() > 1e-2
    for before, v in zip(live, model.backbone.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, ops.convert_to_numpy(v))


@pytest.mark.parametrize("guidance", [3.0, (3.0, 1.0)])
def test_guided_sampling_is_exact_for_pixelwise_denoisers(model, monkeypatch, guidance):
    """Every level and step: the sampler integrates `u + w (c - u)` of the conditional and
    null outputs (pixel-wise denoisers of class-dependent Gaussians, so tiling is exact),
    with each level's own `w` when one per level is given; a level at 1 runs no null half."""
    null = model.backbone.null_label
    scales = (guidance,) * SPEC.num_levels if np.isscalar(guidance) else guidance
    labels_seen = []

    def mean_of(label):
        return np.where(np.asarray(label) == null, -0.3, 0.15 * np.asarray(label) + 0.2)

    def denoiser(x, sigma, label):
        mean = mean_of(label).reshape((-1,) + (1,) * (len(x.shape) - 1)).astype("float32")
        return pixelwise_denoise(x, sigma, None, mean=mean)

    def network(inputs):
        if "context_patches" in inputs:
            return {}
        labels_seen.append((int("context" in inputs), np.asarray(inputs["label"])))  # level
        out = denoiser(inputs["patches"], inputs["sigma"], inputs["label"])
        return np.asarray(ops.convert_to_numpy(out))

    monkeypatch.setattr(model, "predict_on_batch", network)
    labels = np.array([0, 2])
    _, canvases = model.generate(list(labels), num_steps=4, seed=9, overlap=0.5,
                                 tile_batch_size=3, sampler="euler", verbose=0,
                                 guidance_scale=guidance, return_pyramid=True)
    sigmas = edm_sigmas(4)
    for level, (canvas, w) in enumerate(zip(canvases, scales, strict=True)):
        called_null = any(np.any(seen == null) for lv, seen in labels_seen if lv == level)
        assert called_null == (w != 1.0)
        x = per_sample_normal((2,) + SPEC.level_size(level) + (3,), derive_seed(9, level))
        x = x * float(sigmas[0])

        def guided(x, sigma, w=w):
            c = denoiser(x[:, None], sigma[:, None], labels)[:, 0]
            u = denoiser(x[:, None], sigma[:, None], np.full(2, null))[:, 0]
            return u + w * (c - u)

        expected = np.asarray(ops.convert_to_numpy(sample(guided, x, sigmas, method="euler")))
        np.testing.assert_allclose(canvas, expected, atol=1e-5)


def test_context_sigma_noises_the_coarse_canvases(model, monkeypatch):
    """Level 1 is conditioned on level 0's finished canvas plus `context_sigma` of noise
    drawn per sample (`host_normal`, apart from the sampler's), told that sigma; level 0's
    own sampling is untouched. The noise is there (the clean canvas differs)."""
    contexts = []
    real_network = PyramidGenerator(model).network

    def network(inputs):
        if "context_patches" in inputs:
            contexts.append((np.asarray(inputs["context_patches"]), np.asarray(inputs["sigma"])))
        return real_network(inputs)

    generator = PyramidGenerator(model)
    monkeypatch.setattr(generator, "network", network)
    plan = keras_hpdm.models.generation_plan.GenerationPlan.resolve(
        SPEC.num_levels, model.sampling, model.backbone.num_classes, conditions=[0, 2],
        num_steps=2, seed=7, verbose=0, return_pyramid=True, context_sigma=0.7)
    _, canvases = generator(plan)
    clean = model.generate([0, 2], num_steps=2, seed=7, verbose=0, return_pyramid=True,
                           context_sigma=0.0)[1]
    np.testing.assert_allclose(canvases[0], clean[0], atol=1e-6)  # level 0 as before
    noise = host_normal(canvases[0].shape, derive_seed(7, 1, 2), stream=0)
    noised = canvases[0] + np.float32(0.7) * noise
    assert contexts
    for patches, sigma in contexts:  # level 0 is one patch: the whole canvas
        np.testing.assert_allclose(sigma, 0.7)
        for row in patches[:, 0]:
            distances = [np.abs(row - sample).max() for sample in noised]
            assert min(distances) < 1e-5
            assert min(np.abs(row - sample).max() for sample in canvases[0]) > 0.5
    assert np.abs(canvases[1] - clean[1]).max() > 1e-3  # level 1 saw the noise


def test_callbacks_see_steps_and_stop_early(model):
    seen = []

    def stop_after_one(info):
        seen.append((info["level"], info["step"]))
        return info["step"] >= 1

    model.generate([0], num_steps=4, seed=0, verbose=0, callbacks=[stop_after_one],
                   sampler="euler")
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_context_chain_nests_tiles_in_parents():
    spec = keras_hpdm.PyramidSpec((2, 8, 8), 3)
    for offset in ([0, 0, 0], [6, 24, 12], [3, 17, 24], [1, 9, 5]):
        chain = spec.context_offsets(2, np.array(offset))
        np.testing.assert_array_equal(chain[-1], offset)
        spec.check_offsets(chain)  # raises unless every level lies inside its parent
        np.testing.assert_array_equal(spec.chain_coords(chain), spec.coords_from_offsets(chain))
        # A shorter chain (a coarser tile) has the same coordinates as the levels it covers.
        np.testing.assert_array_equal(spec.chain_coords(chain[:2]),
                                      spec.coords_from_offsets(chain)[:2])


@pytest.mark.parametrize("overlap", [(0.5, 0.5, 0.0), 0.0, 0.5, (0.25, 0.75, 0.3)])
def test_context_parents_lie_on_the_coarser_tile_grid(overlap):
    from keras_hpdm.diffusion.tiling import tile_grid
    from keras_hpdm.models.context_cache import context_chains

    spec = keras_hpdm.PyramidSpec((2, 8, 8), 3)
    starts = tile_grid(spec.level_size(2), spec.patch_size, overlap)
    centred = context_chains(spec, 2, starts, overlap, "center")
    np.testing.assert_array_equal(centred, [spec.context_offsets(2, o) for o in starts])
    chains = context_chains(spec, 2, starts, overlap, "grid")
    coarse = {tuple(t) for t in tile_grid(spec.level_size(1), spec.patch_size, overlap)}
    aligned = overlap in ((0.5, 0.5, 0.0), 0.0, 0.5)
    for start, chain in zip(starts, chains, strict=True):
        np.testing.assert_array_equal(chain[-1], start)
        spec.check_offsets(chain)  # every patch lies inside its parent
        if aligned:  # at 0 and 50% overlap every tile lies inside a coarser tile
            assert tuple(chain[1]) in coarse, (start, chain[1])
    parents = {tuple(c[1]) for c in chains}
    assert len(parents) <= len(coarse)
    if aligned:
        assert len(parents) < len(starts)  # shared: what keeps the context cache small


def test_the_context_cache_holds_coarse_patches_not_tiles():
    """The cache keeps each coarse patch's features once, however many tiles use them:
    its bytes do not grow with the number of tiles, the context network runs once per
    distinct parent chain, and sampling equals recomputing every context at every step."""
    from keras_hpdm.diffusion.tiling import tile_grid
    from keras_hpdm.models.context_cache import context_chains

    spec = keras_hpdm.PyramidSpec((2, 8, 8), 3)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_classes=3)
    m = with_context_weights(keras_hpdm.PatchDiffusionModel(backbone, seed=0))
    context_rows, held = [], {}
    real = m.predict_on_batch

    def counting(inputs):
        if "context_patches" in inputs:
            context_rows.append(len(inputs["context_patches"]))
        return real(inputs)

    def run(**options):
        context_rows.clear()

        def record(info):
            held[info["level"]] = info["context_cache_bytes"]
        out = m.generate([0, 2], num_steps=2, seed=4, verbose=0, return_pyramid=True,
                         callbacks=[record], tile_batch_size=64, **options)[1][-1]
        return out, dict(held), sum(context_rows)

    m.predict_on_batch = counting
    try:
        cached, cached_bytes, cached_rows = run(overlap=0.5, context_parents="grid")
        few_tiles, few_bytes, _ = run(overlap=0.0, context_parents="grid")
        fresh, _, fresh_rows = run(overlap=0.5, context_parents="grid", cache_context=False)
        # The default parents centre their tiles: fewer are shared, all are still kept once.
        centred, centred_bytes, centred_rows = run(overlap=0.5)
        centred_fresh, _, _ = run(overlap=0.5, cache_context=False)
    finally:
        del m.predict_on_batch
    # Cached contexts were computed in other batches than the tiles': float rounding only
    # (XLA's kernels depend on the batch), which two Euler steps carry to the canvas. A
    # wrong or misplaced context row moves whole tiles by ~0.1.
    difference = np.abs(cached - fresh)
    print(f"cached vs recomputed: max {difference.max():.1e}, mean {difference.mean():.1e}")
    assert difference.max() < 1e-4 and difference.mean() < 1e-6
    tiles = [len(tile_grid(spec.level_size(lv), spec.patch_size, 0.5)) for lv in (1, 2)]
    assert tiles == [27, 343]  # 50% overlap on all three axes
    starts = tile_grid(spec.level_size(2), spec.patch_size, 0.5)
    parents = len({tuple(c[1]) for c in context_chains(spec, 2, starts, 0.5)})
    assert parents <= 27
    # Level 1's context is the one level-0 patch: one entry per sample, any tile count.
    assert cached_bytes[1] == few_bytes[1] > 0
    # Level 2: the level-0 patch and the distinct level-1 parents (a level-1 entry is no
    # larger than a level-0 one: level 1 runs in fewer blocks), not 343 tiles' worth.
    assert cached_bytes[1] < cached_bytes[2] <= (1 + parents) * cached_bytes[1]
    # The context network ran once per sample and distinct chain (1 at level 1), not for
    # every tile at every step (2 Euler evaluations per level) as without the cache.
    assert cached_rows == 2 * (1 + parents)
    assert fresh_rows >= 2 * (27 + 343) * 2  # (+ padding of the last tile batch)
    centred_parents = len({tuple(c[1]) for c in context_chains(spec, 2, starts, 0.5,
                                                                 "center")})
    assert parents < centred_parents < 343
    assert cached_bytes[2] < centred_bytes[2] <= (1 + centred_parents) * cached_bytes[1]
    # (level 1: 2 rows; level 2: 2 x centred_parents, in tile batches of 64, the last padded)
    assert centred_rows == 2 + -(-2 * centred_parents // 64) * 64
    difference = np.abs(centred - centred_fresh)
    assert difference.max() < 1e-4 and difference.mean() < 1e-6
    assert np.abs(centred - cached).mean() > 1e-3  # the parents do change the samples


def test_the_plan_is_resolved_once_with_generates_defaults(model):
    """`generate` builds one frozen `GenerationPlan` (every argument checked, every default
    filled in) and hands it whole to the level-by-level code."""
    import dataclasses
    import inspect

    from keras_hpdm.models.generation_plan import GenerationPlan

    generate = inspect.signature(model.generate).parameters
    resolve = inspect.signature(GenerationPlan.resolve).parameters
    assert {k: p.default for k, p in generate.items()} == {
        k: resolve[k].default for k in generate}  # one set of defaults
    plan = GenerationPlan.resolve(SPEC.num_levels, model.sampling, 3, None, conditions=1,
                                  num_samples=2, num_steps=9, seed=4)
    assert (plan.num_samples, plan.conditions, plan.num_steps, plan.samplers) == (
        2, (1, 1), (9, 4), ("stochastic", "euler"))
    assert (plan.overlap, plan.tile_batch_size, plan.guided) == ((0.5, 0.5, 0.0), 16, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 5
    plans = []
    original = PyramidGenerator.__call__

    def spy(self, plan):
        plans.append(plan)
        return original(self, plan)

    kwargs = dict(conditions=1, num_samples=2, num_steps=2, sampler="euler", seed=4,
                  num_levels=1, verbose=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PyramidGenerator, "__call__", spy)
        video = model.generate(**kwargs)
    assert plans == [GenerationPlan.resolve(SPEC.num_levels, model.sampling, 3, **kwargs)]
    assert video.shape == (2,) + SPEC.level_size(0) + (3,)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="num_steps"):
        model.generate([0], num_steps=0, verbose=0)
    with pytest.raises(ValueError, match="num_steps"):
        model.generate([0], num_steps=(4,), verbose=0)
    with pytest.raises(ValueError, match="overlap"):
        model.generate([0], overlap=1.0, verbose=0)
    with pytest.raises(ValueError, match="tile_batch_size"):
        model.generate([0], tile_batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="text-conditional"):
        model.generate("a prompt", verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        model.generate([5], verbose=0)
    with pytest.raises(ValueError, match="sampler"):
        model.generate([0], sampler="ddim", verbose=0)
    with pytest.raises(ValueError, match="seed"):
        model.generate([0], seed=-1, verbose=0)
    unconditional = keras_hpdm.PatchDiffusionModel(
        RINBackbone.from_preset("tiny", pyramid=SPEC))
    with pytest.raises(ValueError, match="guidance_scale"):
        unconditional.generate(guidance_scale=3.0, verbose=0)
    with pytest.raises(ValueError, match="Class ids"):
        unconditional.generate([1], verbose=0)
    assert keras.config.backend() in ("jax", "tensorflow", "torch")


def test_bad_numeric_arguments(model):
    """NaN / Inf / floats fail up front naming the argument (issue 14): an infinite or NaN
    guidance weight used to return all-black videos, a float step count or class id a
    `'float' object is not iterable`."""
    cases = [
        ({"guidance_scale": float("inf")}, r"`guidance_scale` must be a finite number >= 0"),
        ({"guidance_scale": float("nan")}, r"`guidance_scale` must be a finite number >= 0"),
        ({"num_steps": 2.5}, r"`num_steps` must be a positive int or 2 positive ints"),
        ({"num_steps": (4, float("nan"))}, r"`num_steps\[1\]` must be an integer >= 1"),
        ({"num_samples": 1.5}, r"`num_samples` must be an integer >= 1 or None"),
        ({"num_levels": True}, r"`num_levels` must be an integer in \[1, 2\]"),
        ({"tile_batch_size": 2.0}, r"`tile_batch_size` must be an integer >= 1"),
        ({"overlap": (0.5, float("nan"), 0.0)}, r"`overlap\[1\]` must be a finite number in"),
        ({"verbose": 3}, r"`verbose` must be one of"),
        ({"use_ema": "no"}, r"`use_ema` must be True or False, got 'no'"),
        ({"cache_context": 1}, r"`cache_context` must be True or False"),
        ({"return_pyramid": None}, r"`return_pyramid` must be True or False"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            model.generate([0], **{"verbose": 0, "num_steps": 2, **kwargs})
    with pytest.raises(TypeError, match="`conditions` must be None, a class id"):
        model.generate(3.0, num_steps=2, verbose=0)
    with pytest.raises(TypeError, match="`conditions` must be None, a class id"):
        model.generate([1, 2.0], verbose=0)


def test_level_sigma_scale_shifts_each_levels_sigma_range(monkeypatch):
    """`sampling={"level_sigma_scale": True}`: level l samples over the model's range
    times `level_noise_scale**l` (the shift its training noise had); off by default."""
    from keras_hpdm.models import generation

    ranges = []

    def recording(num_steps, sigma_min, sigma_max, rho):
        ranges.append((sigma_min, sigma_max))
        return edm_sigmas(num_steps, sigma_min, sigma_max, rho)

    monkeypatch.setattr(generation, "edm_sigmas", recording)
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC)
    for scaled, level_1 in ((False, (0.002, 80.0)), (True, (0.002 * 3.0, 80.0 * 3.0))):
        ranges.clear()
        m = keras_hpdm.PatchDiffusionModel(backbone, level_noise_scale=3.0,
                                           sampling={"level_sigma_scale": scaled})
        m.generate(num_samples=1, num_steps=2, seed=0, verbose=0)
        np.testing.assert_allclose(ranges, [(0.002, 80.0), level_1], rtol=1e-12)
        assert m.get_config()["sampling"]["level_sigma_scale"] is scaled
    assert keras_hpdm.PatchDiffusionModel(backbone).sampling["level_sigma_scale"] is False
    with pytest.raises(ValueError, match=r'`sampling\["level_sigma_scale"\]` must be True or'):
        keras_hpdm.PatchDiffusionModel(backbone, sampling={"level_sigma_scale": "yes"})


def test_a_model_carries_its_own_guidance_scale(model):
    """`sampling={"guidance_scale": w}` is what `generate()` guides with when no
    `guidance_scale` is given (an explicit one still wins); saved in the config."""
    guided = keras_hpdm.PatchDiffusionModel.from_config(
        {**model.get_config(), "sampling": {**model.sampling, "guidance_scale": 3.0}})
    for target, source in zip(guided.weights, model.weights, strict=True):
        target.assign(ops.convert_to_numpy(source))
    kw = dict(num_steps=2, num_levels=1, seed=5, verbose=0)
    carried = guided.generate([0, 2], **kw)
    np.testing.assert_array_equal(carried, model.generate([0, 2], guidance_scale=3.0, **kw))
    plain = model.generate([0, 2], **kw)
    assert np.abs(carried.astype(int) - plain).max() > 0  # the check can see the default
    np.testing.assert_array_equal(guided.generate([0, 2], guidance_scale=1.0, **kw), plain)
    # Unconditional sampling has nothing to guide towards: the model's scale is not used.
    np.testing.assert_array_equal(guided.generate(num_samples=2, **kw),
                                  model.generate(num_samples=2, **kw))
    assert guided.get_config()["sampling"]["guidance_scale"] == 3.0
    assert model.sampling["guidance_scale"] == 1.0
    for bad in (-1.0, float("nan"), "4", [3.0], [3.0, -1.0]):  # [3.0]: the pyramid has 2
        with pytest.raises(ValueError, match=r'sampling\["guidance_scale"\]'):
            keras_hpdm.PatchDiffusionModel(model.backbone, sampling={"guidance_scale": bad})


def test_a_model_carries_per_level_guidance_and_its_context_sigma(model):
    """`sampling={"guidance_scale": [w0, w1], "context_sigma": s}` is what `generate()`
    samples with by default, saved in the config; generating fewer levels uses the first
    levels' scales (and steps: a per-level `num_steps` used to fail there)."""
    sampling = {**model.sampling, "guidance_scale": [3.0, 1.5], "context_sigma": 0.6,
                "num_steps": [2, 3]}
    carrier = keras_hpdm.PatchDiffusionModel.from_config(
        {**model.get_config(), "sampling": sampling})
    for target, source in zip(carrier.weights, model.weights, strict=True):
        target.assign(ops.convert_to_numpy(source))
    kw = dict(num_steps=2, seed=5, verbose=0)
    carried = carrier.generate([0, 2], **kw)
    np.testing.assert_array_equal(
        carried, model.generate([0, 2], guidance_scale=(3.0, 1.5), context_sigma=0.6, **kw))
    np.testing.assert_array_equal(carrier.generate([0, 2], num_levels=1, seed=5, verbose=0),
                                  model.generate([0, 2], num_levels=1, guidance_scale=3.0, **kw))
    for other in (dict(guidance_scale=(3.0, 4.0), context_sigma=0.6),
                  dict(guidance_scale=(3.0, 1.5), context_sigma=0.002)):
        assert np.abs(model.generate([0, 2], **other, **kw).astype(int) - carried).max() > 0
    restored = keras_hpdm.PatchDiffusionModel.from_config(carrier.get_config())
    assert restored.sampling["guidance_scale"] == [3.0, 1.5]
    assert restored.sampling["context_sigma"] == 0.6


def test_context_cache_budget_and_bfloat16_store(model):
    """`context_cache_budget` caps what the cache holds (the rest is recomputed: the same
    videos), and `context_cache_dtype="bfloat16"` holds half the bytes for nearly the same
    videos; `info["context_cache_bytes"]` reports it."""
    held = {}

    def run(**options):
        def record(info):
            held[info["level"]] = info["context_cache_bytes"]
        pyramid = model.generate([1, 2], num_steps=3, seed=3, verbose=0, return_pyramid=True,
                                 callbacks=[record], **options)[1]
        return pyramid[-1], dict(held)

    full, full_bytes = run()
    assert full_bytes[0] == 0 and full_bytes[1] > 0  # level 0 has no context
    fresh, fresh_bytes = run(cache_context=False)
    assert fresh_bytes[1] == 0
    half, half_bytes = run(context_cache_budget=full_bytes[1] // 2)
    assert 0 < half_bytes[1] <= full_bytes[1] // 2
    nothing, nothing_bytes = run(context_cache_budget=0)
    assert nothing_bytes[1] == 0
    for out in (half, nothing):  # cached contexts equal recomputed ones
        np.testing.assert_allclose(out, full, atol=2e-5)
        np.testing.assert_allclose(out, fresh, atol=2e-5)
    small, small_bytes = run(context_cache_dtype="bfloat16")
    assert small_bytes[1] * 2 == full_bytes[1]
    # bfloat16 rounds each cached value by up to 2**-9 of it; the videos moved by 1.7e-3 of
    # their scale (observed): the bound is 2.5 bfloat16 steps (2**-8), and 0 would mean the
    # rounded store was never read.
    error = np.abs(small - full).max() / np.abs(full).max()
    print(f"bfloat16 store: max |difference| / max |value| = {error:.1e}")
    assert 0 < error < 1e-2
    for kwargs, match in [({"context_cache_budget": -1}, "`context_cache_budget` must be"),
                          ({"context_cache_budget": 1.5}, "`context_cache_budget` must be"),
                          ({"context_cache_dtype": "float16"}, "`context_cache_dtype` must be "
                                                               "one of"),
                          ({"context_parents": "centre"}, "`context_parents` must be one of"),
                          ({"context_parents": None}, "`context_parents` must be one of")]:
        with pytest.raises(ValueError, match=match):
            model.generate([0], num_steps=2, verbose=0, **kwargs)
