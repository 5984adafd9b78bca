"""Runs a snippet under other Keras backends in fresh processes (the backend is fixed at import).

Cross-backend parity tests run the same code under each backend and compare arrays:

```python
outs = run_in_backends(CODE, ["jax", "tensorflow", "torch"], inputs={"x": x})
```
`CODE` reads its inputs from `INPUTS` (a dict of numpy arrays) and must assign a dict of numpy
arrays to `OUTPUTS`.
"""

import os
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


def run_in_backends(code, backends, inputs=None, timeout=600):
    """Runs `code` once per backend in a subprocess; returns `{backend: {name: array}}`."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        in_path = os.path.join(tmp, "inputs.npz")
        np.savez(in_path, **(inputs or {}))
        script = os.path.join(tmp, "snippet.py")
        with open(script, "w") as f:
            f.write(_PRELUDE + textwrap.dedent(code) + _EPILOGUE)
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
