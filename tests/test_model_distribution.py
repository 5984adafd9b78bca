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
# The subprocess tests run their backends themselves: once, in the torch pass (the shortest).
subprocess_test = pytest.mark.skipif(BACKEND != "torch", reason="runs its backend itself")

# Both runs of a test start from the same weights and see the same global batches, in
# the same order, with the same noise: a data-parallel step must then equal a one-device
# step on the global batch (the mean of the per-example losses and their gradients). Float32
# reductions in another order differ by ~1e-7 (observed: weights 6e-8 / 1.2e-7, JAX / TF),
# far below what summing the replicas' gradients (updates x replicas) or training on one
# shard would change.
LOSS_RTOL, WEIGHT_ATOL, UPDATE_RTOL = 1e-5, 1e-6, 1e-4

BUILD = """
import keras
import numpy as np
import keras_hpdm
from keras_hpdm.backbones import RINBackbone


class FixedNoiseModel(keras_hpdm.PatchDiffusionModel):
    # The model's own loss, with each example's sigma and noise taken from `y`, which Keras
    # splits across replicas with `x`. (tf.distribute replicas each draw their own noise for
    # their shard, so the model's own noise cannot equal a one-device draw on the global
    # batch.)
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self._fixed = y
        try:
            return super().compute_loss(x=x, y=None, y_pred=y_pred,
                                        sample_weight=sample_weight, training=training)
        finally:
            self._fixed = None

    def pyramid_loss(self, patches, coords, conditions, sigma, noise, sample_weight=None):
        if getattr(self, "_fixed", None) is not None:
            sigma, noise = self._fixed["sigma"], self._fixed["noise"]
        return super().pyramid_loss(patches, coords, conditions, sigma, noise, sample_weight)


def build_and_train(batch_size, weights=None, fixed_noise=False):
    keras.utils.set_random_seed(0)
    spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_classes=2)
    cls = FixedNoiseModel if fixed_noise else keras_hpdm.PatchDiffusionModel
    model = cls(backbone, seed=0, condition_dropout=0.0)
    if weights is not None:
        model.set_weights(weights)
    initial = model.get_weights()
    flat = lambda ws: np.concatenate([np.ravel(w) for w in ws])
    start = flat(model.backbone.get_weights())
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x = {k: INPUTS[k] for k in ("patches", "coords", "label")}
    y = {k: INPUTS[k] for k in ("sigma", "noise")} if fixed_noise else None
    history = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    losses = np.array([history.history[k][0] for k in ("loss", "loss_level_0", "loss_level_1")])
    return model, initial, {"losses": losses, "start": start,
                            "weights": flat(model.backbone.get_weights())}


def report(prefix, result):
    return {prefix + "_" + k: v for k, v in result.items()}
"""


def batch(size=8):
    """Two global batches of 4 (8 examples), with fixed per-example sigma and noise."""
    rng = np.random.default_rng(0)
    patches = rng.uniform(-1, 1, (size, 2) + SPEC.patch_size + (3,)).astype("float32")
    return {
        "patches": patches,
        "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(i))
                            for i in range(size)]),
        "label": np.arange(size, dtype="int32") % 2,
        "sigma": (np.exp(rng.normal(-1.2, 1.2, (size, 2))) * [1, 2]).astype("float32"),
        "noise": rng.standard_normal(patches.shape).astype("float32"),
    }


def assert_same_training(out):
    """The distributed run's losses (total and per level) and weights equal the one-device
    run's; its weight updates too, relative to their size."""
    np.testing.assert_allclose(out["dist_losses"], out["single_losses"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(out["dist_weights"], out["single_weights"], atol=WEIGHT_ATOL,
                               rtol=0)
    np.testing.assert_array_equal(out["dist_start"], out["single_start"])
    single, dist = (out[k + "_weights"] - out[k + "_start"] for k in ("single", "dist"))
    assert np.linalg.norm(single) > 1e-2, "training did not update the weights"
    assert np.linalg.norm(dist - single) < UPDATE_RTOL * np.linalg.norm(single), (
        np.linalg.norm(dist) / np.linalg.norm(single))


@subprocess_test
def test_jax_data_parallel_on_4_cpu_devices():
    """The model's own noise: one SPMD program on the global batch draws what one device
    draws, so no noise needs fixing."""
    code = BUILD + """
_, initial, single = build_and_train(batch_size=4)
devices = keras.distribution.list_devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
model, _, dist = build_and_train(batch_size=4, weights=initial)
weight = model.backbone.trainable_weights[0].value
OUTPUTS = {**report("single", single), **report("dist", dist),
           "num_devices": len(devices), "weight_devices": len(weight.sharding.device_set)}
"""
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    with mock.patch.dict(os.environ, {"XLA_FLAGS": flags.strip()}):
        out = run_in_backends(code, ["jax"], inputs=batch())["jax"]
    assert int(out["num_devices"]) == 4
    assert int(out["weight_devices"]) == 4  # weights replicated on every device
    assert_same_training(out)


@subprocess_test
def test_jax_generation_spreads_tile_batches_over_4_cpu_devices():
    """Under `DataParallel` every tile batch (3 samples x tiles, padded to a multiple of 4)
    is split over the 4 devices, and the videos are one device's (to float rounding)."""
    code = """
import keras
import numpy as np
import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.models import generation

spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)

def build(weights=None):
    keras.utils.set_random_seed(0)
    model = keras_hpdm.PatchDiffusionModel(
        RINBackbone.from_preset("tiny", pyramid=spec, num_classes=2), seed=0)
    rng = np.random.default_rng(0)
    for fusion in model.backbone.fusions:  # context that matters
        fusion.context_kernel.assign(rng.normal(scale=0.2, size=fusion.context_kernel.shape))
    if weights is not None:
        model.set_weights(weights)
    return model

def pyramid(model):
    return model.generate([0, 1, 1], num_steps=2, seed=3, verbose=0, tile_batch_size=5,
                          guidance_scale=1.0, return_pyramid=True)[1]

single_model = build()
single = pyramid(single_model)
placed = []
shard = generation.shard_batch
def recording_shard(inputs):
    out = shard(inputs)
    placed.append((len(out["sigma"]), len(out["sigma"].sharding.device_set)))
    return out
generation.shard_batch = recording_shard
devices = keras.distribution.list_devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
dist = pyramid(build(single_model.get_weights()))
OUTPUTS = {"single_0": single[0], "single_1": single[1], "dist_0": dist[0],
           "dist_1": dist[1], "placed": np.array(placed), "num_devices": len(devices)}
"""
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    with mock.patch.dict(os.environ, {"XLA_FLAGS": flags.strip()}):
        out = run_in_backends(code, ["jax"])["jax"]
    assert int(out["num_devices"]) == 4
    placed = out["placed"]
    assert len(placed) > 0 and np.all(placed[:, 1] == 4), placed  # every call on 4 devices
    assert np.all(placed[:, 0] % 4 == 0)  # padded batches
    # The sharded program reassociates float sums differently; through two steps of an
    # untrained model (canvases of magnitude ~100) that is ~5e-5 of the scale. A row out of
    # place (padding, a swapped sample or tile) would differ by the scale itself.
    for level in (0, 1):
        single, dist = out[f"single_{level}"], out[f"dist_{level}"]
        error = np.abs(dist - single).max() / np.abs(single).max()
        print(f"level {level}: max |difference| / max |value| = {error:.1e}")
        assert error < 5e-4, error


@subprocess_test
def test_tensorflow_mirrored_strategy_on_2_cpus():
    code = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
""" + BUILD + """
_, initial, single = build_and_train(batch_size=4, fixed_noise=True)
with strategy.scope():
    model, _, dist = build_and_train(batch_size=4, weights=initial, fixed_noise=True)
# The model's own noise: each replica draws its own (they hold different examples).
draws = strategy.experimental_local_results(strategy.run(
    lambda: keras.random.normal((64,), seed=model.seed_generator)))
OUTPUTS = {**report("single", single), **report("dist", dist),
           "replica_noise": np.stack([np.asarray(d) for d in draws]),
           "replicas": strategy.num_replicas_in_sync,
           "mirrored": isinstance(model.backbone.trainable_weights[0].value,
                                  tf.distribute.DistributedValues)}
"""
    out = run_in_backends(code, ["tensorflow"], inputs=batch())["tensorflow"]
    assert int(out["replicas"]) == 2
    assert bool(out["mirrored"])
    first, second = out["replica_noise"]
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.5, "replicas drew the same noise"
    assert_same_training(out)


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
