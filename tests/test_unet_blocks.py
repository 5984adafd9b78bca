"""UNet building blocks: numpy references, identity at init, space/time mixing, saving, errors."""

import itertools

import keras
import numpy as np
from keras import ops

from keras_hpdm.layers.downsample3d import Downsample3D
from keras_hpdm.layers.factorized_attention import FactorizedAttention
from keras_hpdm.layers.unet_res_block import UNetResBlock
from keras_hpdm.layers.upsample3d import Upsample3D
from keras_hpdm.testing import TestCase


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def randomize(layer, seed=1, scale=0.5):
    """Random weights everywhere (zero-initialised projections would hide bugs)."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign((scale * rng.normal(size=v.shape)).astype("float32"))


def n(v):
    return np.asarray(ops.convert_to_numpy(v), np.float64)


# ------------------------------------------------------------------ numpy references
def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_conv3d(x, conv):
    """Stride-1 "same" Conv3D with explicit shifted sums (odd kernels)."""
    k, b = n(conv.kernel), n(conv.bias)
    pads = [(s // 2, s // 2) for s in k.shape[:3]]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    f, h, w = x.shape[1:4]
    out = sum(
        xp[:, i : i + f, j : j + h, m : m + w] @ k[i, j, m]
        for i, j, m in itertools.product(*map(range, k.shape[:3]))
    )
    return out + b


def np_group_norm(x, norm):
    g = norm.groups
    y = x.reshape(x.shape[0], -1, g, x.shape[-1] // g)
    y = (y - y.mean(axis=(1, 3), keepdims=True)) / np.sqrt(y.var(axis=(1, 3), keepdims=True) + 1e-5)
    return y.reshape(x.shape) * n(norm.gamma) + n(norm.beta)


def np_res_block(block, x, cond):
    h = np_silu(np_group_norm(x, block.norm1))
    for conv in block.conv1:
        h = np_conv3d(h, conv)
    emb = np_silu(cond) @ n(block.modulation.kernel) + n(block.modulation.bias)
    scale, shift = np.split(emb[:, None, None, None], 2, axis=-1)
    h = np_silu(np_group_norm(h, block.norm2) * (1 + scale) + shift)
    for conv in block.conv2:
        h = np_conv3d(h, conv)
    return (x if block.skip is None else np_conv3d(x, block.skip)) + h


def np_self_attention(tokens, norm, qkv, out, heads, bias=None):
    """Pre-norm residual self-attention over one sequence `tokens` of shape (T, C)."""
    h = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True) + 1e-5)
    h = h * n(norm.gamma) + n(norm.beta)
    q, k, v = np.split(h @ n(qkv.kernel) + n(qkv.bias), 3, axis=-1)
    q, k, v = (t.reshape(len(tokens), heads, -1).transpose(1, 0, 2) for t in (q, k, v))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + (0 if bias is None else bias)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    o = (p / p.sum(-1, keepdims=True)) @ v  # (heads, T, d)
    return tokens + o.transpose(1, 0, 2).reshape(len(tokens), -1) @ n(out.kernel) + n(out.bias)


def np_factorized_attention(layer, x):
    """Loops over frames (spatial part) then over positions (temporal part)."""
    b, f, hh, ww, c = x.shape
    heads = layer.num_heads
    y = np.empty_like(x)
    for i, t in itertools.product(range(b), range(f)):
        y[i, t] = np_self_attention(x[i, t].reshape(hh * ww, c), layer.spatial_norm,
                                    layer.spatial_qkv, layer.spatial_out, heads).reshape(hh, ww, c)
    table = n(layer.relative_bias)  # row (key frame - query frame + f - 1)
    bias = np.stack([[table[kf - qf + f - 1] for kf in range(f)] for qf in range(f)])
    bias = bias.transpose(2, 0, 1)
    z = np.empty_like(x)
    for i, r, s in itertools.product(range(b), range(hh), range(ww)):
        z[i, :, r, s] = np_self_attention(y[i, :, r, s], layer.temporal_norm, layer.temporal_qkv,
                                          layer.temporal_out, heads, bias)
    return z


# ------------------------------------------------------------------------------ tests
# One video shape almost everywhere: eager JAX compiles each op once per shape and dtype.
X = rand(2, 3, 4, 4, 8)
COND = rand(2, 6, seed=1)


class UNetResBlockTest(TestCase):
    def test_layer_basics(self):
        self.run_layer_test(
            UNetResBlock, {"filters": 8, "groups": 4, "dropout": 0.1},
            input_data=(X, COND), expected_output_shape=X.shape,
            expected_num_trainable_weights=14,  # 2 norms, 2x(2+1)D convs, modulation
            expected_num_seed_generators=1,
            # The last conv starts at zero (identity at init): the rest of the branch gets
            # gradient from the second step on.
            gradient_steps=2,
        )

    def test_matches_numpy_reference(self):
        # Same channels (identity skip) with time convs; new channels (1x1x1 skip) without.
        for filters, groups, temporal_kernel in ((8, 4, 3), (16, 2, 1)):
            block = UNetResBlock(filters, groups=groups, temporal_kernel=temporal_kernel)
            block(X, COND)
            randomize(block)
            expected = np_res_block(block, X.astype(np.float64), COND.astype(np.float64))
            self.assertAllClose(block(X, COND), expected, atol=1e-5, rtol=1e-5)
        self.assertLen(block.trainable_weights, 12)  # 2 norms, 2 spatial convs, modulation, skip

    def test_identity_at_init_and_conditioning_matters(self):
        block = UNetResBlock(8, groups=4)
        self.assertAllClose(block(X, COND), X, atol=0, rtol=0)
        randomize(block)
        self.assertNotAllClose(block(X, COND), block(X, rand(2, 6, seed=2)), atol=1e-3)

    def test_bad_arguments(self):
        for kwargs, arg in (
            ({"filters": 0}, "filters"),
            ({"filters": 8, "groups": 3}, "groups"),
            ({"filters": 8, "dropout": 1.0}, "dropout"),
            ({"filters": 8, "temporal_kernel": 2}, "temporal_kernel"),
        ):
            with self.assertRaisesRegex(ValueError, arg):
                UNetResBlock(**kwargs)
        with self.assertRaisesRegex(ValueError, "groups"):  # groups must divide C_in too
            UNetResBlock(6, groups=3)(X, COND)


class FactorizedAttentionTest(TestCase):
    def test_layer_basics(self):
        self.run_layer_test(
            FactorizedAttention, {"num_heads": 2},
            input_data=X, expected_output_shape=X.shape,
            expected_num_trainable_weights=13,  # 2 x (norm 2 + qkv 2 + out 2) + relative bias
            # Zero-initialised output projections (identity at init): norms, qkv and the
            # relative bias get gradient from the second step on.
            gradient_steps=2,
        )

    def test_identity_at_init(self):
        self.assertAllClose(FactorizedAttention(2)(X), X, atol=0, rtol=0)

    def test_matches_numpy_reference(self):
        # Videos and images (F == 1); an explicit head_dim with C % num_heads != 0.
        for kwargs, x in (({"num_heads": 2}, X), ({"num_heads": 3, "head_dim": 4}, X[:, :1])):
            layer = FactorizedAttention(**kwargs)
            layer(x)
            randomize(layer)
            expected = np_factorized_attention(layer, x.astype(np.float64))
            self.assertAllClose(layer(x), expected, atol=1e-5, rtol=1e-5)

    def test_space_and_time_mixing(self):
        bumped = X.copy()
        bumped[:, 0, 1, 2] += rand(8, seed=3)  # one token of frame 0 (not constant: LayerNorm)
        layer = FactorizedAttention(2)
        layer(X)

        def delta(*off):  # per-token max |output change|, `off` output projections zeroed
            randomize(layer)
            for v in (v for sub in off for v in sub.weights):
                v.assign(np.zeros(v.shape, "float32"))
            return np.abs(n(layer(bumped)) - n(layer(X))).max(-1)

        # "Unchanged" is float noise (< 1e-6); "changed" is >= 1e-4 here (first order ~1e-2).
        spatial = delta(layer.temporal_out)
        self.assertTrue(np.all(spatial[:, 1:] < 1e-6), "spatial attention mixed frames")
        self.assertTrue(np.all(spatial[:, 0] > 1e-4), "spatial attention did not mix pixels")
        temporal = delta(layer.spatial_out)
        moved = np.zeros(temporal.shape, bool)
        moved[:, :, 1, 2] = True
        self.assertTrue(np.all(temporal[~moved] < 1e-6), "temporal attention mixed positions")
        self.assertTrue(np.all(temporal[moved] > 1e-4), "temporal attention did not mix frames")
        full = delta()  # both parts on: space then time reaches every token (second order)
        self.assertTrue(np.all(full > 1e-5), "space then time must reach every token")

    def test_relative_bias_breaks_frame_permutation_symmetry(self):
        layer = FactorizedAttention(2)
        layer(X)
        randomize(layer)
        reverse = lambda t: ops.flip(t, axis=1)
        layer.relative_bias.assign(np.zeros(layer.relative_bias.shape, "float32"))
        self.assertAllClose(layer(reverse(X)), reverse(layer(X)), atol=1e-5, rtol=1e-5)
        randomize(layer)
        self.assertNotAllClose(layer(reverse(X)), reverse(layer(X)), atol=1e-3)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "num_heads"):
            FactorizedAttention(3)(X)
        with self.assertRaisesRegex(ValueError, "num_heads"):
            FactorizedAttention(0)
        with self.assertRaisesRegex(ValueError, "head_dim"):
            FactorizedAttention(2, head_dim=0)


class ResampleTest(TestCase):
    def test_layer_basics(self):
        self.run_layer_test(
            Downsample3D, {"filters": 8}, input_data=X, expected_output_shape=(2, 3, 2, 2, 8),
            expected_num_trainable_weights=2,
        )
        self.run_layer_test(
            Upsample3D, {"filters": 8, "upsample_time": True}, input_data=X,
            expected_output_shape=(2, 6, 8, 8, 8), expected_num_trainable_weights=2,
        )

    def test_match_numpy_reference(self):
        for time in (False, True):
            x = X[:, :2] if time else X  # time is halved only when even
            down = Downsample3D(8, downsample_time=time)
            down(x)
            randomize(down)
            # "same" padding with stride 2 pads one cell after: output k is centred on 2k + 1.
            t0 = 1 if time else 0
            expected = np_conv3d(x.astype(np.float64), down.conv)[:, t0 :: 1 + time, 1::2, 1::2]
            self.assertAllClose(down(x), expected, atol=1e-5, rtol=1e-5)

            up = Upsample3D(8, upsample_time=time)
            up(X)
            randomize(up)
            rep = X.astype(np.float64).repeat(2, axis=2).repeat(2, axis=3)
            rep = rep.repeat(2, axis=1) if time else rep
            self.assertAllClose(up(X), np_conv3d(rep, up.conv), atol=1e-5, rtol=1e-5)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "filters"):
            Downsample3D(0)
        with self.assertRaisesRegex(ValueError, "filters"):
            Upsample3D(-1)
        with self.assertRaisesRegex(ValueError, "axis W"):
            Downsample3D(4)(rand(1, 2, 4, 5, 3))
        with self.assertRaisesRegex(ValueError, "axis F"):
            Downsample3D(4, downsample_time=True)(X)  # F == 3


class UNetBlocksSavingTest(TestCase):
    def test_functional_model_keras_round_trip(self):
        video = keras.Input(X.shape[1:])
        cond = keras.Input(COND.shape[1:])
        h = UNetResBlock(8, groups=4)(video, cond)
        h = FactorizedAttention(2)(h)
        h = Downsample3D(8)(h)
        h = Upsample3D(8)(h)
        out = UNetResBlock(16, groups=2, temporal_kernel=1)(h, cond)
        model = keras.Model([video, cond], out)
        self.assertEqual(tuple(out.shape), (None, 3, 4, 4, 16))
        randomize(model, scale=0.3)
        restored = self.run_model_saving_test(model, [X, COND])
        self.assertAllEqual([n(v) for v in model.weights], [n(v) for v in restored.weights])


class MixedPrecisionTest(TestCase):
    def test_float32_islands_and_output_dtype(self):
        for policy in ("mixed_float16", "mixed_bfloat16"):
            compute = policy.split("_")[1]
            block = UNetResBlock(8, groups=4, dtype=policy)
            attn = FactorizedAttention(2, dtype=policy)
            for layer, ref, x in ((block, UNetResBlock(8, groups=4), (X, COND)),
                                  (attn, FactorizedAttention(2), (X,))):
                layer(*x), ref(*x)
                randomize(layer, scale=0.3)
                ref.set_weights([n(v) for v in layer.weights])
                y = layer(*x)
                self.assertEqual(keras.backend.standardize_dtype(y.dtype), compute)
                expected = n(ref(*x))
                # A few roundings at the output scale (measured: 0.6-1.4 eps * max|y|); an
                # overflow or a lost float32 island would be far off.
                tol = 4 * {"float16": 2**-10, "bfloat16": 2**-7}[compute] * np.abs(expected).max()
                self.assertAllClose(y, expected, atol=tol, rtol=0)
            for sub in (block.norm1, block.norm2, attn.spatial_norm, attn.temporal_norm,
                        attn.softmax):
                self.assertEqual(sub.compute_dtype, "float32")
            self.assertEqual(block.conv1[0].compute_dtype, compute)
            self.assertEqual(attn.spatial_qkv.compute_dtype, compute)
