"""Pytest set-up: one Keras backend per process (see scripts/test.sh)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run tiny tensors mostly eagerly: JAX then compiles every op, and XLA's backend
# optimisations cost more than they save (about half the JAX suite time). Benchmarks don't.
# And scripts/test.sh runs the three backends' processes side by side on 2 cores, where an
# op's thread pool spin-waits for cores the other processes hold: one thread per process
# (set before any backend is imported; subprocesses inherit it). Measured on the demo and
# generate CLI tests, side by side: torch 181 -> 71 s, tensorflow 225 -> 162 s, jax 213 ->
# 198 s; the whole suite about as long as before (its multi-process tests took longer).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_cpu_multi_thread_eigen=false")
for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_hpdm.testing import disable_tf32  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {keras.config.backend()}"


@pytest.fixture(autouse=True)
def _numerics():
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    disable_tf32()
    yield
    keras.config.set_dtype_policy("float32")


def backend():
    return keras.config.backend()


@pytest.fixture(scope="module")
def single_thread_torch():
    """Tiny tensors: torch's intra-op threads cost more than they save, and on busy shared
    cores their spin-waits made training steps ~10x slower."""
    if keras.config.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
