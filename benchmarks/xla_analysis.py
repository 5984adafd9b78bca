"""XLA cost and memory analysis of a Keras model's JAX train step, through public APIs."""

import time

from memory import MB


def xla_train_analysis(model, batch):
    """FLOPs and buffer sizes of the compiled train step of a compiled Keras model (JAX).

    Compiles the step the way Keras' JAX trainer does (`jax.jit(model.train_step,
    donate_argnums=0)`) on Keras' stateless state tuple (trainable, non-trainable, optimizer
    and metrics variable values: the documented `train_step(state, data)` contract of the
    JAX backend) and reads XLA's cost analysis and buffer assignment (memory analysis).
    """
    import jax

    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
        model.metrics_variables))
    data = jax.tree_util.tree_map(jax.device_put, (batch, None, None))
    t = time.perf_counter()
    compiled = jax.jit(model.train_step, donate_argnums=0).lower(state, data).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    out = {"flops": float(cost.get("flops", 0.0)), "analysis_s": time.perf_counter() - t,
           "bytes_accessed_mb": float(cost.get("bytes accessed", 0.0)) / MB}
    for key in ("temp", "argument", "output", "alias"):
        out[f"{key}_mb"] = getattr(mem, f"{key}_size_in_bytes", 0) / MB
    out["total_mb"] = out["temp_mb"] + out["argument_mb"] + out["output_mb"] - out["alias_mb"]
    return out
