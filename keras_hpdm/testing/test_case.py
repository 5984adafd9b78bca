"""A keras-hub style `TestCase`: build/call/fit, config and `.keras` round trips, precision."""

import json
import os
import tempfile
import unittest

import keras
import numpy as np
from keras import ops

# Layers whose math must stay in float32 under mixed precision (float32 islands).
FLOAT32_LAYER_TYPES = (
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Softmax,
)


def disable_tf32():
    """Turns TensorFloat-32 matmuls off so numerical tests compare real float32 math."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)


def to_numpy(x):
    """Converts a (possibly nested) backend tensor structure to numpy."""
    return keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), x)


def _count_seed_generators(layer):
    return sum(len(sub._seed_generators) for sub in layer._flatten_layers())


class TestCase(unittest.TestCase):
    """Base class for keras_hpdm tests (one backend per process).

    Example:
    ```python
    class MyLayerTest(TestCase):
        def test_layer_basics(self):
            self.run_layer_test(
                MyLayer, init_kwargs={"units": 4},
                input_data=np.ones((2, 3), "float32"), expected_output_shape=(2, 4),
            )
    ```
    """

    def setUp(self):
        super().setUp()
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
        keras.utils.set_random_seed(1337)
        disable_tf32()

    def tearDown(self):
        keras.config.set_dtype_policy("float32")
        super().tearDown()

    def get_temp_dir(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        return tmp.name

    # ----------------------------------------------------------- assertions
    def assertLen(self, container, expected_len, msg=None):
        self.assertEqual(len(container), expected_len, msg)

    def assertAllClose(self, x, y, atol=1e-6, rtol=1e-6, msg=None):
        x_flat, y_flat = keras.tree.flatten(to_numpy(x)), keras.tree.flatten(to_numpy(y))
        self.assertEqual(len(x_flat), len(y_flat), msg)
        for a, b in zip(x_flat, y_flat, strict=True):
            np.testing.assert_allclose(
                np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol, rtol=rtol,
                err_msg=msg or "",
            )

    def assertAllEqual(self, x, y, msg=None):
        x_flat, y_flat = keras.tree.flatten(to_numpy(x)), keras.tree.flatten(to_numpy(y))
        self.assertEqual(len(x_flat), len(y_flat), msg)
        for a, b in zip(x_flat, y_flat, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=msg or "")

    def assertNotAllClose(self, x, y, atol=1e-6, rtol=1e-6, msg=None):
        try:
            self.assertAllClose(x, y, atol=atol, rtol=rtol)
        except AssertionError:
            return
        self.fail(msg or "Expected the values to differ, but they are all close.")

    def assertAllFinite(self, x, msg=None):
        for a in keras.tree.flatten(to_numpy(x)):
            self.assertTrue(np.all(np.isfinite(np.asarray(a, np.float64))), msg)

    # ------------------------------------------------------ serialization
    def run_serialization_test(self, instance):
        """`get_config` is JSON-serialisable and `from_config` rebuilds an equal config."""
        config = instance.get_config()
        json.dumps(config)  # must not raise
        serialized = keras.saving.serialize_keras_object(instance)
        json.dumps(serialized)
        revived = keras.saving.deserialize_keras_object(serialized)
        self.assertIs(type(revived), type(instance))
        self.assertEqual(
            json.dumps(revived.get_config(), sort_keys=True, default=str),
            json.dumps(config, sort_keys=True, default=str),
        )
        return revived

    def run_model_saving_test(self, model, input_data, atol=1e-6, call=None):
        """`.keras` save/load gives the same outputs (and the same config)."""
        call = call or (lambda m, x: m(x))
        expected = call(model, input_data)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertIs(type(restored), type(model))
        self.assertAllClose(expected, call(restored, input_data), atol=atol, rtol=atol)
        return restored

    # ---------------------------------------------------------------- layers
    def run_layer_test(
        self,
        cls,
        init_kwargs,
        input_data,
        expected_output_shape=None,
        expected_num_trainable_weights=None,
        expected_num_seed_generators=0,
        run_training_check=True,
        run_precision_check=True,
        call_kwargs=None,
        gradient_steps=1,
    ):
        """Builds, calls, serialises, trains and checks precision of a layer.

        `input_data` is a single tensor, a tuple (positional args) or a dict (one argument).

        The training check takes `gradient_steps` SGD steps on the mean squared distance of
        *every* float output to 1 and requires *every* trainable weight to get a non-zero
        gradient in one of them (a branch disconnected from the outputs fails). Layers whose
        residual branches end in a zero-initialised projection (identity at init) pass no
        gradient upstream of that projection before its first update: give them
        `gradient_steps=2` and say so.
        """
        call_kwargs = call_kwargs or {}

        def call(layer, data, **kw):
            if isinstance(data, tuple):
                return layer(*data, **call_kwargs, **kw)
            return layer(data, **call_kwargs, **kw)

        layer = cls(**init_kwargs)
        output = call(layer, input_data)
        if expected_output_shape is not None:
            got = keras.tree.map_structure(lambda t: tuple(t.shape), output)
            self.assertEqual(got, expected_output_shape)
        self.assertAllFinite(output)
        if expected_num_trainable_weights is not None:
            self.assertLen(layer.trainable_weights, expected_num_trainable_weights)
        self.assertEqual(_count_seed_generators(layer), expected_num_seed_generators)
        self.run_serialization_test(layer)

        if run_training_check:
            self._run_training_check(layer, input_data, call, gradient_steps)
        if run_precision_check:
            for policy in ("mixed_float16", "mixed_bfloat16"):
                self.run_precision_test(cls, init_kwargs, input_data, policy, call)
        return layer

    def _run_training_check(self, layer, input_data, call, gradient_steps=1):
        """SGD steps on all float outputs: every trainable weight must get a non-zero
        gradient (in one of `gradient_steps` steps) and the steps must change weights."""
        weights = [v for v in layer.trainable_variables]
        if not weights:
            return
        before = to_numpy([v.value for v in weights])
        optimizer = keras.optimizers.SGD(1e-2)
        optimizer.build(weights)

        def loss_fn():
            outputs = [
                ops.cast(t, "float32")
                for t in keras.tree.flatten(call(layer, input_data, training=True))
                if "float" in keras.backend.standardize_dtype(t.dtype)
            ]
            return sum(ops.mean(ops.square(t - 1.0)) for t in outputs)

        without_gradient = set(range(len(weights)))
        for _ in range(gradient_steps):
            grads = self.compute_gradients(loss_fn, weights)
            # TensorFlow returns None for a weight the loss does not depend on.
            grads = [ops.zeros_like(w.value) if g is None else g
                     for g, w in zip(grads, weights, strict=True)]
            for i, g in enumerate(to_numpy(grads)):
                if np.any(g != 0):
                    without_gradient.discard(i)
            optimizer.apply(grads, weights)
        if without_gradient:
            self.fail(
                f"No gradient reaches {sorted(weights[i].path for i in without_gradient)} "
                f"(of {len(weights)} trainable weights) in {gradient_steps} step(s): a "
                "branch of the layer is disconnected from its outputs."
            )
        after = to_numpy([v.value for v in weights])
        self.assertTrue(any(np.any(a != b) for a, b in zip(before, after, strict=True)),
                        "The optimiser steps changed no weight.")

    def compute_gradients(self, loss_fn, variables):
        """Gradients of a scalar `loss_fn()` w.r.t. `variables` on the current backend."""
        backend = keras.config.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = loss_fn()
            return tape.gradient(loss, [v.value for v in variables])
        if backend == "torch":
            import torch

            for v in variables:
                v.value.grad = None
            loss = loss_fn()
            return list(torch.autograd.grad(loss, [v.value for v in variables],
                                            allow_unused=True, materialize_grads=True))
        if backend == "jax":
            import jax
            from keras.src.backend.jax.core import StatelessScope

            values = [v.value for v in variables]

            def pure(vals):
                with StatelessScope(state_mapping=list(zip(variables, vals, strict=True))):
                    return loss_fn()

            return jax.grad(pure)(values)
        raise NotImplementedError(backend)

    def compute_input_gradient(self, fn, x):
        """Gradient of scalar `fn(x)` w.r.t. the input tensor `x` on the current backend."""
        backend = keras.config.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            x = tf.convert_to_tensor(x)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return tape.gradient(y, x)
        if backend == "torch":
            import torch

            x = torch.tensor(np.asarray(x), requires_grad=True)
            return torch.autograd.grad(fn(x), x)[0]
        import jax

        return jax.grad(fn)(ops.convert_to_tensor(x))

    def run_precision_test(self, cls, init_kwargs, input_data, policy, call=None):
        """Under a mixed policy: finite outputs, float32 islands for norms/softmax."""
        call = call or (lambda layer, data: layer(data))
        layer = cls(**init_kwargs, dtype=policy)
        output = call(layer, input_data)
        self.assertAllFinite(output, f"non-finite output under {policy}")
        for sub in layer._flatten_layers(include_self=False):
            if isinstance(sub, FLOAT32_LAYER_TYPES) or getattr(sub, "float32_island", False):
                self.assertEqual(
                    sub.compute_dtype, "float32",
                    f"{sub.name} ({type(sub).__name__}) must compute in float32 under {policy}",
                )
        return layer
