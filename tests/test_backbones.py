import json
import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_hpdm import PyramidSpec
from keras_hpdm.backbones import (
    RINBackbone,
    UNet3DBackbone,
    linear_levels_per_block,
    resolve_levels_per_block,
)
from keras_hpdm.testing import TestCase, run_in_backends

SPEC = PyramidSpec((2, 8, 8), 3)
BACKBONES = {"rin": RINBackbone, "unet": UNet3DBackbone}


def make_inputs(batch=2, seed=0, levels=3, label=True):
    rng = np.random.default_rng(seed)
    inputs = {
        "patches": rng.normal(size=(batch, levels) + SPEC.patch_size + (3,)).astype("float32"),
        "sigma": np.exp(rng.normal(size=(batch, levels))).astype("float32"),
        "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(seed + i))[:levels]
                            for i in range(batch)]).astype("float32"),
    }
    if label:
        inputs["label"] = rng.integers(0, 5, batch).astype("int32")
    return inputs


def make_backbone(kind, **overrides):
    backbone = BACKBONES[kind].from_preset("tiny", pyramid=SPEC, num_classes=5, **overrides)
    backbone(make_inputs())  # build
    return backbone


def randomize_fusions(backbone, seed=0):
    """Fresh DCF layers are identities; give them context/coordinate weights."""
    rng = np.random.default_rng(seed)
    for fusion in backbone.fusions:
        for v in (fusion.context_kernel, fusion.position_kernel):
            v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def fill_zero_weights(backbone, seed=0):
    """Zero-initialised kernels (identity residual branches, DCF context) get values, so
    every path computes something."""
    rng = np.random.default_rng(seed)
    for v in backbone.weights:
        if not np.any(numpy(v)):
            v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))


@pytest.mark.parametrize("kind", list(BACKBONES))
class TestBackbones:
    def test_causality_coarse_levels_never_see_finer(self, kind):
        backbone = make_backbone(kind)
        randomize_fusions(backbone)
        inputs = make_inputs()
        base = numpy(backbone(inputs))
        for level in (1, 2):
            perturbed = {k: np.array(v) for k, v in inputs.items()}
            perturbed["patches"][:, level] += 1.0
            out = numpy(backbone(perturbed))
            np.testing.assert_array_equal(out[:, :level], base[:, :level])
            assert np.abs(out[:, level:] - base[:, level:]).max() > 1e-4

    def test_context_flows_to_finer_levels(self, kind):
        backbone = make_backbone(kind)
        randomize_fusions(backbone)
        inputs = make_inputs()
        base = numpy(backbone(inputs))
        perturbed = {k: np.array(v) for k, v in inputs.items()}
        perturbed["patches"][:, 0] += 1.0
        out = numpy(backbone(perturbed))
        assert np.abs(out[:, 2] - base[:, 2]).max() > 1e-4

    def test_adaptive_computation_skips_blocks(self, kind):
        """With identity DCF (fresh), levels are independent; perturbing block 0 (which runs
        level 0 only) must leave the finer levels bit-for-bit unchanged."""
        backbone = make_backbone(kind, **({"levels_per_block": (1, 3)} if kind == "rin" else {}))
        assert backbone.levels_per_block[0] == 1
        inputs = make_inputs()
        base = numpy(backbone(inputs))
        block_weights = (backbone.blocks[0].trainable_weights if kind == "rin"
                         else [w for layer in backbone.stage_layers[0]
                               for w in layer.trainable_weights])
        rng = np.random.default_rng(1)
        for w in block_weights:
            w.assign(numpy(w) + rng.normal(scale=0.1, size=w.shape).astype("float32"))
        out = numpy(backbone(inputs))
        assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-4
        np.testing.assert_array_equal(out[:, 1:], base[:, 1:])

    def test_cached_context_matches_full_forward(self, kind):
        backbone = make_backbone(kind)
        randomize_fusions(backbone)
        inputs = make_inputs()
        full = numpy(backbone(inputs))
        for split in (1, 2):
            head = {k: (v[:, :split] if k != "label" else v) for k, v in inputs.items()}
            tail = {k: (v[:, split:] if k != "label" else v) for k, v in inputs.items()}
            context = backbone.encode_context(head)
            np.testing.assert_allclose(numpy(backbone(tail, context=context)), full[:, split:],
                                       atol=1e-5)

    def test_truncated_pyramid_keeps_outputs(self, kind):
        backbone = make_backbone(kind)
        randomize_fusions(backbone)
        inputs = make_inputs()
        full = numpy(backbone(inputs))
        cut = {k: (v[:, :2] if k != "label" else v) for k, v in inputs.items()}
        np.testing.assert_allclose(numpy(backbone(cut)), full[:, :2], atol=1e-5)

    def test_bad_inputs(self, kind):
        backbone = make_backbone(kind)
        inputs = make_inputs()
        with pytest.raises(ValueError, match="missing"):
            backbone({k: v for k, v in inputs.items() if k != "coords"})
        with pytest.raises(ValueError, match="patches"):
            backbone({**inputs, "patches": inputs["patches"][..., :2]})
        with pytest.raises(ValueError, match="sigma"):
            backbone({**inputs, "sigma": inputs["sigma"][:, :2]})
        with pytest.raises(ValueError, match="label"):
            backbone({k: v for k, v in inputs.items() if k != "label"})
        with pytest.raises(ValueError, match="text_embeddings"):
            backbone({**inputs, "text_embeddings": np.zeros((2, 3, 4), "float32")})
        with pytest.raises(ValueError, match="levels_per_block"):
            make_backbone(kind, levels_per_block=[2, 1] + [3] * (backbone.num_blocks - 2))
        with pytest.raises(ValueError, match="num_heads"):
            make_backbone(kind, num_heads=3)
        with pytest.raises(ValueError, match="preset"):
            BACKBONES[kind].from_preset("huge", pyramid=SPEC)


class BackboneSavingTest(TestCase):
    def test_config_and_keras_save_load(self):
        for cls in BACKBONES.values():
            backbone = cls.from_preset("tiny", pyramid=SPEC, num_classes=5)
            inputs = make_inputs()
            backbone(inputs)
            randomize_fusions(backbone)
            self.run_serialization_test(backbone)
            restored = self.run_model_saving_test(backbone, inputs, atol=1e-6)
            self.assertEqual(restored.pyramid, SPEC)
            self.assertEqual(restored.levels_per_block, backbone.levels_per_block)

    def test_files_from_before_an_option_load_as_they_were_trained(self):
        """A config without `adaptive_norms` / `fixed_positions` (files saved before they
        existed, e.g. the bundled model) loads with both off; new backbones have both on."""
        backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=5)
        config = backbone.get_config()
        self.assertTrue(config["adaptive_norms"] and config["fixed_positions"])
        old = {k: v for k, v in config.items() if k not in ("adaptive_norms", "fixed_positions")}
        restored = RINBackbone.from_config(old)
        self.assertFalse(restored.adaptive_norms)
        self.assertFalse(restored.tokenizer.fixed_positions)
        inputs = make_inputs()
        restored(inputs)
        self.assertFalse(any("modulation" in w.path for w in restored.weights))

    def test_mixed_precision_float32_islands(self):
        """Under a mixed policy: float32 islands and output, and the float32 backbone's
        function (same weights) to the precision of the compute dtype."""
        inputs = make_inputs()
        # Bounds on the relative RMS difference. Observed: bfloat16 (RIN) 0.0095-0.014,
        # float16 (UNet) 0.0023-0.0077 (TensorFlow's CPU float16 kernels are the least
        # precise); about 2.5x margin.
        for policy, cls, bound in (("mixed_bfloat16", RINBackbone, 0.04),
                                   ("mixed_float16", UNet3DBackbone, 0.02)):
            reference = cls.from_preset("tiny", pyramid=SPEC, num_classes=5)
            reference(inputs)
            fill_zero_weights(reference)
            backbone = cls.from_preset("tiny", pyramid=SPEC, num_classes=5, dtype=policy)
            backbone(inputs)
            backbone.set_weights(reference.get_weights())
            out = backbone(inputs)
            self.assertEqual(keras.backend.standardize_dtype(out.dtype), "float32")
            self.assertAllFinite(out)
            islands = 0
            for layer in backbone._flatten_layers(include_self=False):
                if isinstance(layer, (keras.layers.LayerNormalization,
                                      keras.layers.GroupNormalization)) or getattr(
                        layer, "float32_island", False):
                    self.assertEqual(layer.compute_dtype, "float32", layer.name)
                    islands += 1
            self.assertGreater(islands, 2)
            want = numpy(reference(inputs))
            error = np.sqrt(np.mean((numpy(out) - want) ** 2)) / want.std()
            print(f"\n{policy}: relative RMS difference from float32 {error:.2e}")
            self.assertLess(error, bound)


@pytest.mark.parametrize("policy, cls", [
    ("float32", RINBackbone),
    ("mixed_bfloat16", RINBackbone),
    ("mixed_float16", UNet3DBackbone),
])
def test_nearby_noise_levels_stay_apart(policy, cls):
    """The float32 sigma embedding exists to tell nearby noise levels apart: sigma changed
    by 2**-13 (relative; below half precision's resolution) changes every output level."""
    inputs = make_inputs()
    near = {**inputs, "sigma": (inputs["sigma"] * (1 + 2.0**-13)).astype("float32")}
    assert np.all(near["sigma"] != inputs["sigma"])
    backbone = cls.from_preset("tiny", pyramid=SPEC, num_classes=5, dtype=policy)
    backbone(inputs)
    fill_zero_weights(backbone)
    change = np.abs(numpy(backbone(near)) - numpy(backbone(inputs))).max(axis=(2, 3, 4, 5))
    assert np.all(change > 0), change  # per (sample, level)


def test_levels_schedule_validation():
    assert linear_levels_per_block(6, 3) == (1, 1, 2, 2, 3, 3)
    assert resolve_levels_per_block(None, 4, 3) == (3, 3, 3, 3)
    for bad in ([1, 2], [0, 3], [2, 1, 3], [1, 2, 2], [1, 2, 4], "cubic", [1, 2.5, 3]):
        with pytest.raises(ValueError, match="levels_per_block"):
            resolve_levels_per_block(bad, 3, 3)


def rin_parameter_count(config, spec, channels=3, num_classes=None, text_dim=None,
                        frequency_dim=256):
    """RIN backbone parameters from the architecture (paper §4.2-4.3, RIN; DESIGN.md §5):
    attention = q/k/v projections without bias + output projection with bias; MLP =
    two biased Dense layers; LayerNorm = scale + offset; DCF = feature, context and
    coordinate kernels + bias; conditions enter the sinusoidal noise features (width
    `frequency_dim`) before the 2-layer sigma MLP, and the class and the text tokens also
    enter as latent tokens of their own; every block's norms are modulated by the
    conditioning vector (scale and shift per norm), and token mixing = a norm + a depthwise
    3x3 spatial and 3-tap temporal kernel + bias (both on unless the config says otherwise)."""
    d, dz, cond = config["data_dim"], config["latent_dim"], config["cond_dim"]
    ratio = config["mlp_ratio"]
    data_ratio = config.get("data_mlp_ratio") or ratio
    pixels = int(np.prod(config["tokenizer_patch"])) * channels
    tokens = int(np.prod([r // p for r, p in zip(spec.patch_size, config["tokenizer_patch"],
                                                 strict=True)]))

    def dense(n_in, n_out):
        return n_in * n_out + n_out

    def norm(n):
        return 2 * n

    def attention(n_query, n_context):
        return n_query * n_query + 2 * n_context * n_query + dense(n_query, n_query)

    def mlp(n, r):
        return dense(n, r * n) + dense(r * n, n)

    read = norm(dz) + norm(d) + attention(dz, d) + norm(dz) + mlp(dz, ratio)
    latent = norm(dz) + attention(dz, dz) + norm(dz) + mlp(dz, ratio)
    write = norm(d) + norm(dz) + attention(d, dz) + norm(d) + mlp(d, data_ratio)
    # Adaptive norms: a (scale, shift) pair per norm from the conditioning vector.
    modulated = (2 * dz + d) + 2 * config["num_latent_layers"] * dz + (dz + 2 * d)
    block = read + config["num_latent_layers"] * latent + write
    if config.get("adaptive_norms", True):
        block += dense(cond, 2 * modulated)
    if config.get("token_mixing", True):
        block += norm(d) + 9 * d + 3 * d + d
    fusion = 2 * d * d + 3 * d + d
    total = (
        dense(pixels, d) + tokens * d  # tokenizer: patch projection, learned positions
        + norm(d) + dense(d, pixels)  # detokenizer
        + dense(frequency_dim, cond) + dense(cond, cond)  # sigma MLP
        + dense(cond, dz) + config["num_latents"] * dz  # condition latent, initial latents
        + config["num_blocks"] * (fusion + block)
    )
    if num_classes:  # + the null class: into the noise features and as a latent token
        total += (num_classes + 1) * (frequency_dim + dz)
    if text_dim:  # attention-pooling queries, pooled -> noise features, tokens -> latents
        heads = math.gcd(8, text_dim)
        total += heads * text_dim + dense(text_dim, frequency_dim) + dense(text_dim, dz)
    return total


def backbone_param_count(backbone):
    backbone.build()  # symbolic: no forward pass on data
    return sum(int(np.prod(w.shape)) for w in backbone.weights)


@pytest.mark.parametrize("token_mixing", [False, True])
def test_preset_parameter_counts(token_mixing):
    """On every backend: "mini" (data and latent widths differ) with classes and text."""
    spec = PyramidSpec((2, 16, 16), 3)
    conditions = {"num_classes": 5, "text_dim": 12, "channels": 1}
    backbone = RINBackbone.from_preset("mini", pyramid=spec, token_mixing=token_mixing,
                                       **conditions)
    config = {**RINBackbone.presets["mini"]["config"], "token_mixing": token_mixing}
    assert backbone_param_count(backbone) == rin_parameter_count(config, spec, **conditions)


def _params_for(metadata):
    reference = dict(metadata["params_for"])
    spec = PyramidSpec(tuple(reference.pop("patch_size")), 3)
    return spec, reference


@pytest.mark.parametrize("name", sorted(RINBackbone.presets))
def test_rin_preset_metadata_counts_its_parameters(name):
    """Every RIN preset's `metadata["params"]` is what its architecture counts for the
    instantiation `params_for` names (the big ones are never built here)."""
    preset = RINBackbone.presets[name]
    spec, reference = _params_for(preset["metadata"])
    text_dim = preset["config"].get("text_dim")
    assert preset["metadata"]["params"] == rin_parameter_count(
        preset["config"], spec, text_dim=text_dim, **reference)


@pytest.mark.parametrize("cls", [RINBackbone, UNet3DBackbone])
def test_small_presets_metadata_matches_the_built_backbone(cls):
    """The presets small enough to build: the count a built backbone has."""
    for name in ("tiny", "mini", "small"):
        if name not in cls.presets:
            continue
        spec, reference = _params_for(cls.presets[name]["metadata"])
        backbone = cls.from_preset(name, pyramid=spec, **reference)
        assert backbone_param_count(backbone) == cls.presets[name]["metadata"]["params"], name


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="backend-independent; initialising 170M weights once is enough")
def test_paper_presets_parameter_counts():
    """HPDM-S exactly as the architecture counts it, and within 15% of the paper's 178M (as
    the preset's documentation says: the paper gives neither the latent layers per block
    nor the MLP widths)."""
    spec = PyramidSpec((16, 64, 64), 3)
    backbone = RINBackbone.from_preset("hpdm_s", pyramid=spec, num_classes=101)
    params = backbone_param_count(backbone)
    assert params == rin_parameter_count(RINBackbone.presets["hpdm_s"]["config"], spec,
                                         num_classes=101)
    assert abs(params / 178e6 - 1) < 0.15, params


@pytest.mark.skipif(keras.config.backend() != "jax", reason="XLA cost analysis is JAX's")
def test_adaptive_computation_flops():
    """Compiled forward FLOPs are linear in the block-level units AC runs: all-levels
    (3+3) vs (1+3) vs (2+3) pin the per-unit cost, and (1, 1, 2, 2, 3, 3) saves 6 units."""
    import jax

    def flops(schedule, blocks):
        spec = SPEC
        backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_blocks=blocks,
                                           levels_per_block=schedule)
        inputs = make_inputs(label=False)
        backbone(inputs)
        fn = jax.jit(lambda values, x: backbone.stateless_call(values, [], x)[0])
        values = [v.value for v in backbone.trainable_variables]
        cost = fn.lower(values, inputs).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return cost["flops"]

    f33, f13, f23 = flops(None, 2), flops((1, 3), 2), flops((2, 3), 2)
    unit = f33 - f23
    assert unit > 0
    np.testing.assert_allclose(f33 - f13, 2 * unit, rtol=0.05)
    f_all, f_ac = flops(None, 6), flops((1, 1, 2, 2, 3, 3), 6)
    fixed = f33 - 6 * unit
    expected = (fixed + 12 * unit) / (fixed + 18 * unit)
    print(f"\nforward FLOPs all-levels {f_all:.3e}, AC {f_ac:.3e}, ratio {f_ac / f_all:.3f} "
          f"(expected {expected:.3f})")
    np.testing.assert_allclose(f_ac / f_all, expected, rtol=0.05)
    assert f_ac / f_all < 0.8


PARITY_CODE = """
import keras
from keras import ops
import keras_hpdm
from keras_hpdm.backbones import RINBackbone, UNet3DBackbone
import json
outs = {}
for kind, cls in (("rin", RINBackbone), ("unet", UNet3DBackbone)):
    config = json.loads(str(INPUTS[kind + "_config"]))
    backbone = keras.saving.deserialize_keras_object(config)
    inputs = {k: INPUTS[k] for k in ("patches", "sigma", "coords", "label")}
    backbone(inputs)
    backbone.load_weights(str(INPUTS[kind + "_weights"]))
    outs[kind] = ops.convert_to_numpy(backbone(inputs))
OUTPUTS = outs
"""


# It runs every backend in subprocesses, so it runs once: in the torch pass, the shortest
# (scripts/test.sh runs the passes side by side).
@pytest.mark.skipif(keras.config.backend() != "torch",
                    reason="runs every backend itself, from the torch pass")
def test_cross_backend_parity(tmp_path):
    inputs = make_inputs()
    payload = dict(inputs)
    for kind, cls in BACKBONES.items():
        backbone = cls.from_preset("tiny", pyramid=SPEC, num_classes=5)
        backbone(inputs)
        randomize_fusions(backbone)
        path = os.path.join(tmp_path, f"{kind}.weights.h5")
        backbone.save_weights(path)
        payload[f"{kind}_weights"] = np.array(path)
        payload[f"{kind}_config"] = np.array(json.dumps(
            keras.saving.serialize_keras_object(backbone)))
    results = run_in_backends(PARITY_CODE, ["jax", "tensorflow", "torch"], inputs=payload)
    diffs = {}
    for kind in BACKBONES:
        ref = results["jax"][kind]
        for backend in ("tensorflow", "torch"):
            diffs[(kind, backend)] = float(np.abs(results[backend][kind] - ref).max())
            np.testing.assert_allclose(results[backend][kind], ref, atol=1e-4, rtol=1e-4)
    print("\ncross-backend max abs diff:", diffs)


def perturb_first_block(backbone, kind, seed=1):
    """Adds noise to block 0's weights (with the tiny presets it runs level 0 only)."""
    weights = (backbone.blocks[0].trainable_weights if kind == "rin"
               else [w for layer in backbone.stage_layers[0] for w in layer.trainable_weights])
    rng = np.random.default_rng(seed)
    for w in weights:
        w.assign(numpy(w) + rng.normal(scale=0.1, size=w.shape).astype("float32"))


@pytest.mark.parametrize("kind", list(BACKBONES))
class TestContextSwitches:
    """The paper's ablation switches (Table 3): where fusion runs, coordinates, detach."""

    def test_fusion_mode_decides_where_context_enters(self, kind):
        """Block 0 runs level 0 only. Deep fusion reads level 0's later block inputs, so
        changing block 0 changes the finer levels; shallow fusion reads only level 0's
        first-block inputs (the tokenizer's output) and no fusion reads nothing, so the
        finer levels stay bit-for-bit the same. Level 0 still feeds them under shallow
        fusion and never under none. Cached context gives the full forward pass."""
        inputs = make_inputs()
        shifted = {**inputs, "patches": inputs["patches"].copy()}
        shifted["patches"][:, 0] += 1.0
        schedule = {"levels_per_block": (1, 3)} if kind == "rin" else {}
        for mode, fusing_blocks in (("deep", None), ("shallow", [0]), ("none", [])):
            backbone = make_backbone(kind, fusion_mode=mode, **schedule)
            fill_zero_weights(backbone)
            assert backbone.levels_per_block[0] == 1
            base = numpy(backbone(inputs))
            perturb_first_block(backbone, kind)
            changed, moved = numpy(backbone(inputs)), numpy(backbone(shifted))
            assert np.abs(changed[:, 0] - base[:, 0]).max() > 1e-4
            block0_moves_finer = np.abs(changed[:, 1:] - base[:, 1:]).max()
            level0_moves_finer = np.abs(moved[:, 1:] - changed[:, 1:]).max()
            if mode == "deep":
                assert block0_moves_finer > 1e-4
                continue
            assert block0_moves_finer == 0, mode
            assert (level0_moves_finer > 1e-4) if mode == "shallow" else (
                level0_moves_finer == 0)
            assert [f.name for f in backbone.fusions] == [f"fusion_{b}" for b in fusing_blocks]
            head = {k: (v[:, :1] if k != "label" else v) for k, v in inputs.items()}
            tail = {k: (v[:, 1:] if k != "label" else v) for k, v in inputs.items()}
            context = backbone.encode_context(head)
            assert len(context["features"]) == len(fusing_blocks)
            np.testing.assert_allclose(numpy(backbone(tail, context=context)), changed[:, 1:],
                                       atol=1e-5)

    def test_detach_context_reaches_every_fusion_and_keeps_the_forward_pass(self, kind):
        """(That it stops the gradient is `DeepContextFusionTest`'s to show.)"""
        reference = make_backbone(kind)
        fill_zero_weights(reference, seed=2)
        backbone = make_backbone(kind, detach_context=True)
        backbone.set_weights(reference.get_weights())
        assert backbone.fusions and all(f.detach_context for f in backbone.fusions)
        assert not any(f.detach_context for f in reference.fusions)
        inputs = make_inputs()
        np.testing.assert_array_equal(numpy(backbone(inputs)), numpy(reference(inputs)))

    def test_use_coords_off_removes_the_coordinate_term(self, kind):
        """Level 0 has zero context, so with coordinates off its output cannot depend on
        where its patch lies; with them on it does."""
        inputs = make_inputs()
        moved = {**inputs, "coords": inputs["coords"].copy()}
        moved["coords"][:, 0, 3:] += 0.25  # level 0's offset: only the coordinate term
        changes = {}
        for use_coords in (True, False):
            backbone = make_backbone(kind, use_coords=use_coords)
            fill_zero_weights(backbone)
            changes[use_coords] = np.abs(numpy(backbone(moved))[:, 0]
                                         - numpy(backbone(inputs))[:, 0]).max()
            has_positions = [f.position_kernel is not None for f in backbone.fusions]
            assert all(has_positions) if use_coords else not any(has_positions)
        assert changes[True] > 1e-4
        assert changes[False] == 0

    def test_switches_are_saved_and_checked(self, kind):
        backbone = make_backbone(kind, fusion_mode="shallow", use_coords=False,
                                 detach_context=True)
        fill_zero_weights(backbone)
        config = backbone.get_config()
        assert (config["fusion_mode"], config["use_coords"], config["detach_context"]) == (
            "shallow", False, True)
        restored = BACKBONES[kind].from_config(json.loads(json.dumps(config)))
        inputs = make_inputs()
        restored(inputs)
        restored.set_weights(backbone.get_weights())
        np.testing.assert_array_equal(numpy(restored(inputs)), numpy(backbone(inputs)))
        assert restored.fusions[0].detach_context and not restored.fusions[0].use_coords
        with pytest.raises(ValueError, match="fusion_mode.*deep.*shallow.*none"):
            make_backbone(kind, fusion_mode="deeep")
        for name in ("use_coords", "detach_context"):
            with pytest.raises(ValueError, match=name):
                make_backbone(kind, **{name: "no"})


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_coarse_prior_starts_at_zero_and_moves_level_0_only(kind):
    """A new coarse prior leaves a trained network's output exactly as it was (what a warm
    start relies on). Once learned, it moves level 0 by a map of the conditions (class,
    noise level, pooled text) and never a finer level, nor a pass whose level 0 is cached
    context. Saved in the config; False for files from before it."""
    inputs = make_inputs()
    reference = make_backbone(kind)
    fill_zero_weights(reference, seed=3)
    backbone = make_backbone(kind, coarse_prior=True)
    prior = backbone.coarse_prior_map
    assert prior.kernel.shape == (backbone.cond_dim, 2 * 8 * 8 * 3)
    np.testing.assert_array_equal(numpy(prior.kernel), 0.0)
    others = [w for w in backbone.weights if f"/{prior.name}/" not in w.path]
    assert len(others) == len(backbone.weights) - 2 == len(reference.weights)
    for target, source in zip(others, reference.weights, strict=True):
        target.assign(numpy(source))
    base = numpy(reference(inputs))
    np.testing.assert_array_equal(numpy(backbone(inputs)), base)
    rng = np.random.default_rng(0)
    prior.kernel.assign(rng.normal(scale=0.3, size=prior.kernel.shape).astype("float32"))
    out = numpy(backbone(inputs))
    np.testing.assert_array_equal(out[:, 1:], base[:, 1:])
    assert np.abs(out[:, 0] - base[:, 0]).min() > 0
    relabelled = numpy(backbone({**inputs, "label": (inputs["label"] + 1) % 5}))
    assert np.abs(relabelled[:, 0] - out[:, 0]).max() > 1e-3
    head = {k: (v[:, :1] if k != "label" else v) for k, v in inputs.items()}
    tail = {k: (v[:, 1:] if k != "label" else v) for k, v in inputs.items()}
    cached = numpy(backbone(tail, context=backbone.encode_context(head)))
    np.testing.assert_allclose(cached, base[:, 1:], atol=1e-5)
    config = backbone.get_config()
    assert config["coarse_prior"] is True
    restored = BACKBONES[kind].from_config(json.loads(json.dumps(config)))
    restored(inputs)
    restored.set_weights(backbone.get_weights())
    np.testing.assert_array_equal(numpy(restored(inputs)), out)
    del config["coarse_prior"]
    assert BACKBONES[kind].from_config(config).coarse_prior_map is None
    with pytest.raises(ValueError, match="coarse_prior"):
        make_backbone(kind, coarse_prior="yes")


def test_coarse_prior_reads_the_pooled_text():
    """In a text model the prior also reads the pooled text itself: two prompts move level
    0 apart through the prior alone."""
    spec = PyramidSpec((2, 8, 8), 2)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, channels=1, text_dim=6,
                                       coarse_prior=True)
    rng = np.random.default_rng(0)
    inputs = {"patches": rng.normal(size=(2, 2, 2, 8, 8, 1)).astype("float32"),
              "sigma": np.full((2, 2), 5.0, "float32"),
              "coords": np.stack([spec.coords_from_offsets(spec.sample_offsets(i))
                                  for i in range(2)]).astype("float32"),
              "text_embeddings": rng.normal(size=(2, 3, 6)).astype("float32")}
    backbone(inputs)
    kernel = backbone.coarse_prior_map.kernel
    assert kernel.shape == (backbone.cond_dim + 6, 2 * 8 * 8)
    # Only the pooled-text rows of the kernel are set: the prior reads the text directly.
    values = np.zeros(kernel.shape, "float32")
    values[backbone.cond_dim:] = rng.normal(size=(6, 128))
    kernel.assign(values)
    zeros = ops.zeros((2, 2, 2, 8, 8, 1), "float32")
    silent = np.zeros((2, 2, backbone.cond_dim), "float32")  # SiLU(0) = 0: text alone

    def prior(text):
        return numpy(backbone.add_coarse_prior(zeros, silent, text))

    text = inputs["text_embeddings"]
    ours, swapped = prior(text), prior(text[::-1])
    assert np.abs(ours[:, 0]).max() > 0.1 and np.abs(ours[:, 1]).max() == 0
    np.testing.assert_allclose(swapped[::-1], ours, atol=1e-6)
    assert np.abs(ours[0, 0] - ours[1, 0]).max() > 0.1
    np.testing.assert_array_equal(prior(np.zeros_like(text)), 0.0)  # the null condition
