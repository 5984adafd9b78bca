"""Data-parallel training: keras.distribution on JAX, tf.distribute on TensorFlow (each in a
subprocess with virtual CPU devices), and a clear error on torch."""

import json
import os
from unittest import mock

import keras
import numpy as np
import pytest

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.testing import run_in_backends, run_processes

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

FIXED_NOISE_MODEL = """
import keras_hpdm


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
"""

BUILD = FIXED_NOISE_MODEL + """
import keras
import numpy as np
from keras_hpdm.backbones import RINBackbone


def build_and_train(batch_size, weights=None, fixed_noise=False, dataset=False):
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
    if dataset:
        # A stream read one step per epoch: Keras keeps its iterator between epochs, so a
        # batch taken before training would never be trained on.
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
        steps = len(INPUTS["label"]) // batch_size
        history = model.fit(data, steps_per_epoch=1, epochs=steps, verbose=0)
    else:
        history = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    losses = np.array([history.history[k][-1] for k in ("loss", "loss_level_0", "loss_level_1")])
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


# A model whose context matters (random fusion kernels, as trained ones are) and whose EMA
# copy holds its weights; generation records, per network call, the rows this process
# passed and the devices they were placed on.
GENERATION = """
import keras
import numpy as np
import keras_hpdm
from keras_hpdm import distribute
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.models import generation

spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)


def build(weights=None):
    keras.utils.set_random_seed(0)
    model = keras_hpdm.PatchDiffusionModel(
        RINBackbone.from_preset("tiny", pyramid=spec, num_classes=2), seed=0)
    if weights is not None:
        model.set_weights(weights)
        return model
    rng = np.random.default_rng(0)
    for fusion in model.backbone.fusions:
        fusion.context_kernel.assign(rng.normal(scale=0.2, size=fusion.context_kernel.shape))
    for ema, weight in zip(model.ema_weights, model.backbone.trainable_weights):
        ema.assign(np.asarray(weight.numpy(), "float32"))
    return model


calls = []
call = generation.CompiledNetwork._call
def recording_call(self, inputs, key=None):
    strategy = getattr(self.model, "_distribute_strategy", None)
    if keras.config.backend() == "tensorflow" and strategy is not None:
        # Each of this worker's replicas is given its own share: (share, local replicas).
        local = strategy.experimental_local_results(inputs)
        sigma = local["sigma"] if isinstance(local, dict) else [r["sigma"] for r in local]
        calls.append((len(sigma[0]), len(sigma)))
    else:
        sigma = inputs["sigma"]
        devices = getattr(getattr(sigma, "sharding", None), "device_set", [None])
        calls.append((len(sigma), len(devices)))
    return call(self, inputs, key)
generation.CompiledNetwork._call = recording_call
seeds = []
generate_plan = generation.PyramidGenerator.__call__
def recording_generate(self, plan):
    seeds.append(plan.seed)
    return generate_plan(self, plan)
generation.PyramidGenerator.__call__ = recording_generate


def pyramid(model):
    return model.generate([0, 1, 1], num_steps=2, seed=3, verbose=0, tile_batch_size=5,
                          guidance_scale=1.5, return_pyramid=True)
"""


@subprocess_test
def test_jax_generation_spreads_tile_batches_over_4_cpu_devices():
    """Under `DataParallel` every tile batch (3 samples x tiles, padded to a multiple of 4)
    is split over the 4 devices, and the videos are one device's (to float rounding)."""
    code = GENERATION + """
single_model = build()
single = pyramid(single_model)[1]
del calls[:]
devices = keras.distribution.list_devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
dist = pyramid(build(single_model.get_weights()))[1]
OUTPUTS = {"single_0": single[0], "single_1": single[1], "dist_0": dist[0],
           "dist_1": dist[1], "placed": np.array(calls), "num_devices": len(devices)}
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


@subprocess_test
def test_tensorflow_mirrored_strategy_trains_every_batch_of_a_stream():
    """One worker, a tf.data stream read with `steps_per_epoch`: Keras' TensorFlow trainer
    reads a first batch to build the model under a strategy; every batch must still be
    trained on once, in order (a lost batch trains on batch 2 first and runs out of data
    an epoch early)."""
    code = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
""" + BUILD + """
_, initial, single = build_and_train(batch_size=4, fixed_noise=True, dataset=True)
with strategy.scope():
    model, _, dist = build_and_train(batch_size=4, weights=initial, fixed_noise=True,
                                     dataset=True)
OUTPUTS = {**report("single", single), **report("dist", dist),
           "steps": int(model.optimizer.iterations.numpy())}
"""
    out = run_in_backends(code, ["tensorflow"], inputs=batch())["tensorflow"]
    assert int(out["steps"]) == 2
    assert_same_training(out)


@pytest.mark.skipif(BACKEND != "torch", reason="Keras distributes on JAX and TensorFlow")
def test_torch_cannot_join_a_multi_process_run():
    with pytest.raises(ValueError, match="no distribution backend for torch"):
        keras_hpdm.distribute.initialize("localhost:1234", 2, 0)


@pytest.mark.skipif(BACKEND == "torch", reason="torch refuses before reading the cluster")
@pytest.mark.parametrize("cluster, message", [
    ({"job_addresses": "localhost:1234", "num_processes": 2}, "KERAS_DISTRIBUTION_PROCESS_ID"),
    ({"job_addresses": "localhost:1234", "num_processes": 2, "process_id": 2}, "process_id"),
    ({"job_addresses": "localhost", "num_processes": 1, "process_id": 0}, "host:port"),
    ({"job_addresses": "a:1", "num_processes": "two", "process_id": 0}, "integers"),
])
def test_a_bad_cluster_is_named_before_anything_starts(cluster, message):
    with mock.patch.dict(os.environ, {}, clear=False):
        for name in keras_hpdm.distribute.ENVIRONMENT + ("TF_CONFIG",):
            os.environ.pop(name, None)
        with pytest.raises(ValueError, match=message):
            keras_hpdm.distribute.initialize(**cluster)
    assert keras.distribution.distribution() is None


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


# --------------------------------------------------------------- multi-process runs
# A run of 2 processes on loopback ports against one process on the same global batches:
# each process trains on its own shard of `pyramid_dataset` (2 of the 4 examples a step),
# and the 2-process step must equal the one-process step on both shards' batches together.
MULTI_PROCESS = """
import json
import keras
import numpy as np
import keras_hpdm
from keras_hpdm import distribute
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.callbacks import TrainingCheckpoint, load_training_checkpoint

GLOBAL_BATCH, STEPS = 4, 3
spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)
videos, labels = INPUTS["videos"], INPUTS["labels"]


def make_dataset(batch_size, shard, start_example=0, fixed_noise=False, repeat=True,
                 return_offsets=False):
    # With repeat=False the pipeline's epoch keys also depend on TensorFlow's global seed
    # and on how many random ops were made since it was set: reset it, so that every
    # process makes a shard's data exactly as the one-process run does.
    keras.utils.set_random_seed(0)
    ds = keras_hpdm.data.pyramid_dataset(videos, spec, batch_size, labels=labels, seed=0,
                                         shard=shard, start_example=start_example,
                                         repeat=repeat,
                                         return_offsets=return_offsets or fixed_noise)
    if not fixed_noise:
        return ds
    import tensorflow as tf

    def split(batch):  # (x, y): y holds each example's sigma and noise, drawn from its index
        seeds = tf.stack([batch["index"], tf.zeros_like(batch["index"])], 1)
        draw = lambda fn, shape: tf.map_fn(lambda s: fn(shape, seed=s), seeds,
                                           fn_output_signature=tf.float32)
        sigma = tf.exp(draw(tf.random.stateless_normal, (2,)) * 1.2 - 1.2) * [1.0, 2.0]
        noise = draw(tf.random.stateless_normal, batch["patches"].shape[1:])
        x = {k: batch[k] for k in ("patches", "coords", "label")}
        return x, {"sigma": sigma, "noise": noise}

    return ds.map(split)


def build(weights=None, cls=keras_hpdm.PatchDiffusionModel):
    keras.utils.set_random_seed(0)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_classes=2)
    model = cls(backbone, seed=0, condition_dropout=0.0)
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


def flat(model):
    return np.concatenate([np.ravel(w) for w in model.backbone.get_weights()])


def indices_seen(dataset):
    return np.concatenate([np.asarray(b["index"]) for b in dataset])
"""


def multi_process_inputs(count=16):
    rng = np.random.default_rng(0)
    return {"videos": rng.integers(0, 256, (count, 4, 32, 32, 3), dtype=np.uint8),
            "labels": (np.arange(count) % 2).astype("int32")}


def single_process_reference(backend, fixed_noise=False):
    """Trains STEPS steps in one process on the two shards' batches concatenated."""
    code = FIXED_NOISE_MODEL + MULTI_PROCESS + """
import tensorflow as tf

FIXED = FIXED_NOISE
model = build(cls=FixedNoiseModel if FIXED else keras_hpdm.PatchDiffusionModel)
halves = [make_dataset(GLOBAL_BATCH // 2, (i, 2), fixed_noise=FIXED) for i in (0, 1)]
both_shards = tf.data.Dataset.zip(tuple(halves)).map(
    lambda a, b: tf.nest.map_structure(lambda u, v: tf.concat([u, v], 0), a, b))
initial, start = model.get_weights(), flat(model)
history = model.fit(both_shards, steps_per_epoch=1, epochs=STEPS, verbose=0)
OUTPUTS = {"losses": np.array(history.history["loss"]), "weights": flat(model), "start": start,
           **{f"initial_{i}": w for i, w in enumerate(initial)}}
""".replace("FIXED_NOISE", str(fixed_noise))
    return run_in_backends(code, [backend], inputs=multi_process_inputs())[backend]


@subprocess_test
def test_jax_two_processes_train_as_one(tmp_path):
    """`distribute.initialize` on 2 local JAX processes (gloo CPU collectives): disjoint,
    covering shards; losses and weights of the one-process run; a checkpoint written by
    process 0 alone that both processes resume from, and sample from after training."""
    reference = single_process_reference("jax")
    initial = {k: v for k, v in reference.items() if k.startswith("initial_")}
    code = MULTI_PROCESS + """
import json
import os
import jax
from jax.experimental import multihost_utils

distribute.initialize()
weights = [INPUTS[f"initial_{i}"] for i in range(sum(k.startswith("initial_") for k in INPUTS))]
seen = indices_seen(distribute.distributed_dataset(
    None, lambda b, s: make_dataset(b, s, repeat=False, return_offsets=True), GLOBAL_BATCH))
directory = os.environ["HPDM_CHECKPOINT"]
model = build(weights)
first = model.fit(distribute.distributed_dataset(model, make_dataset, GLOBAL_BATCH),
                  steps_per_epoch=1, epochs=STEPS - 1, verbose=0,
                  callbacks=[TrainingCheckpoint(directory)])
multihost_utils.sync_global_devices("checkpoint written")
resumed = load_training_checkpoint(directory)  # every process, under the distribution
rest = resumed.fit(distribute.distributed_dataset(
    resumed, lambda b, s: make_dataset(b, s, start_example=(STEPS - 1) * b), GLOBAL_BATCH),
    steps_per_epoch=1, epochs=1, verbose=0)
weight = resumed.backbone.trainable_weights[0].value
video = resumed.generate([0, 1], num_steps=1, verbose=0)  # after fit, in lockstep
OUTPUTS = {"seen": seen, "video": video,
           "losses": np.array(first.history["loss"] + rest.history["loss"]),
           "weights": flat(resumed), "process": jax.process_index(),
           "processes": jax.process_count(), "devices": len(weight.sharding.device_set),
           "files": np.array(sorted(os.listdir(directory)))}
"""
    with mock.patch.dict(os.environ, {"HPDM_CHECKPOINT": str(tmp_path)}):
        outs = run_processes(code, "jax", 2, inputs={**multi_process_inputs(), **initial},
                             timeout=300)
    assert [int(o["process"]) for o in outs] == [0, 1]
    assert all(int(o["processes"]) == 2 and int(o["devices"]) == 2 for o in outs)
    first, second = (set(o["seen"].tolist()) for o in outs)
    assert not first & second, "an example was read by both processes"
    assert first | second == set(range(16)), "an example was skipped"
    assert all(len(o["seen"]) == 8 for o in outs)
    assert "model.keras" in outs[0]["files"].tolist()
    np.testing.assert_array_equal(outs[0]["video"], outs[1]["video"])
    assert outs[0]["video"].shape == (2, 4, 32, 32, 3)
    moved = np.linalg.norm(reference["weights"] - reference["start"])
    assert moved > 1e-2, "training did not update the weights"
    for out in outs:  # the losses are the global batch's, the same on every process
        np.testing.assert_allclose(out["losses"], reference["losses"], rtol=LOSS_RTOL)
        # Adam divides by the gradients' size, so float-order differences in near-zero
        # gradients reach ~2e-5 in single weights; over all weights the runs differ by
        # 1e-5 of the update (both observed). Training on one shard, a resume without the
        # optimizer or noise state, or a shard read twice changes the update itself.
        error = np.linalg.norm(out["weights"] - reference["weights"]) / moved
        print(f"|weights - one process's| / |update| = {error:.1e}")
        assert error < UPDATE_RTOL, error


@subprocess_test
def test_tensorflow_two_workers_train_as_one(tmp_path):
    """`distribute.initialize` on 2 local TensorFlow workers (`MultiWorkerMirroredStrategy`
    on loopback): disjoint, covering shards; the one-process run's losses and weights with
    each example's noise fixed (workers draw their own); a checkpoint from worker 0 alone."""
    reference = single_process_reference("tensorflow", fixed_noise=True)
    initial = {k: v for k, v in reference.items() if k.startswith("initial_")}
    code = FIXED_NOISE_MODEL + MULTI_PROCESS + """
import json
import os

strategy = distribute.initialize()
weights = [INPUTS[f"initial_{i}"] for i in range(sum(k.startswith("initial_") for k in INPUTS))]
directory = os.environ["HPDM_CHECKPOINT"]
# What each worker's pipeline reads (one replica per worker: its shard, in order).
seen = indices_seen(make_dataset(GLOBAL_BATCH // 2, (distribute.process_index(), 2),
                                 repeat=False, return_offsets=True))
with strategy.scope():
    model = build(weights, cls=FixedNoiseModel)
history = model.fit(distribute.distributed_dataset(
    model, lambda b, s: make_dataset(b, s, fixed_noise=True), GLOBAL_BATCH),
    steps_per_epoch=1, epochs=STEPS, verbose=0, callbacks=[TrainingCheckpoint(directory)])
OUTPUTS = {"seen": seen, "losses": np.array(history.history["loss"]), "weights": flat(model),
           "process": distribute.process_index(), "processes": distribute.process_count(),
           "replicas": strategy.num_replicas_in_sync,
           "files": np.array(sorted(os.listdir(directory)))}
"""
    with mock.patch.dict(os.environ, {"HPDM_CHECKPOINT": str(tmp_path)}):
        outs = run_processes(code, "tensorflow", 2,
                             inputs={**multi_process_inputs(), **initial}, timeout=300)
    assert [int(o["process"]) for o in outs] == [0, 1]
    assert all(int(o["processes"]) == 2 and int(o["replicas"]) == 2 for o in outs)
    first, second = (set(o["seen"].tolist()) for o in outs)
    assert not first & second and first | second == set(range(16))
    moved = np.linalg.norm(reference["weights"] - reference["start"])
    assert moved > 1e-2, "training did not update the weights"
    for out in outs:
        np.testing.assert_allclose(out["losses"], reference["losses"], rtol=LOSS_RTOL)
        error = np.linalg.norm(out["weights"] - reference["weights"]) / moved
        print(f"|weights - one process's| / |update| = {error:.1e}")
        assert error < UPDATE_RTOL, error
    # Worker 0's file, read here (torch), as the model class it extends.
    saved = keras.saving.load_model(tmp_path / "model.keras", custom_objects={
        "FixedNoiseModel": keras_hpdm.PatchDiffusionModel})
    np.testing.assert_array_equal(
        np.concatenate([np.ravel(w) for w in saved.backbone.get_weights()]), outs[0]["weights"])


@subprocess_test
def test_train_command_runs_distributed_on_two_workers(tmp_path):
    """`keras-hpdm train --distributed` as 2 TensorFlow workers: the global batch split over
    them, samples generated by both during training, process 0 alone writes the run, which
    then resumes on one process."""
    out = tmp_path / "run"
    code = """
import json
import os
from keras_hpdm.cli import main

status = main(["train", "builtin:moving_mnist?num_videos=16&num_frames=4&size=32",
               "--labels", "auto", "--channels", "1", "--patch-size", "2", "16", "16",
               "--levels", "2", "--batch-size", "4", "--steps", "4", "--log-every", "2",
               "--save-every", "2", "--sample-every", "4", "--sample-steps", "1",
               "--out", os.environ["HPDM_RUN"], "--distributed", "--verbose", "0"])
OUTPUTS = {"status": status}
"""
    with mock.patch.dict(os.environ, {"HPDM_RUN": str(out)}):
        outs = run_processes(code, "tensorflow", 2, timeout=300)
    assert [int(o["status"]) for o in outs] == [0, 0]
    with open(out / "training_state.json") as f:
        state = json.load(f)
    assert state["step"] == 4 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["args"]["batch_size"] == 4
    # Both workers sampled (the calls are split between them); worker 0 wrote the files.
    assert sorted(os.listdir(out / "samples")) == ["step_0000004.gif", "step_0000004.png"]
    # The run resumes without --distributed (a per-invocation flag), on one process.
    resumed = run_in_backends(f"""
from keras_hpdm.cli import main
OUTPUTS = {{"status": main(["train", "--resume", "--out", {str(out)!r}, "--steps", "6",
                           "--verbose", "0"])}}
""", ["tensorflow"])["tensorflow"]
    assert int(resumed["status"]) == 0
    with open(out / "training_state.json") as f:
        assert json.load(f)["step"] == 6


@subprocess_test
def test_jax_model_parallel_on_8_cpu_devices():
    """`distribute.model_parallel` on a (2 batch x 4 model) mesh of virtual devices: the wide
    kernels, their EMA copies and optimizer slots hold a quarter each on every device; the
    loss and a training step equal the unsharded model's; a UNet places too."""
    code = """
import keras
import numpy as np
import keras_hpdm
from keras_hpdm import distribute
from keras_hpdm.backbones import RINBackbone, UNet3DBackbone

spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)
x = {k: INPUTS[k] for k in ("patches", "coords", "label")}

def build(weights=None):
    keras.utils.set_random_seed(0)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_classes=2, num_heads=4)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=0, condition_dropout=0.0)
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model

def run(model):
    loss = model.pyramid_loss(x["patches"], x["coords"], {"label": x["label"]},
                              INPUTS["sigma"], INPUTS["noise"])[0]
    model.fit(x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return float(loss), np.concatenate([np.ravel(w) for w in model.backbone.get_weights()])

single = build()
initial = single.get_weights()
start = np.concatenate([np.ravel(w) for w in single.backbone.get_weights()])
single_loss, single_weights = run(single)
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"],
                                     keras.distribution.list_devices("cpu"))
distribution = distribute.model_parallel(mesh)
keras.distribution.set_distribution(distribution)
model = build(initial)
by_path = {v.path.split("/", 1)[1]: v for v in model.backbone.weights}  # past the name
query = by_path["block_0/read_attn/query/kernel"]
ema = model.ema_weights[[w is query for w in model.backbone.trainable_weights].index(True)]
dist_loss, dist_weights = run(model)
slots = [v for v in model.optimizer.variables if tuple(v.shape) == tuple(query.shape)]
def share(v):  # the fraction of the variable one device holds
    return v.value.addressable_shards[0].data.size / v.value.size
unet = keras_hpdm.PatchDiffusionModel(UNet3DBackbone.from_preset(
    "tiny", pyramid=spec, num_classes=2))
conv = [v for v in unet.weights if v.path.endswith("conv1_spatial/kernel")][0]
OUTPUTS = {"single_loss": single_loss, "dist_loss": dist_loss, "start": start,
           "single_weights": single_weights, "dist_weights": dist_weights,
           "query_share": share(query), "ema_share": share(ema),
           "slot_shares": np.array([share(v) for v in slots]),
           "norm_share": share(by_path["block_0/read_norm_x/gamma"]),
           "conv_share": share(conv),
           "bytes": distribute.parameter_bytes_per_device(model, distribution),
           "bytes_replicated": sum(v.value.nbytes for v in model.weights
                                   + list(model.optimizer.variables))}
"""
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    inputs = batch(8)
    with mock.patch.dict(os.environ, {"XLA_FLAGS": flags.strip()}):
        out = run_in_backends(code, ["jax"], inputs=inputs)["jax"]
    assert float(out["query_share"]) == 0.25 and float(out["ema_share"]) == 0.25
    assert len(out["slot_shares"]) >= 2 and np.all(out["slot_shares"] == 0.25)
    assert float(out["norm_share"]) == 1.0  # narrow vectors stay whole
    assert float(out["conv_share"]) == 0.25
    assert int(out["bytes"]) < 0.8 * int(out["bytes_replicated"])
    np.testing.assert_allclose(out["dist_loss"], out["single_loss"], rtol=LOSS_RTOL)
    moved = np.linalg.norm(out["single_weights"] - out["start"])
    assert moved > 1e-2
    error = np.linalg.norm(out["dist_weights"] - out["single_weights"]) / moved
    print(f"|weights - unsharded| / |update| = {error:.1e}")
    assert error < UPDATE_RTOL, error




def one_device_generation(backend):
    """The reference: `pyramid` of a `build()` model in one process on one device; its
    outputs and, apart, its weights (`w0`, `w1`, ...) for the distributed copies."""
    single = run_in_backends(GENERATION + """
model = build()
video, canvases = pyramid(model)
OUTPUTS = {"video": video, **{f"level_{i}": c for i, c in enumerate(canvases)},
           "calls": np.array(calls), **{f"w{i}": w for i, w in enumerate(model.get_weights())}}
""", [backend])[backend]
    return single, {k: v for k, v in single.items() if k.startswith("w")}


@subprocess_test
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_processes_generate_as_one(backend):
    """`generate` in a 2-process run: both processes return the one-process videos, each
    network call split between them (JAX: the batch on both processes' devices; TensorFlow:
    each worker passes half the rows); without a seed, both use process 0's."""
    single, weights = one_device_generation(backend)
    outs = run_processes(GENERATION + """
strategy = distribute.initialize()
names = sorted((k for k in INPUTS if k.startswith("w")), key=lambda k: int(k[1:]))
if strategy is None:
    model = build([INPUTS[k] for k in names])
else:
    with strategy.scope():
        model = build([INPUTS[k] for k in names])
video, canvases = pyramid(model)
seeded_calls = np.array(calls)
unseeded = model.generate([1], num_steps=2, verbose=0)  # process 0's fresh seed
OUTPUTS = {"video": video, **{f"level_{i}": c for i, c in enumerate(canvases)},
           "calls": seeded_calls, "process": distribute.process_index(),
           "unseeded": unseeded, "seed": seeds[-1]}
""", backend, 2, inputs=weights, timeout=300)
    assert [int(o["process"]) for o in outs] == [0, 1]
    one = single["calls"][:, 0]
    assert len(one) > 0 and np.all(single["calls"][:, 1] <= 1)
    for out in outs:
        calls = out["calls"]
        assert len(calls) == len(one)  # the same network calls, in lockstep
        padded = one + one % 2  # an odd batch gets one repeated row
        if backend == "jax":  # the whole batch, placed over both processes' devices
            np.testing.assert_array_equal(calls[:, 0], padded)
            assert np.all(calls[:, 1] == 2)
        else:  # each worker's replica its half
            np.testing.assert_array_equal(calls[:, 0], padded // 2)
            assert np.all(calls[:, 1] == 1)
        # Split programs reassociate float sums (see the 4-device test); a row of another
        # process in the wrong place would differ by the canvas scale.
        for level in (0, 1):
            ref = single[f"level_{level}"]
            error = np.abs(out[f"level_{level}"] - ref).max() / np.abs(ref).max()
            print(f"{backend} process {int(out['process'])} level {level}: {error:.1e}")
            assert error < 5e-4, error
    np.testing.assert_array_equal(outs[0]["video"], outs[1]["video"])
    # Under TensorFlow each worker's rows come back to both, so the videos agree anyway:
    # the seeds themselves must (else the rows would mix two draws).
    assert int(outs[0]["seed"]) == int(outs[1]["seed"])
    np.testing.assert_array_equal(outs[0]["unseeded"], outs[1]["unseeded"])


@subprocess_test
def test_tensorflow_mirrored_strategy_generates_as_one_device():
    """A model built under a one-worker `MirroredStrategy` on 2 devices: each network call
    gives each replica half the rows, and the videos equal one device's. (Keras runs a
    batch it is given whole on every replica and returns it once per replica: generation
    used to fail there on a doubled batch.)"""
    single, weights = one_device_generation("tensorflow")
    out = run_in_backends("""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + GENERATION + """
names = sorted((k for k in INPUTS if k.startswith("w")), key=lambda k: int(k[1:]))
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    model = build([INPUTS[k] for k in names])
video, canvases = pyramid(model)
OUTPUTS = {"video": video, **{f"level_{i}": c for i, c in enumerate(canvases)},
           "calls": np.array(calls)}
""", ["tensorflow"], inputs=weights)["tensorflow"]
    one = single["calls"][:, 0]
    np.testing.assert_array_equal(out["calls"][:, 0], (one + one % 2) // 2)
    assert np.all(out["calls"][:, 1] == 2)
    for level in (0, 1):
        ref = single[f"level_{level}"]
        error = np.abs(out[f"level_{level}"] - ref).max() / np.abs(ref).max()
        assert error < 5e-4, (level, error)
    assert np.abs(out["video"].astype(int) - single["video"]).max() <= 1


@subprocess_test
def test_jax_model_parallel_across_two_processes(tmp_path):
    """`model_parallel` on a (1 batch x 2 model) mesh whose one model replica spans both
    processes: each process holds half of every wide kernel, both read the same data (one
    shard of the global batch: `distributed_dataset`), training equals one process's, and
    process 0's checkpoint holds the weights whole and resumes split on both."""
    reference = run_in_backends(MULTI_PROCESS + """
model = build()
initial, start = model.get_weights(), flat(model)
history = model.fit(make_dataset(GLOBAL_BATCH, None), steps_per_epoch=1, epochs=STEPS,
                    verbose=0)
OUTPUTS = {"losses": np.array(history.history["loss"]), "weights": flat(model), "start": start,
           **{f"initial_{i}": w for i, w in enumerate(initial)}}
""", ["jax"], inputs=multi_process_inputs())["jax"]
    initial = {k: v for k, v in reference.items() if k.startswith("initial_")}
    with mock.patch.dict(os.environ, {"HPDM_CHECKPOINT": str(tmp_path)}):
        outs = run_processes(MULTI_PROCESS + """
import os
import jax
from jax.experimental import multihost_utils

distribute.initialize()
mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"],
                                     keras.distribution.list_devices())
keras.distribution.set_distribution(distribute.model_parallel(mesh))
weights = [INPUTS[f"initial_{i}"] for i in range(sum(k.startswith("initial_") for k in INPUTS))]
seen = indices_seen(distribute.distributed_dataset(
    None, lambda b, s: make_dataset(b, s, repeat=False, return_offsets=True), GLOBAL_BATCH))
model = build(weights)
directory = os.environ["HPDM_CHECKPOINT"]
history = model.fit(distribute.distributed_dataset(model, make_dataset, GLOBAL_BATCH),
                    steps_per_epoch=1, epochs=STEPS, verbose=0,
                    callbacks=[TrainingCheckpoint(directory)])
query = [w for w in model.backbone.weights if w.path.endswith("read_attn/query/kernel")][0]

def gathered(layer):
    return np.concatenate([np.ravel(multihost_utils.process_allgather(w.value, tiled=True))
                           for w in layer.weights])

multihost_utils.sync_global_devices("checkpoint written")
resumed = load_training_checkpoint(directory)  # every process, split again
OUTPUTS = {"seen": seen, "losses": np.array(history.history["loss"]),
           "weights": gathered(model.backbone),
           "all": gathered(model), "resumed": gathered(resumed),
           "resumed_local": np.array(
               [w for w in resumed.backbone.weights
                if w.path.endswith("read_attn/query/kernel")][0]
               .value.addressable_shards[0].data.shape),
           "query": np.array(query.shape), "query_local": np.array(
               query.value.addressable_shards[0].data.shape),
           "process": jax.process_index()}
""", "jax", 2, inputs={**multi_process_inputs(), **initial}, timeout=300)
    assert [int(o["process"]) for o in outs] == [0, 1]
    for out in outs:
        # The checkpoint holds the split weights whole (gathered for saving), and a resume
        # splits them again.
        np.testing.assert_array_equal(out["resumed"], out["all"])
        assert out["resumed_local"].tolist() == out["query_local"].tolist()
        # One model replica: both processes read the whole global batch, the same one.
        np.testing.assert_array_equal(out["seen"], outs[0]["seen"])
        assert sorted(out["seen"].tolist()) == list(range(16))
        shape, local = out["query"].tolist(), out["query_local"].tolist()
        assert local == [shape[0], shape[1] // 2, shape[2]], (shape, local)  # half the heads
        np.testing.assert_allclose(out["losses"], reference["losses"], rtol=LOSS_RTOL)
        moved = np.linalg.norm(reference["weights"] - reference["start"])
        error = np.linalg.norm(out["weights"] - reference["weights"]) / moved
        print(f"|weights - one process's| / |update| = {error:.1e}")
        assert error < UPDATE_RTOL, error


@pytest.mark.parametrize("mesh_shape, count, expected", [
    ((4, 1), 4, [(4, 0), (4, 1), (4, 2), (4, 3)]),   # data parallel: a shard each
    ((8, 2), 4, [(4, 0), (4, 1), (4, 2), (4, 3)]),   # 2 replicas per process
    ((2, 4), 4, [(2, 0), (2, 0), (2, 1), (2, 1)]),   # a replica over 2 processes
    ((1, 8), 4, [(1, 0)] * 4),                       # one replica over all
])
def test_data_shards_follow_the_model_replicas(mesh_shape, count, expected):
    from types import SimpleNamespace

    mesh = SimpleNamespace(axis_names=["batch", "model"], shape=mesh_shape)
    distribution = SimpleNamespace(device_mesh=mesh, batch_dim_name="batch")
    got = []
    for index in range(count):
        with mock.patch.object(keras_hpdm.distribute, "process_index", return_value=index):
            got.append(keras_hpdm.distribute.data_shards(distribution, count))
    assert got == expected
    with pytest.raises(ValueError, match="3 processes cannot split evenly"):
        keras_hpdm.distribute.data_shards(
            SimpleNamespace(device_mesh=SimpleNamespace(axis_names=["batch", "model"],
                                                        shape=(2, 2)),
                            batch_dim_name="batch"), 3)


def test_a_failed_process_reports_where_it_failed():
    """A process that prints arrays before failing still shows its traceback's start (where
    it was raised) and its end (the error), not only the arrays."""
    from keras_hpdm.testing.multibackend import _log_tail

    log = ("startup noise\n" * 50 + "Traceback (most recent call last)\n  File \"x.py\", "
           "line 7, in <module>\n" + "[1. 2. 3.]\n" * 3000 + "AssertionError: differ")
    tail = _log_tail(log)
    assert tail.startswith("Traceback") and '"x.py", line 7' in tail
    assert tail.endswith("AssertionError: differ") and len(tail) < 3100
    assert _log_tail("no traceback " * 500) == ("no traceback " * 500)[-3000:]

