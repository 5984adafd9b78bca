import numpy as np
import pytest
from keras import ops
from scipy import ndimage

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
)
from keras_hpdm.layers.deep_context_fusion import relative_boxes
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
