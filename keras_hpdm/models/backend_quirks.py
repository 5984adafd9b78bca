"""Where the backends differ for training and generation: the one module that branches.

- TensorFlow's `tf.distribute` replicas each run `compute_loss` on their shard and their
  gradients are *summed* (Keras' JAX distribution runs one SPMD program on the global batch).
- Keras' TensorFlow trainer cannot run `MultiWorkerMirroredStrategy` as it is (Keras 3.15):
  it builds the model from the first batch averaged with `strategy.reduce` and reduces the
  scalar logs along an axis they lack, both failing across workers.
- Keras has no distribution backend for torch, and its torch backend swaps optimizers for
  torch-only subclasses, which a saved file would name (JAX/TensorFlow could not load it).
- Keras' JAX trainer detaches variable values while it trains.
- Keras' JAX `predict_on_batch` does not split a batch over a distribution's devices, and
  in a multi-process run cannot read back an output that other processes' devices hold;
  Keras' TensorFlow one, under a strategy, runs the batch it is given on every replica and
  returns every replica's outputs concatenated.
"""

import contextlib

import keras
from keras import ops

from keras_hpdm import distribute

# Optimizers that the torch backend swaps for torch-only subclasses (TorchOptimizer.__new__);
# a saved file must name the public class so that every backend can load it.
BACKEND_OPTIMIZERS = ("Adadelta", "Adagrad", "Adam", "Adamax", "AdamW", "Lion", "Nadam",
                      "RMSprop", "SGD")
# Replica `r` draws from seed value `seed + r * stride`: far from any nearby user seed.
_REPLICA_SEED_STRIDE = 1_000_003


def _replica_context():
    if keras.config.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()  # None in a cross-replica context
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def scale_loss_for_replicas(loss):
    """Divides a replica's loss by the replica count, as Keras' own `compute_loss` does, so
    the summed gradients are those of the global-batch mean."""
    context = _replica_context()
    if context is None:
        return loss
    return loss / ops.cast(context.num_replicas_in_sync, loss.dtype)


def first_replica_batch(model, iterator, data_batch):
    """For Keras' TensorFlow `_maybe_symbolic_build`: under several workers, symbolic
    tensors shaped as one replica's batch, from the data set's element spec. Keras would
    average the first batch over replicas, which fails across workers. (The batch it reads
    is not lost: `fit` resets its epoch iterator afterwards, which starts the data set
    again; one worker keeps Keras' own path.)"""
    if (iterator is None or getattr(model, "_distribute_strategy", None) is None
            or distribute.process_count() == 1):
        return iterator, data_batch

    def symbolic(spec):
        spec = getattr(spec, "_value_specs", (spec,))[0]  # a PerReplicaSpec: one replica's
        return keras.KerasTensor(tuple(spec.shape), spec.dtype.name)

    spec = iterator.data_adapter.get_tf_dataset().element_spec
    return None, keras.tree.map_structure(symbolic, spec)


def logs_for_worker_mean(logs):
    """`logs` (this replica's scalar metric results) as shape `(1,)` under several TensorFlow
    workers: Keras reduces train-step outputs there with `strategy.reduce("MEAN", axis=0)`,
    which fails on scalars and gives the mean over replicas (the global one: equal batches
    per replica) on `(1,)` values."""
    if _replica_context() is None or distribute.process_count() == 1:
        return logs
    return {k: ops.reshape(v, (1,)) if ops.ndim(v) == 0 else v for k, v in logs.items()}


def replica_seed_offset(dtype):
    """`(2,)` added to a drawn seed: zero, or distinct per `tf.distribute` replica, so
    replicas draw independent noise for their different examples."""
    context = _replica_context()
    if context is None:
        return ops.zeros((2,), dtype)
    replica = ops.cast(context.replica_id_in_sync_group, dtype)
    return ops.stack([replica * ops.cast(_REPLICA_SEED_STRIDE, dtype), ops.zeros((), dtype)])


@keras.saving.register_keras_serializable(package="keras_hpdm")
class ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A `SeedGenerator` whose draws differ between `tf.distribute` replicas (and equal
    `keras.random.SeedGenerator`'s everywhere else)."""

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        return seed + replica_seed_offset(seed.dtype)


def check_distribution():
    # Keras has no torch distribution backend: a distribution set there would be ignored.
    if keras.config.backend() == "torch" and keras.distribution.distribution() is not None:
        raise ValueError(
            "A keras.distribution is set, but Keras has no distribution backend for torch, "
            "so training would silently run on one device. Use the JAX backend "
            "(keras.distribution.DataParallel / ModelParallel) or TensorFlow "
            "(tf.distribute strategies), or call "
            "`keras.distribution.set_distribution(None)`."
        )


@contextlib.contextmanager
def reattach_jax_variables_on_error(model):
    """Keras' JAX trainer detaches the variables' values while it trains and puts them back
    at epoch ends, or in its `finally` only once a step has run: a batch rejected in the
    first step (a bad generator item, a failed `tf.data` assert, a trace-time check) would
    leave every variable detached, silently reading as its initializer. Reattach them."""
    if keras.config.backend() != "jax":
        yield
        return
    variables = {id(v): v for v in model.variables}
    optimizer = getattr(model, "optimizer", None)
    for v in list(getattr(optimizer, "variables", [])) + list(model.metrics_variables):
        variables.setdefault(id(v), v)
    # References, not copies: JAX arrays are immutable, and nothing has consumed them yet
    # when the first step fails.
    saved = [(v, v.value) for v in variables.values()]
    try:
        yield
    except BaseException:
        for v, value in saved:
            if v._value is None:  # detached and never given back
                v.assign(value)
        raise


def batch_replicas():
    """How many devices a generation batch is split over: the batch axis of an active
    `keras.distribution` under JAX (Keras' `predict_on_batch` would run it on one device),
    else 1."""
    distribution = keras.distribution.distribution()
    if distribution is None or keras.config.backend() != "jax":
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


def strategy_replicas(model):
    """How many replicas a TensorFlow `predict_on_batch` of `model` runs on (those of its
    `tf.distribute` strategy, over all workers), else 1."""
    strategy = getattr(model, "_distribute_strategy", None)
    if keras.config.backend() != "tensorflow" or strategy is None:
        return 1
    return int(strategy.num_replicas_in_sync)


def per_replica_inputs(model, inputs):
    """`inputs` (batch first, a multiple of `strategy_replicas(model)`, the same on every
    worker) cut into one contiguous share per replica of `model`'s strategy:
    `predict_on_batch` runs each share on its replica and returns the outputs in order.
    Given the whole batch, Keras' TensorFlow trainer runs all of it on every replica and
    returns it once per replica."""
    import tensorflow as tf

    strategy = model._distribute_strategy
    share = len(keras.tree.flatten(inputs)[0]) // strategy.num_replicas_in_sync

    def replica_share(context):
        begin = context.replica_id_in_sync_group * share
        return keras.tree.map_structure(lambda x: tf.constant(x[begin:begin + share]), inputs)

    return strategy.experimental_distribute_values_from_function(replica_share)


def chief_seed(seed, model):
    """Process 0's `seed` on every process of a run that generates in lockstep (a JAX
    multi-process distribution, or `model` under a TensorFlow multi-worker strategy): a
    fresh seed drawn by each process would give each its own tile batches. Else `seed`."""
    if distribute.process_count() == 1:
        return seed
    if keras.config.backend() == "jax":
        if keras.distribution.distribution() is None:
            return seed
        import numpy as np
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.uint32(seed)))
    if strategy_replicas(model) == 1:
        return seed
    import tensorflow as tf

    strategy = model._distribute_strategy
    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(
            seed if context.replica_id_in_sync_group == 0 else 0, tf.int64))
    return int(strategy.reduce("SUM", values, axis=None))


def shard_batch(inputs):
    """Places every array of `inputs` (batch first, a multiple of `batch_replicas()`) on the
    distribution's devices, split along the batch: the compiled function then runs each
    device's share there (SPMD)."""
    distribution = keras.distribution.distribution()

    def place(x):
        return keras.distribution.distribute_tensor(x, distribution.get_data_layout(x.shape))

    return keras.tree.map_structure(place, inputs)


def replicated_across_processes(outputs):
    """`outputs`, made whole on every device when a JAX distribution spans processes.

    Every process of a multi-process run generates the same videos in lockstep: it makes
    the same tile batches, the network splits each over all processes' devices, and each
    process must then read back the whole output (Keras' `predict_on_batch` converts it
    to numpy, which a batch split across processes refuses). Constraining the network's
    output to be replicated gathers it inside the compiled call. Elsewhere: unchanged.
    """
    distribution = keras.distribution.distribution()
    if keras.config.backend() != "jax" or distribution is None or distribute.process_count() == 1:
        return outputs
    import jax

    replicated = jax.sharding.NamedSharding(distribution.device_mesh.backend_mesh,
                                            jax.sharding.PartitionSpec())

    def gather(x):
        if isinstance(x, (jax.Array, jax.core.Tracer)):
            return jax.lax.with_sharding_constraint(x, replicated)
        return x  # symbolic (building), nothing to place

    return keras.tree.map_structure(gather, outputs)


def public_optimizers(config):
    """`config` (a serialized config, nested) with the torch backend's optimizer classes
    named as the public Keras ones."""
    if isinstance(config, list):
        return [public_optimizers(v) for v in config]
    if not isinstance(config, dict):
        return config
    out = {k: public_optimizers(v) for k, v in config.items()}
    if (str(out.get("module", "")).startswith("keras.src.backend.")
            and out.get("class_name") in BACKEND_OPTIMIZERS):
        out.update(module="keras.optimizers", registered_name=None)
    return out
