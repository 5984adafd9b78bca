"""Runs a snippet under other Keras backends in fresh processes (the backend is fixed at import).

Cross-backend parity tests run the same code under each backend and compare arrays:

```python
outs = run_in_backends(CODE, ["jax", "tensorflow", "torch"], inputs={"x": x})
```
`CODE` reads its inputs from `INPUTS` (a dict of numpy arrays) and must assign a dict of numpy
arrays to `OUTPUTS`.

Multi-process tests run the same code as several processes of one run on this machine
(`run_processes`): each gets the cluster in the `KERAS_DISTRIBUTION_*` environment
variables, with free loopback ports.
"""

import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

_PRELUDE = """
import os, sys
import numpy as np
INPUTS = dict(np.load(os.environ["HPDM_INPUTS"], allow_pickle=False))
from keras_hpdm.testing import disable_tf32
disable_tf32()
"""

_EPILOGUE = """
np.savez(os.environ["HPDM_OUTPUTS"], **{k: np.asarray(v) for k, v in OUTPUTS.items()})
"""


def _write_snippet(tmp, code, inputs):
    """(script path, inputs path) of `code` and `inputs` written into folder `tmp`."""
    in_path = os.path.join(tmp, "inputs.npz")
    np.savez(in_path, **(inputs or {}))
    script = os.path.join(tmp, "snippet.py")
    with open(script, "w") as f:
        f.write(_PRELUDE + textwrap.dedent(code) + _EPILOGUE)
    return script, in_path


def run_in_backends(code, backends, inputs=None, timeout=600):
    """Runs `code` once per backend in a subprocess; returns `{backend: {name: array}}`."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        script, in_path = _write_snippet(tmp, code, inputs)
        for backend in backends:
            out_path = os.path.join(tmp, f"out_{backend}.npz")
            env = dict(os.environ, KERAS_BACKEND=backend, HPDM_INPUTS=in_path,
                       HPDM_OUTPUTS=out_path, TF_CPP_MIN_LOG_LEVEL="3")
            proc = subprocess.run([sys.executable, script], env=env, capture_output=True,
                                  text=True, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"snippet failed under {backend} (exit {proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}"
                )
            with np.load(out_path) as data:
                results[backend] = {k: data[k] for k in data.files}
    return results


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _log_tail(text, limit=3000):
    """The end of a failed process's log, from its last traceback where it has one: an error
    that prints arrays would otherwise fill the tail and hide where it was raised."""
    start = text.rfind("Traceback (most recent call last)")
    if start < 0 or len(text) - start <= limit:
        return text[-limit:]
    tail = text[start:]
    return f"{tail[:limit // 2]}\n[... {len(tail) - limit} characters ...]\n{tail[-limit // 2:]}"


def run_processes(code, backend, num_processes, inputs=None, timeout=600):
    """Runs `code` as `num_processes` processes of one multi-process run under `backend`,
    all at once, on loopback ports; returns one `{name: array}` per process (in process
    order). Each sees `KERAS_DISTRIBUTION_JOB_ADDRESSES` / `_NUM_PROCESSES` / `_PROCESS_ID`
    (what `keras_hpdm.distribute.initialize()` reads) and `INPUTS`, and sets `OUTPUTS`."""
    addresses = ",".join(f"localhost:{port}" for port in _free_ports(num_processes))
    with tempfile.TemporaryDirectory() as tmp:
        script, in_path = _write_snippet(tmp, code, inputs)
        procs, outs = [], []
        for index in range(num_processes):
            out_path = os.path.join(tmp, f"out_{index}.npz")
            env = dict(os.environ, KERAS_BACKEND=backend, HPDM_INPUTS=in_path,
                       HPDM_OUTPUTS=out_path, TF_CPP_MIN_LOG_LEVEL="3",
                       KERAS_DISTRIBUTION_JOB_ADDRESSES=addresses,
                       KERAS_DISTRIBUTION_NUM_PROCESSES=str(num_processes),
                       KERAS_DISTRIBUTION_PROCESS_ID=str(index))
            env.pop("TF_CONFIG", None)
            log = open(os.path.join(tmp, f"log_{index}.txt"), "w+")
            procs.append((subprocess.Popen([sys.executable, script], env=env, stdout=log,
                                           stderr=subprocess.STDOUT, text=True), log))
            outs.append(out_path)
        failed = []
        try:
            for index, (proc, log) in enumerate(procs):
                try:
                    status = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    status = "timeout"
                if status != 0:
                    log.seek(0)
                    failed.append(f"process {index} (exit {status}):\n{_log_tail(log.read())}")
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        if failed:
            raise RuntimeError(f"a process of the {backend} run failed:\n" + "\n".join(failed))
        results = []
        for out_path in outs:
            with np.load(out_path) as data:
                results.append({k: data[k] for k in data.files})
    return results
