"""Data-parallel training: keras.distribution on JAX, tf.distribute on TensorFlow (each in a
subprocess with virtual CPU devices), and a clear error on torch."""

import os
from unittest import mock

import keras
import numpy as np
import pytest

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.testing import run_in_backends

SPEC = keras_hpdm.PyramidSpec((2, 16, 16), 2)
BACKEND = keras.config.backend()
# The subprocess tests run every backend themselves: once, in the JAX pass.
subprocess_test = pytest.mark.skipif(BACKEND != "jax", reason="runs its backend itself")

BUILD = """
import keras
import numpy as np
import keras_hpdm
from keras_hpdm.backbones import RINBackbone

def build_and_train(batch_size):
    keras.utils.set_random_seed(0)
    spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_classes=2)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
    before = [np.array(w) for w in model.backbone.get_weights()]
    history = model.fit(dict(INPUTS), batch_size=batch_size, epochs=2, shuffle=False,
                        verbose=0)
    after = model.backbone.get_weights()
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(before, after)])
    finite = all(np.all(np.isfinite(w)) for w in after + model.get_weights())
    return model, np.array(history.history["loss"]), changed, finite
"""


def batch(size=8):
    rng = np.random.default_rng(0)
    return {
        "patches": rng.uniform(-1, 1, (size, 2) + SPEC.patch_size + (3,)).astype("float32"),
        "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(i))
                            for i in range(size)]),
        "label": np.arange(size, dtype="int32") % 2,
    }


@subprocess_test
def test_jax_data_parallel_on_4_cpu_devices():
    code = BUILD + """
devices = keras.distribution.list_devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
model, losses, changed, finite = build_and_train(batch_size=8)
weight = model.backbone.trainable_weights[0].value
OUTPUTS = {"losses": losses, "changed": changed, "finite": finite,
           "num_devices": len(devices), "weight_devices": len(weight.sharding.device_set)}
"""
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    with mock.patch.dict(os.environ, {"XLA_FLAGS": flags.strip()}):
        out = run_in_backends(code, ["jax"], inputs=batch())["jax"]
    assert int(out["num_devices"]) == 4
    assert int(out["weight_devices"]) == 4  # weights replicated on every device
    assert out["losses"].shape == (2,) and np.all(np.isfinite(out["losses"])), out["losses"]
    assert bool(out["finite"])
    assert float(out["changed"]) > 0.5, "training did not update the weights"


@subprocess_test
def test_tensorflow_mirrored_strategy_on_2_cpus():
    code = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
""" + BUILD + """
with strategy.scope():
    model, losses, changed, finite = build_and_train(batch_size=4)
OUTPUTS = {"losses": losses, "changed": changed, "finite": finite,
           "replicas": strategy.num_replicas_in_sync,
           "mirrored": isinstance(model.backbone.trainable_weights[0].value,
                                  tf.distribute.DistributedValues)}
"""
    out = run_in_backends(code, ["tensorflow"], inputs=batch())["tensorflow"]
    assert int(out["replicas"]) == 2
    assert bool(out["mirrored"])
    assert out["losses"].shape == (2,) and np.all(np.isfinite(out["losses"])), out["losses"]
    assert bool(out["finite"])
    assert float(out["changed"]) > 0.5, "training did not update the weights"


@pytest.mark.skipif(BACKEND != "torch", reason="Keras distributes on JAX and TensorFlow")
def test_torch_with_a_distribution_fails_clearly():
    model = keras_hpdm.PatchDiffusionModel(
        RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=2), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=["cpu:0"]))
    try:
        with pytest.raises(ValueError, match="no distribution backend for torch"):
            model.fit(batch(4), batch_size=4, epochs=1, verbose=0)
    finally:
        keras.distribution.set_distribution(None)
    assert keras.distribution.distribution() is None
