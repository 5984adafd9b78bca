"""Training over several processes (hosts): JAX's distributed runtime under
`keras.distribution.DataParallel`, TensorFlow's `MultiWorkerMirroredStrategy`; and model
parallelism for the big presets (`model_parallel`: the wide kernels sharded over a mesh
axis, JAX).

Every process runs the same script. `initialize` joins the run; `distributed_dataset` gives
each process its own shard of the data (no example read twice, none skipped), sized so
that the processes' batches together make the global batch; checkpoints are written by
process 0 only (`is_chief`). Keras has no distribution backend for torch.

The cluster comes from the arguments or, as Keras' `keras.distribution.initialize` reads
them, from the environment: `KERAS_DISTRIBUTION_JOB_ADDRESSES` (comma-separated
`host:port` of every process, process 0 first: JAX's coordinator), `..._NUM_PROCESSES` and
`..._PROCESS_ID`. TensorFlow also takes its own `TF_CONFIG` when that is set.

Example (2 hosts; on host 1 set `KERAS_DISTRIBUTION_PROCESS_ID=1`):
```python
# KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234,10.0.0.2:1234
# KERAS_DISTRIBUTION_NUM_PROCESSES=2 KERAS_DISTRIBUTION_PROCESS_ID=0
strategy = keras_hpdm.distribute.initialize()
with strategy.scope() if strategy is not None else contextlib.nullcontext():
    model = keras_hpdm.PatchDiffusionModel(backbone)  # TensorFlow: inside the scope
    model.compile(optimizer="adam")
ds = keras_hpdm.distribute.distributed_dataset(
    model, lambda batch_size, shard: keras_hpdm.data.pyramid_dataset(
        "videos/", spec, batch_size, shard=shard, seed=0), global_batch_size=64)
model.fit(ds, steps_per_epoch=500, epochs=20,
          callbacks=[keras_hpdm.callbacks.TrainingCheckpoint("runs/big")])
```
"""

import contextlib
import json
import os

import keras

ENVIRONMENT = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "KERAS_DISTRIBUTION_PROCESS_ID")


def _cluster(job_addresses, num_processes, process_id, detectable=False):
    """The arguments, completed from the environment and checked; None when none is given
    and the runtime can find the cluster itself (`detectable`)."""
    env = [os.environ.get(name) for name in ENVIRONMENT]
    job_addresses = job_addresses if job_addresses is not None else env[0]
    num_processes = num_processes if num_processes is not None else env[1]
    process_id = process_id if process_id is not None else env[2]
    given = (job_addresses, num_processes, process_id)
    if detectable and all(value is None for value in given):
        return None
    missing = [name for name, value in zip(ENVIRONMENT, given, strict=True) if value is None]
    if missing:
        raise ValueError(
            "A multi-process run needs `job_addresses`, `num_processes` and `process_id` "
            f"(or the environment variables {', '.join(ENVIRONMENT)}); missing: "
            f"{', '.join(missing)}.")
    try:
        num_processes, process_id = int(num_processes), int(process_id)
    except (TypeError, ValueError):
        raise ValueError(f"`num_processes` and `process_id` must be integers, got "
                         f"{num_processes!r} and {process_id!r}.") from None
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"`process_id` must be in [0, num_processes), and num_processes "
                         f">= 1; got process_id={process_id}, num_processes={num_processes}.")
    addresses = [a.strip() for a in str(job_addresses).split(",") if a.strip()]
    if not addresses or any(":" not in a for a in addresses):
        raise ValueError(f"`job_addresses` must be comma-separated host:port, process 0 first; "
                         f"got {job_addresses!r}.")
    return addresses, num_processes, process_id


def initialize(job_addresses=None, num_processes=None, process_id=None):
    """Joins this process to a multi-process data-parallel run; call it first, before any
    model, array or data set is made.

    JAX: `keras.distribution.initialize` (which starts `jax.distributed`; on CPU with gloo
    collectives) and a `keras.distribution.DataParallel` over every device of every process,
    set as the distribution; it does not re-shard data sets (`distributed_dataset` shards
    them at the source). Returns None. TensorFlow: a `tf.distribute.MultiWorkerMirroredStrategy`
    from `TF_CONFIG` when set, else from the cluster given here (every process's address is
    needed); returns it: make and compile the model inside its `scope()`.

    Under JAX, with no cluster given at all (neither arguments nor environment), JAX finds
    it itself where it can: Cloud TPU pod slices, SLURM, Open MPI.

    Args:
        job_addresses: comma-separated `host:port` of the processes, process 0 first (JAX
            needs only process 0's: its coordinator). Default: from the environment.
        num_processes: number of processes. Default: from the environment.
        process_id: this process's index in [0, num_processes). Default: from the
            environment.

    Raises:
        ValueError: under torch (Keras has no distribution backend for it), or naming the
            missing or malformed cluster argument.
    """
    backend = keras.config.backend()
    if backend == "torch":
        raise ValueError("Multi-process training runs under the JAX or TensorFlow backend: "
                         "Keras has no distribution backend for torch.")
    if backend == "tensorflow":
        return _tensorflow_strategy(job_addresses, num_processes, process_id)
    cluster = _cluster(job_addresses, num_processes, process_id, detectable=True)
    import jax

    # CPU devices of several processes talk through gloo (they have no collectives by
    # default); accelerators keep their own. (Asking which backend runs would start it.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cluster is None:  # Cloud TPU, SLURM, Open MPI: JAX reads the cluster itself
        try:
            keras.distribution.initialize()
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"No cluster given (arguments or {', '.join(ENVIRONMENT)}) and "
                             f"JAX found none in this environment: {e}") from None
    else:
        keras.distribution.initialize(cluster[0][0], cluster[1], cluster[2])
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices(), auto_shard_dataset=False))
    return None


def _tensorflow_strategy(job_addresses, num_processes, process_id):
    import tensorflow as tf

    if "TF_CONFIG" not in os.environ:
        addresses, num_processes, process_id = _cluster(job_addresses, num_processes,
                                                        process_id)
        if len(addresses) != num_processes:
            raise ValueError(f"TensorFlow needs every process's address: `job_addresses` "
                             f"names {len(addresses)}, `num_processes` is {num_processes}.")
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                              "task": {"type": "worker", "index": process_id}})
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tf_strategy(model=None):
    """The `tf.distribute` strategy `model` was made under, else the one in scope, or None."""
    if keras.config.backend() != "tensorflow":
        return None
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    return strategy


def _tf_cluster():
    """(worker index, worker count) from `TF_CONFIG`, which every TensorFlow multi-worker
    run has (callbacks run outside the strategy's scope)."""
    if not os.environ.get("TF_CONFIG"):
        return 0, 1
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    workers = resolver.cluster_spec().as_dict().get("worker", [])
    return int(resolver.task_id or 0), max(1, len(workers))


def process_count():
    """Processes in the run: JAX's process count, TensorFlow's worker count, else 1."""
    if keras.config.backend() == "jax":
        import jax

        return jax.process_count()
    return _tf_cluster()[1] if keras.config.backend() == "tensorflow" else 1


def process_index():
    """This process's index in the run (0 without one)."""
    if keras.config.backend() == "jax":
        import jax

        return jax.process_index()
    return _tf_cluster()[0] if keras.config.backend() == "tensorflow" else 0


def is_chief():
    """Whether this process writes the run's files (checkpoints, samples): process 0."""
    return process_index() == 0


@contextlib.contextmanager
def chief_only():
    """Around model work that process 0 alone does (`model.save`, loading a copy): Keras
    makes variables there (saving makes a throwaway optimizer), which a multi-process JAX
    distribution would place with a collective the other processes never join (a hang).
    Inside, they go to this process's default device."""
    distribution = keras.distribution.distribution()
    if keras.config.backend() != "jax" or distribution is None or process_count() == 1:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


@contextlib.contextmanager
def whole_variables(model):
    """Around reading every variable of `model` (and its optimizer) on the host, e.g.
    saving: under a JAX run whose variables are split between processes (`model_parallel`
    over several hosts), each such variable is gathered whole onto every process (a
    collective: every process must enter) and held there until the block ends. Elsewhere
    (one process, variables whole on each process): nothing to do."""
    if keras.config.backend() != "jax" or process_count() == 1:
        yield
        return
    import jax
    from jax.experimental import multihost_utils

    variables = {id(v): v for v in model.variables}
    optimizer = getattr(model, "optimizer", None)
    for v in list(getattr(optimizer, "variables", [])):
        variables.setdefault(id(v), v)
    swapped = []
    try:
        for v in variables.values():  # the same order on every process
            value = v._value
            if (isinstance(value, jax.Array) and not value.is_fully_addressable
                    and not value.is_fully_replicated):
                whole = multihost_utils.process_allgather(value, tiled=True)
                swapped.append((v, value))
                v._value = jax.numpy.asarray(whole)  # on this process's default device
        yield
    finally:
        for v, value in swapped:
            v._value = value


def distributed_dataset(model, make_dataset, global_batch_size):
    """The training data of this process: its own shard, batched so that the processes'
    batches together make `global_batch_size` examples per step.

    Args:
        model: the `PatchDiffusionModel` to train (TensorFlow's batches are checked and
            their captions encoded inside each worker's pipeline, where `fit` cannot reach).
        make_dataset: `(batch_size, shard) -> tf.data.Dataset`, with `shard` an
            `(index, count)` pair or None, e.g. `lambda b, s: pyramid_dataset(src, spec, b,
            shard=s, seed=0)`.
        global_batch_size: examples per step over all processes, a multiple of the number
            of processes (TensorFlow: of replicas; under a `model_parallel` mesh whose model
            replicas span processes: of replicas, and a replica's processes read one shard).

    Returns:
        What `model.fit` takes: one process: `make_dataset(global_batch_size, None)`. JAX:
        `make_dataset(global_batch_size // processes, (process, processes))`. TensorFlow
        under a strategy: a distributed data set, one pipeline per worker.
    """
    from keras_hpdm.checks import check_int
    from keras_hpdm.models import batch_checks

    global_batch_size = check_int("global_batch_size", global_batch_size, low=1)
    strategy = _tf_strategy(model)
    if strategy is not None:
        replicas = strategy.num_replicas_in_sync
        if global_batch_size % replicas:
            raise ValueError(f"`global_batch_size` ({global_batch_size}) must be a multiple "
                             f"of the number of replicas ({replicas}).")

        def worker_dataset(context):
            shard = ((context.input_pipeline_id, context.num_input_pipelines)
                     if context.num_input_pipelines > 1 else None)
            batch_size = context.get_per_replica_batch_size(global_batch_size)
            return batch_checks.prepare_inputs(model, make_dataset(batch_size, shard))

        return strategy.distribute_datasets_from_function(worker_dataset)
    count = process_count()
    if count == 1:
        return make_dataset(global_batch_size, None)
    distribution = keras.distribution.distribution()
    if getattr(distribution, "auto_shard_dataset", False):
        raise ValueError("The distribution re-shards data sets (`auto_shard_dataset=True`), "
                         "which would cut this process's shard again: use "
                         "`keras_hpdm.distribute.initialize()` or "
                         "`DataParallel(..., auto_shard_dataset=False)`.")
    shards, shard = data_shards(distribution, count)
    if global_batch_size % shards:
        raise ValueError(f"`global_batch_size` ({global_batch_size}) must be a multiple of "
                         f"the number of data shards ({shards}: "
                         f"{'processes' if shards == count else 'model replicas'}).")
    return make_dataset(global_batch_size // shards, (shard, shards) if shards > 1 else None)


def data_shards(distribution, count):
    """`(shards, this process's shard)`: one shard per process, unless the model replicas
    (the mesh's batch axis) span several processes; then the processes of one replica read
    the same shard (they hold one copy of the batch between them), as Keras'
    `Distribution.data_shard_id` counts them: replica `r` is processes `r*k .. r*k+k-1`."""
    mesh = getattr(distribution, "device_mesh", None)
    batch_axis = getattr(distribution, "batch_dim_name", None)
    if mesh is None or batch_axis not in mesh.axis_names:
        return count, process_index()
    replicas = int(mesh.shape[list(mesh.axis_names).index(batch_axis)])
    if replicas >= count:
        return count, process_index()
    if count % replicas:
        raise ValueError(f"{count} processes cannot split evenly between the mesh's "
                         f"{replicas} model replicas (its {batch_axis!r} axis).")
    return replicas, process_index() // (count // replicas)


# ------------------------------------------------------------------ model parallel
MODEL_AXIS, BATCH_AXIS = "model", "batch"
# Megatron-style pairs: a layer that widens (attention heads, an MLP's hidden layer, the
# modulation, a UNet block's first convolution) is split along its output, the layer that
# narrows back along its input, so each pair needs one reduction. Full-match regexes over
# variable paths (`keras.distribution.LayoutMap`); other variables are replicated.
LAYOUT_RULES = {
    # RIN attention: kernels (width, heads, head_dim) and (heads, head_dim, width).
    r".*/(query|key|value)/kernel": (None, MODEL_AXIS, None),
    r".*/(query|key|value)/bias": (MODEL_AXIS, None),
    r".*_attn/output/kernel": (MODEL_AXIS, None, None),
    # MLPs (RIN) and the adaptive-norm modulation (both backbones).
    r".*_mlp/hidden/kernel": (None, MODEL_AXIS),
    r".*_mlp/hidden/bias": (MODEL_AXIS,),
    r".*_mlp/out/kernel": (MODEL_AXIS, None),
    r".*/modulation/kernel": (None, MODEL_AXIS),
    r".*/modulation/bias": (MODEL_AXIS,),
    # UNet attention (fused qkv) and residual blocks' convolution pairs.
    r".*_attn/(spatial|temporal)_qkv/kernel": (None, MODEL_AXIS),
    r".*_attn/(spatial|temporal)_qkv/bias": (MODEL_AXIS,),
    r".*_attn/(spatial|temporal)_out/kernel": (MODEL_AXIS, None),
    r".*/conv1_(spatial|temporal)/kernel": (None, None, None, None, MODEL_AXIS),
    r".*/conv1_(spatial|temporal)/bias": (MODEL_AXIS,),
    r".*/conv2_(spatial|temporal)/kernel": (None, None, None, MODEL_AXIS, None),
}


def layout_map(device_mesh):
    """`keras.distribution.LayoutMap` of `LAYOUT_RULES` on `device_mesh` (which needs a
    `"model"` axis): for `keras.distribution.ModelParallel`, or to extend."""
    if MODEL_AXIS not in device_mesh.axis_names:
        raise ValueError(f"`device_mesh` needs a {MODEL_AXIS!r} axis, got axes "
                         f"{list(device_mesh.axis_names)}.")
    layouts = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in LAYOUT_RULES.items():
        layouts[pattern] = axes
    return layouts


class _ShapeAwareModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that replicates a variable along any axis the mesh does not divide
    (few heads, a narrow layer) instead of failing to place it."""

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        mesh = self.device_mesh
        sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
        axes = tuple(None if axis is not None and dim % sizes[axis] else axis
                     for axis, dim in zip(layout.axes, variable.shape, strict=True))
        if axes == tuple(layout.axes):
            return layout
        return keras.distribution.TensorLayout(axes, mesh)


def model_parallel(device_mesh):
    """A `keras.distribution.ModelParallel` for keras_hpdm's backbones: the batch split along
    the mesh's `"batch"` axis, the wide kernels (`LAYOUT_RULES`) along its `"model"` axis;
    an axis the mesh does not divide stays whole. Set it before the model is made (or
    loaded); the EMA copies and the optimizer's slots follow their weights' layouts. JAX
    only (Keras distributes variables on JAX).

    Example (8 devices: 2 data-parallel replicas of a model split over 4):
    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"],
                                         keras.distribution.list_devices())
    keras.distribution.set_distribution(keras_hpdm.distribute.model_parallel(mesh))
    model = keras_hpdm.PatchDiffusionModel(RINBackbone.from_preset("hpdm_l", ...))
    ```
    """
    if BATCH_AXIS not in device_mesh.axis_names:
        raise ValueError(f"`device_mesh` needs a {BATCH_AXIS!r} axis, got axes "
                         f"{list(device_mesh.axis_names)}.")
    # Data sets come sharded per process (`distributed_dataset`), not re-cut by Keras.
    return _ShapeAwareModelParallel(layout_map=layout_map(device_mesh),
                                    batch_dim_name=BATCH_AXIS, auto_shard_dataset=False)


def parameter_bytes_per_device(model, distribution):
    """Bytes of `model`'s variables (weights, EMA copies, optimizer slots when built) that
    one device holds under `distribution`'s layouts, computed from shapes: the largest
    share over devices (a sharded axis holds `1/size` of its length)."""
    import numpy as np

    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        variables += [v for v in optimizer.variables if v.path not in {w.path for w in
                                                                     variables}]
    total = 0
    for v in variables:
        layout = getattr(v, "_layout", None)
        if not isinstance(layout, keras.distribution.TensorLayout):
            layout = distribution.get_variable_layout(v)
        split = np.prod([sizes[axis] for axis in layout.axes if axis is not None] or [1])
        total += int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize // int(split)
    return total
