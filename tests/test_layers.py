import itertools

import numpy as np
import pytest
from keras import ops
from scipy import ndimage, special

from keras_hpdm import PyramidSpec
from keras_hpdm.layers import (
    Attention,
    ClassEmbedding,
    CropResample,
    DeepContextFusion,
    PatchDetokenizer,
    PatchTokenizer,
    RINBlock,
    SigmaEmbedding,
    TextAttentionPooling,
    TokenGridMixing,
)
from keras_hpdm.layers.deep_context_fusion import relative_boxes
from keras_hpdm.layers.patch_tokenizer import sincos_positions
from keras_hpdm.testing import TestCase

RNG = np.random.default_rng(123)


def scipy_crop(features, box, out_size):
    """Independent reference: map_coordinates (order 1) at the box's cell centres."""
    grids = []
    for a, n_out in enumerate(out_size):
        n_in = features.shape[a]
        u = box[a] + box[a + 3] * (np.arange(n_out) + 0.5) / n_out
        grids.append(u * n_in - 0.5)
    mesh = np.meshgrid(*grids, indexing="ij")
    return np.stack(
        [
            ndimage.map_coordinates(
                features[..., c].astype(np.float64), mesh, order=1, mode="nearest"
            )
            for c in range(features.shape[-1])
        ],
        axis=-1,
    )


class CropResampleTest(TestCase):
    def test_matches_scipy_map_coordinates(self):
        rng = np.random.default_rng(0)
        features = rng.normal(size=(4, 3, 6, 5, 2)).astype("float32")
        start = rng.uniform(0, 0.5, size=(4, 3))
        extent = rng.uniform(0.1, 0.5, size=(4, 3))
        extent[0] = 1.0 - start[0]  # a box touching the far edge
        start[1], extent[1] = 0.0, 1.0  # the whole input: identity-like resampling
        boxes = np.concatenate([start, extent], -1).astype("float32")
        out = ops.convert_to_numpy(CropResample((2, 4, 3))(features, boxes))
        for b in range(4):
            np.testing.assert_allclose(
                out[b], scipy_crop(features[b], boxes[b], (2, 4, 3)), atol=1e-5
            )

    def test_whole_box_at_same_size_is_identity(self):
        features = np.random.default_rng(1).normal(size=(2, 2, 4, 4, 3)).astype("float32")
        boxes = np.tile(np.array([[0, 0, 0, 1, 1, 1]], "float32"), (2, 1))
        out = CropResample((2, 4, 4))(features, boxes)
        self.assertAllClose(out, features, atol=1e-6)

    def test_gradients_flow_to_features(self):
        features = np.random.default_rng(2).normal(size=(1, 2, 4, 4, 2)).astype("float32")
        boxes = np.array([[0.0, 0.25, 0.25, 1.0, 0.5, 0.5]], "float32")
        layer = CropResample((2, 2, 2))
        grad = ops.convert_to_numpy(
            self.compute_input_gradient(lambda f: ops.sum(layer(f, boxes)), features)
        )
        # Only pixels the box touches get gradient; those that do, get it.
        self.assertGreater(np.abs(grad[0, :, 1:3, 1:3]).sum(), 0)
        self.assertEqual(np.abs(grad[0, :, 0]).sum(), 0)

    def test_layer_basics(self):
        self.run_layer_test(
            CropResample,
            {"output_size": (2, 2, 2)},
            (np.ones((2, 2, 4, 4, 3), "float32"), np.full((2, 6), 0.5, "float32")),
            expected_output_shape=(2, 2, 2, 2, 3),
            run_training_check=False,
        )

    def test_bad_boxes(self):
        """Concrete boxes (numpy or eager tensors) outside the input, with non-positive
        extents, NaN, or a batch size other than the features' fail naming `boxes`
        (issue 14); they used to be clamped or propagated without a word."""
        features = np.ones((2, 2, 4, 4, 1), "float32")
        good = np.array([[0.0, 0.25, 0.5, 1.0, 0.5, 0.5]] * 2, "float32")
        layer = CropResample((2, 2, 2))
        for column, value in [(0, -0.1), (1, 0.75), (4, 0.0), (5, -0.5), (2, np.nan),
                              (3, np.inf)]:
            bad = good.copy()
            bad[1, column] = value
            for boxes in (bad, ops.convert_to_tensor(bad)):
                with pytest.raises(ValueError, match=r"`boxes` must be finite.*box 1 is"):
                    layer(features, boxes)
        with pytest.raises(ValueError, match="same batch size.*got 2 and 3"):
            layer(features, np.concatenate([good, good[:1]]))
        # Without the check, positions clamp to the border cells (what traced calls do).
        unchecked = CropResample((2, 2, 2), check_boxes=False)
        out = unchecked(features, np.array([[-1.0, -1.0, 0.5, 3.0, 3.0, 1.0]] * 2, "float32"))
        self.assertAllClose(out, np.ones((2, 2, 2, 2, 1)))
        self.assertFalse(CropResample.from_config(unchecked.get_config()).check_boxes)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="output_size"):
            CropResample((2, 2))
        with pytest.raises(ValueError, match="rank 5"):
            CropResample((2, 2, 2))(np.ones((2, 4, 4, 3), "float32"), np.ones((2, 6), "float32"))
        with pytest.raises(ValueError, match="boxes"):
            CropResample((2, 2, 2))(np.ones((2, 2, 4, 4, 3), "float32"), np.ones((2, 4), "float32"))


def pyramid_coords(spec, batch, seed=0):
    return np.stack(
        [spec.coords_from_offsets(spec.sample_offsets(seed + i)) for i in range(batch)]
    ).astype("float32")


class DeepContextFusionTest(TestCase):
    def setUp(self):
        super().setUp()
        self.spec = PyramidSpec((2, 8, 8), 3)
        rng = np.random.default_rng(3)
        self.features = rng.normal(size=(2, 3, 2, 4, 4, 8)).astype("float32")
        self.coords = pyramid_coords(self.spec, 2)

    def test_identity_at_init(self):
        out = DeepContextFusion()(self.features, self.coords)
        self.assertAllClose(out, self.features, atol=1e-6)

    def test_context_matches_independent_computation(self):
        layer = DeepContextFusion()
        layer(self.features, self.coords)
        context = ops.convert_to_numpy(layer.context(self.features, self.coords))
        np.testing.assert_array_equal(context[:, 0], 0.0)
        for b in range(2):
            for lv in (1, 2):
                expected = np.mean(
                    [
                        scipy_crop(
                            self.features[b, k],
                            np.concatenate(
                                [
                                    (self.coords[b, lv, 3:] - self.coords[b, k, 3:])
                                    / self.coords[b, k, :3],
                                    self.coords[b, lv, :3] / self.coords[b, k, :3],
                                ]
                            ),
                            (2, 4, 4),
                        )
                        for k in range(lv)
                    ],
                    axis=0,
                )
                np.testing.assert_allclose(context[b, lv], expected, atol=1e-5)

    def test_projection_uses_context_and_coordinates(self):
        layer = DeepContextFusion()
        layer(self.features, self.coords)
        rng = np.random.default_rng(4)
        layer.context_kernel.assign(rng.normal(size=(8, 8)).astype("float32"))
        layer.position_kernel.assign(rng.normal(size=(3, 8)).astype("float32"))
        out = ops.convert_to_numpy(layer(self.features, self.coords))
        context = ops.convert_to_numpy(layer.context(self.features, self.coords))
        # Independent coordinate grid for level 2 of sample 0.
        c = self.coords[0, 2]
        axes = [
            2 * (c[a + 3] + c[a] * (np.arange(n) + 0.5) / n) - 1 for a, n in enumerate((2, 4, 4))
        ]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
        expected = (
            self.features[0, 2]
            + context[0, 2] @ ops.convert_to_numpy(layer.context_kernel)
            + grid @ ops.convert_to_numpy(layer.position_kernel)
        )
        np.testing.assert_allclose(out[0, 2], expected, atol=1e-4)

    def test_context_levels_only_feed_the_rest(self):
        layer = DeepContextFusion()
        layer(self.features, self.coords)
        layer.context_kernel.assign(np.eye(8, dtype="float32"))
        full = ops.convert_to_numpy(layer(self.features, self.coords))
        tail = ops.convert_to_numpy(layer(self.features, self.coords, num_context_levels=2))
        np.testing.assert_allclose(tail, full[:, 2:], atol=1e-6)

    def test_gradients_flow_into_coarse_levels(self):
        layer = DeepContextFusion()
        layer(self.features, self.coords)
        layer.context_kernel.assign(np.eye(8, dtype="float32"))
        grad = ops.convert_to_numpy(
            self.compute_input_gradient(
                lambda f: ops.sum(layer(f, self.coords)[:, 2]), self.features
            )
        )
        self.assertGreater(np.abs(grad[:, 0]).sum(), 0)  # deep: no stop-gradient
        self.assertGreater(np.abs(grad[:, 1]).sum(), 0)

    def test_detach_context_stops_gradients_into_coarse_levels_only(self):
        """Same weights, same output; with `detach_context` the finest level's output has
        no gradient w.r.t. the coarser levels' features (only its own)."""
        layers = {d: DeepContextFusion(detach_context=d) for d in (False, True)}
        rng = np.random.default_rng(5)
        for layer in layers.values():
            layer(self.features, self.coords)
        for v in layers[False].weights:
            v.assign(rng.normal(size=v.shape).astype("float32"))
        layers[True].set_weights(layers[False].get_weights())
        outputs = {d: ops.convert_to_numpy(layer(self.features, self.coords))
                   for d, layer in layers.items()}
        np.testing.assert_array_equal(outputs[True], outputs[False])
        grads = {d: ops.convert_to_numpy(self.compute_input_gradient(
            lambda f, layer=layer: ops.sum(layer(f, self.coords)[:, 2]), self.features))
            for d, layer in layers.items()}
        for level in (0, 1):
            self.assertGreater(np.abs(grads[False][:, level]).max(), 1e-6)
            np.testing.assert_array_equal(grads[True][:, level], 0.0)
        np.testing.assert_allclose(grads[True][:, 2], grads[False][:, 2], rtol=1e-5)

    def test_without_coordinates(self):
        """`use_coords=False`: no position weight, and the output is the features and
        context terms alone (the coordinates still place the context)."""
        layer = DeepContextFusion(use_coords=False)
        layer(self.features, self.coords)
        self.assertIsNone(layer.position_kernel)
        self.assertLen(layer.weights, 3)
        rng = np.random.default_rng(4)
        layer.context_kernel.assign(rng.normal(size=(8, 8)).astype("float32"))
        out = ops.convert_to_numpy(layer(self.features, self.coords))
        context = ops.convert_to_numpy(layer.context(self.features, self.coords))
        expected = self.features + context @ ops.convert_to_numpy(layer.context_kernel)
        np.testing.assert_allclose(out, expected, atol=1e-4)
        self.assertEqual(DeepContextFusion.from_config(layer.get_config()).use_coords, False)
        with pytest.raises(ValueError, match="use_coords"):
            DeepContextFusion(use_coords="no")

    def test_relative_boxes(self):
        boxes = ops.convert_to_numpy(relative_boxes(self.coords[:, 2], self.coords[:, 1]))
        self.assertTrue(np.all(boxes[:, :3] >= -1e-6))
        self.assertTrue(np.all(boxes[:, :3] + boxes[:, 3:] <= 1 + 1e-6))
        np.testing.assert_allclose(boxes[:, 3:], 0.5)

    def test_layer_basics_and_bad_input(self):
        self.run_layer_test(
            DeepContextFusion,
            {},
            (self.features, self.coords),
            expected_output_shape=self.features.shape,
        )
        with pytest.raises(ValueError, match="levels"):
            DeepContextFusion()(self.features, self.coords[:, :2])
        with pytest.raises(ValueError, match="rank 6"):
            DeepContextFusion()(self.features[:, 0], self.coords)


def n(v):
    return np.asarray(ops.convert_to_numpy(v), np.float64)


def randomize(layer, seed=0, scale=0.5):
    """Random values in every weight (LayerNorm scales and offsets included)."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign((scale * rng.normal(size=v.shape)).astype("float32"))


# Numpy references, written from the textbook definitions (not from the layers' code).
def np_layer_norm(x, norm):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.epsilon) * n(norm.gamma) + n(norm.beta)


def np_dense(x, dense):
    return x @ n(dense.kernel) + n(dense.bias)


def np_gelu(x):  # exact (erf) GELU
    return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def np_mlp(x, mlp):
    return np_dense(np_gelu(np_dense(x, mlp.hidden)), mlp.out)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention(layer, query, context=None):
    """Multi-head attention, one sample at a time: each head h uses columns
    [h * d_head, (h + 1) * d_head) of the concatenated q/k/v projections; the heads'
    outputs are concatenated and projected."""
    context = query if context is None else context
    heads = layer.num_heads
    wq, wk, wv = (n(p.kernel) for p in (layer.query_proj, layer.key_proj, layer.value_proj))
    d_head = wq.shape[-1]
    wq, wk, wv = (w.reshape(w.shape[0], heads * d_head) for w in (wq, wk, wv))
    wo = n(layer.output_proj.kernel).reshape(heads * d_head, -1)
    bo = n(layer.output_proj.bias)
    out = []
    for x, c in zip(query, context, strict=True):
        q, k, v = x @ wq, c @ wk, c @ wv
        merged = []
        for h in range(heads):
            cols = slice(h * d_head, (h + 1) * d_head)
            p = np_softmax(q[:, cols] @ k[:, cols].T / np.sqrt(d_head))  # (Nq, Nk)
            merged.append(p @ v[:, cols])
        out.append(np.concatenate(merged, axis=-1) @ wo + bo)
    return np.stack(out)


def np_rin_block(block, tokens, latents, cond=None):
    """RIN read / K x latent self-attention / write, pre-LN residual (Jabri et al. 2023);
    with `cond`, each norm's output is scaled and shifted by `Dense(SiLU(RMSNorm(cond)))` (the
    pairs in order: read z, read x, read MLP, (attention, MLP) per latent layer, write x,
    write z, write MLP)."""
    pairs = []
    if cond is not None:
        cond = cond / np.sqrt(np.mean(cond**2, -1, keepdims=True) + 1e-6)
        params = np_dense(cond / (1.0 + np.exp(-cond)), block.modulation)[:, None, :]
        start = 0
        for width in ([latents.shape[-1], tokens.shape[-1], latents.shape[-1]]
                      + [latents.shape[-1]] * 2 * block.num_latent_layers
                      + [tokens.shape[-1], latents.shape[-1], tokens.shape[-1]]):
            pairs.append((params[..., start:start + width],
                          params[..., start + width:start + 2 * width]))
            start += 2 * width
    mods = iter(pairs)

    def ln(v, norm):
        y = np_layer_norm(v, norm)
        if cond is None:
            return y
        scale, shift = next(mods)
        return y * (1.0 + scale) + shift

    x, z = tokens, latents
    z = z + np_attention(block.read_attn, ln(z, block.read_norm_z), ln(x, block.read_norm_x))
    z = z + np_mlp(ln(z, block.read_mlp_norm), block.read_mlp)
    for i in range(block.num_latent_layers):
        z = z + np_attention(block.latent_attns[i], ln(z, block.latent_attn_norms[i]))
        z = z + np_mlp(ln(z, block.latent_mlp_norms[i]), block.latent_mlps[i])
    x = x + np_attention(block.write_attn, ln(x, block.write_norm_x), ln(z, block.write_norm_z))
    if block.token_mixing is not None:
        x = x + np_token_grid_mixing(block.token_mixing, np_layer_norm(x, block.mixing_norm))
    x = x + np_mlp(ln(x, block.write_mlp_norm), block.write_mlp)
    return x, z


def np_token_grid_mixing(layer, tokens):
    """Per-channel 3x3 (height, width) then 3-tap (time) cross-correlation of the token
    grid, zeros outside it, by explicit loops over the neighbours."""
    f, h, w = layer.grid_size
    spatial = n(layer.spatial_kernel)[:, :, :, 0]  # (3, 3, d)
    temporal = n(layer.temporal_kernel)  # (3, d)
    grid = tokens.reshape(tokens.shape[0], f, h, w, -1)
    padded = np.pad(grid, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    mixed = sum(padded[:, :, i:i + h, j:j + w] * spatial[i, j]
                for i in range(3) for j in range(3))
    padded = np.pad(mixed, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    mixed = sum(padded[:, k:k + f] * temporal[k] for k in range(3))
    return mixed.reshape(tokens.shape) + n(layer.bias)


def np_sigma_features(sigma, frequency_dim, max_period):
    """EDM's c_noise = ln(sigma) / 4, times 1000, against geometric frequencies from 1 down
    to (nearly) 1 / max_period: [cos, sin]."""
    half = frequency_dim // 2
    c_noise = np.log(np.asarray(sigma, np.float64)) / 4.0
    out = np.empty(c_noise.shape + (frequency_dim,))
    for i in range(half):
        angle = 1000.0 * c_noise * max_period ** (-i / half)
        out[..., i], out[..., half + i] = np.cos(angle), np.sin(angle)
    return out


def np_unpatchify(values, patch_size, channels):
    """Token (f, h, w) writes its vector, read as (pf, ph, pw, C) in row-major order, to the
    pixel cube starting at (f * pf, h * ph, w * pw)."""
    b, gf, gh, gw, _ = values.shape
    pf, ph, pw = patch_size
    out = np.zeros((b, gf * pf, gh * ph, gw * pw, channels))
    for f, h, w, i, j, k, c in itertools.product(range(gf), range(gh), range(gw), range(pf),
                                                 range(ph), range(pw), range(channels)):
        out[:, f * pf + i, h * ph + j, w * pw + k, c] = values[
            :, f, h, w, ((i * ph + j) * pw + k) * channels + c]
    return out


def np_patchify(x, patch_size):
    """The inverse reading: token (f, h, w) gets its pixel cube as a (pf, ph, pw, C) vector."""
    b, nf, nh, nw, c = x.shape
    pf, ph, pw = patch_size
    out = np.zeros((b, nf // pf, nh // ph, nw // pw, pf * ph * pw * c))
    for f, h, w in itertools.product(range(nf // pf), range(nh // ph), range(nw // pw)):
        cube = x[:, f * pf:(f + 1) * pf, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw]
        out[:, f, h, w] = cube.reshape(b, -1)
    return out


class NumpyReferenceTest(TestCase):
    """Attention, RIN block, sigma embedding and (de)tokenizer against numpy."""

    def test_attention_matches_numpy(self):
        rng = np.random.default_rng(0)
        query = rng.normal(size=(2, 5, 8)).astype("float32")
        context = rng.normal(size=(2, 3, 6)).astype("float32")
        # Cross-attention with another output width; self-attention with 4 heads.
        for kwargs, args in (({"num_heads": 2, "output_dim": 10}, (query, context)),
                             ({"num_heads": 4}, (query,))):
            layer = Attention(**kwargs)
            layer(*args)
            randomize(layer, scale=0.7)  # large enough logits for a peaked softmax
            expected = np_attention(layer, *(a.astype(np.float64) for a in args))
            self.assertAllClose(layer(*args), expected, atol=1e-5, rtol=1e-5)

    def test_rin_block_matches_numpy(self):
        for grid_size in (None, (3, 2, 2)):  # without and with token mixing
            with self.subTest(grid_size=grid_size):
                self._check_rin_block(grid_size)

    def _check_rin_block(self, grid_size):
        rng = np.random.default_rng(1)
        tokens = rng.normal(size=(2, 12, 8)).astype("float32")
        latents = rng.normal(size=(2, 3, 4)).astype("float32")
        block = RINBlock(num_latent_layers=2, num_heads=2, mlp_ratio=2, data_mlp_ratio=3,
                         grid_size=grid_size)
        cond = rng.normal(size=(2, 5)).astype("float32")
        # The adaptive norms start at zero: a new block ignores `cond`.
        for got, want in zip(block(tokens, latents, cond), block(tokens, latents),
                             strict=True):
            self.assertAllClose(got, want, atol=0, rtol=0)
        randomize(block, seed=2, scale=0.4)
        for c in (None, cond):
            want_x, want_z = np_rin_block(
                block, tokens.astype(np.float64), latents.astype(np.float64),
                None if c is None else c.astype(np.float64))
            got_x, got_z = block(tokens, latents, c)
            self.assertAllClose(got_x, want_x, atol=1e-4, rtol=1e-4)
            self.assertAllClose(got_z, want_z, atol=1e-4, rtol=1e-4)
        # Randomised, the condition changes both outputs.
        moved = [np.abs(n(a) - n(b)).mean() for a, b in
                 zip(block(tokens, latents, cond), block(tokens, latents), strict=True)]
        self.assertGreater(min(moved), 1e-2)

    def test_token_grid_mixing_matches_numpy_and_stays_local(self):
        rng = np.random.default_rng(3)
        grid = (4, 5, 3)  # unequal sides: a transposed (h, w) or (f, h) order fails
        tokens = rng.normal(size=(2, 60, 6)).astype("float32")
        layer = TokenGridMixing(grid)
        layer(tokens)
        randomize(layer, seed=4)
        self.assertAllClose(layer(tokens), np_token_grid_mixing(layer, tokens.astype(np.float64)),
                            atol=1e-5, rtol=1e-5)
        # A change to one token reaches exactly its 3x3x3 neighbourhood.
        moved = tokens.copy()
        moved[:, 5 * 3 * 1 + 3 * 2 + 0] += 1.0  # token (1, 2, 0)
        diff = np.abs(n(layer(moved)) - n(layer(tokens))).max(axis=(0, 2)).reshape(grid)
        near = np.zeros(grid, bool)
        near[0:3, 1:4, 0:2] = True
        self.assertTrue(np.all(diff[near] > 0) and np.all(diff[~near] == 0))

    def test_sigma_features_and_mlp_match_numpy(self):
        sigma = np.array([[0.002, 0.05, 0.3], [1.0, 7.0, 80.0]], "float32")
        for frequency_dim, max_period in ((256, 10000.0), (16, 100.0)):
            layer = SigmaEmbedding(6, frequency_dim=frequency_dim, max_period=max_period)
            expected = np_sigma_features(sigma, frequency_dim, max_period)
            # float32 angles reach 1000 * ln(80) / 4 ~ 1100 rad, where one float32 ulp is
            # 1.2e-4 rad: a few ulps of error in the fastest features.
            self.assertAllClose(layer.features(sigma), expected, atol=5e-4, rtol=0)
            self.assertAllClose(layer.features(sigma)[1, 0], np.repeat([1.0, 0.0],
                                frequency_dim // 2), atol=1e-7)  # sigma 1: c_noise 0
        layer(sigma)
        randomize(layer, seed=3)
        features = np_sigma_features(sigma, 16, 100.0)

        def mlp(f):
            h = np_dense(f, layer.hidden)
            return np_dense(h / (1.0 + np.exp(-h)), layer.out)  # SiLU

        self.assertAllClose(layer(sigma), mlp(features), atol=1e-4, rtol=1e-4)
        # A condition joins the features before the MLP (broadcast over the levels).
        condition = np.random.default_rng(4).normal(size=(2, 1, 16)).astype("float32")
        self.assertAllClose(layer(sigma, condition=condition), mlp(features + condition),
                            atol=1e-4, rtol=1e-4)

    def test_text_attention_pooling_matches_numpy(self):
        rng = np.random.default_rng(8)
        tokens = rng.normal(size=(3, 5, 6)).astype("float32")
        tokens[0, 3:] = 0.0  # padding (the encoders zero it)
        tokens[2] = 0.0  # the null condition
        layer = TextAttentionPooling(num_heads=2)
        # Zero queries (the start): the mean of the real tokens, RMS-normalised.
        mean = np.stack([tokens[0, :3].mean(0), tokens[1].mean(0)]).astype(np.float64)
        self.assertAllClose(layer(tokens)[:2],
                            mean / np.sqrt((mean**2).mean(-1, keepdims=True)), atol=1e-5)
        self.assertAllEqual(layer(tokens)[2], np.zeros(6))
        randomize(layer, seed=9, scale=2.0)
        q = n(layer.queries).astype(np.float64)
        want = []
        for x in tokens[:2].astype(np.float64):
            x = x[np.abs(x).sum(-1) > 0]
            keys = x / np.sqrt((x**2).mean(-1, keepdims=True))
            weights = special.softmax(keys @ q.T, axis=0)  # (S, heads)
            pooled = np.concatenate([weights[:, h] @ x[:, 3 * h:3 * h + 3] for h in range(2)])
            want.append(pooled / np.sqrt((pooled**2).mean()))
        self.assertAllClose(layer(tokens)[:2], np.stack(want), atol=1e-5, rtol=1e-5)
        self.assertAllEqual(layer(tokens)[2], np.zeros(6))
        # A sharp query reads the token it matches, wherever it stands.
        layer.queries.assign(np.stack([50.0 * tokens[1, 4] / np.abs(tokens[1, 4]).max()] * 2))
        picked = n(layer(tokens[1:2]))[0]
        self.assertAllClose(picked, tokens[1, 4] / np.sqrt((tokens[1, 4]**2).mean()),
                            atol=1e-3)
        self.run_layer_test(TextAttentionPooling, {"num_heads": 3}, tokens,
                            expected_output_shape=(3, 6), run_precision_check=False)
        with pytest.raises(ValueError, match="num_heads"):
            TextAttentionPooling(4)(tokens)

    def test_tokenizer_and_detokenizer_pixel_order(self):
        rng = np.random.default_rng(5)
        patch = (2, 2, 3)
        x = rng.normal(size=(2, 4, 4, 6, 2)).astype("float32")  # token grid (2, 2, 2)
        tokenizer = PatchTokenizer(patch, 7)
        tokenizer(x)
        randomize(tokenizer, seed=6)
        expected = (np_patchify(x.astype(np.float64), patch) @ n(tokenizer.proj.kernel)
                    + n(tokenizer.proj.bias) + n(tokenizer.position))
        self.assertAllClose(tokenizer(x), expected, atol=1e-5, rtol=1e-5)

        tokens = rng.normal(size=(2, 2, 2, 2, 7)).astype("float32")
        detokenizer = PatchDetokenizer(patch, 2)
        detokenizer(tokens)
        randomize(detokenizer, seed=7)
        values = np_dense(np_layer_norm(tokens.astype(np.float64), detokenizer.norm),
                          detokenizer.proj)
        self.assertAllClose(detokenizer(tokens), np_unpatchify(values, patch, 2),
                            atol=1e-5, rtol=1e-5)
        # A hand-set pair: identity projections, zero positions, and pixel cubes of zero
        # mean and unit variance (so the detokenizer's LayerNorm is the identity too): the
        # round trip gives every pixel back in place.
        for f, h, w in itertools.product(range(2), range(2), range(2)):
            cube = x[:, 2 * f:2 * f + 2, 2 * h:2 * h + 2, 3 * w:3 * w + 3]
            cube -= cube.mean(axis=(1, 2, 3, 4), keepdims=True)
            cube /= cube.std(axis=(1, 2, 3, 4), keepdims=True)
        tokenizer, detokenizer = PatchTokenizer(patch, 24), PatchDetokenizer(patch, 2)
        detokenizer(tokenizer(x))
        for dense in (tokenizer.proj, detokenizer.proj):
            dense.kernel.assign(np.eye(24, dtype="float32"))
        tokenizer.position.assign(np.zeros(tokenizer.position.shape, "float32"))
        self.assertAllClose(detokenizer(tokenizer(x)), x, atol=1e-5, rtol=0)

    def test_tokenizer_fixed_positions(self):
        x = np.random.default_rng(8).normal(size=(2, 4, 8, 12, 1)).astype("float32")
        patch, dim = (2, 4, 4), 20  # grid (2, 2, 3); 3 features per axis and sign; 2 spare
        tokenizer = PatchTokenizer(patch, dim, fixed_positions=True)
        tokenizer(x)
        randomize(tokenizer, seed=9)
        table = sincos_positions((2, 2, 3), dim)
        expected = (np_patchify(x.astype(np.float64), patch) @ n(tokenizer.proj.kernel)
                    + n(tokenizer.proj.bias) + n(tokenizer.position) + table)
        self.assertAllClose(tokenizer(x), expected, atol=1e-5, rtol=1e-5)
        # The table itself, from its definition: axis a's block holds sin then cos of
        # index * pi / n * n**(k / (K - 1)), K = dim // 6 = 3; the rest is zero.
        for axis, n_tokens in enumerate((2, 2, 3)):
            freqs = np.pi / n_tokens * n_tokens ** (np.arange(3) / 2)
            index = np.indices((2, 2, 3))[axis][..., None]
            block = table[..., 6 * axis:6 * axis + 6]
            np.testing.assert_allclose(block[..., :3], np.sin(index * freqs), atol=1e-6)
            np.testing.assert_allclose(block[..., 3:], np.cos(index * freqs), atol=1e-6)
        np.testing.assert_array_equal(table[..., 18:], 0)
        # On the grids the backbones use, every token gets its own position.
        flat = sincos_positions((8, 8, 8), 64).reshape(-1, 64)
        dist = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
        self.assertGreater(dist[~np.eye(len(flat), dtype=bool)].min(), 0.5)
        with pytest.raises(TypeError, match="fixed_positions"):
            PatchTokenizer(patch, dim, fixed_positions="yes")


class BuildingBlocksTest(TestCase):
    def test_tokenizer_round_trip_shapes(self):
        x = np.random.default_rng(0).normal(size=(2, 2, 8, 8, 3)).astype("float32")
        self.run_layer_test(
            PatchTokenizer,
            {"patch_size": (1, 4, 4), "dim": 16},
            x,
            expected_output_shape=(2, 2, 2, 2, 16),
            run_precision_check=False,
        )
        self.run_layer_test(
            PatchDetokenizer,
            {"patch_size": (1, 4, 4), "channels": 3},
            RNG.normal(size=(2, 2, 2, 2, 16)).astype("float32"),
            expected_output_shape=(2, 2, 8, 8, 3),
        )
        with pytest.raises(ValueError, match="divisible"):
            PatchTokenizer((1, 3, 4), 8)(x)

    def test_tokenizer_is_a_patchify(self):
        """Tokens depend only on their own pixel cube."""
        x = np.zeros((1, 2, 8, 8, 1), "float32")
        layer = PatchTokenizer((1, 4, 4), 4)
        base = ops.convert_to_numpy(layer(x))
        x[0, 1, 5, 6, 0] = 1.0  # inside token (1, 1, 1)
        diff = np.abs(ops.convert_to_numpy(layer(x)) - base).sum(-1)[0]
        self.assertGreater(diff[1, 1, 1], 0)
        diff[1, 1, 1] = 0
        np.testing.assert_array_equal(diff, 0)

    def test_rin_block(self):
        self.run_layer_test(
            RINBlock,
            {"num_latent_layers": 2, "num_heads": 2},
            (
                RNG.normal(size=(2, 6, 8)).astype("float32"),
                RNG.normal(size=(2, 3, 4)).astype("float32"),
            ),
            expected_output_shape=((2, 6, 8), (2, 3, 4)),
        )
        with pytest.raises(ValueError, match="num_heads"):
            RINBlock(num_heads=3)(np.ones((1, 2, 8), "float32"), np.ones((1, 2, 8), "float32"))

    def test_attention_and_embeddings(self):
        self.run_layer_test(
            Attention,
            {"num_heads": 2},
            (
                RNG.normal(size=(2, 5, 8)).astype("float32"),
                RNG.normal(size=(2, 3, 6)).astype("float32"),
            ),
            expected_output_shape=(2, 5, 8),
        )
        layer = self.run_layer_test(
            SigmaEmbedding,
            {"dim": 8},
            np.array([[0.01, 1.0, 80.0]], "float32"),
            expected_output_shape=(1, 3, 8),
            run_precision_check=False,
        )
        self.assertEqual(layer.compute_dtype, "float32")
        mixed = SigmaEmbedding(8, dtype="mixed_float16")
        self.assertEqual(mixed.compute_dtype, "float32")  # float32 island whatever the policy
        emb = self.run_layer_test(
            ClassEmbedding,
            {"num_classes": 3, "dim": 4},
            np.array([0, 3], "int32"),
            expected_output_shape=(2, 4),
            run_training_check=False,
            run_precision_check=False,
        )
        self.assertEqual(emb.null_label, 3)
        with pytest.raises(ValueError, match="num_classes"):
            ClassEmbedding(0, 4)
        with pytest.raises(ValueError, match="num_heads"):
            Attention(2)(np.ones((1, 2, 5), "float32"))
