"""I3D (Kinetics-400) forward throughput: seconds per clip on the current Keras backend.

Usage:
    KERAS_BACKEND=jax python benchmarks/i3d_throughput.py [--frames 16] [--batch-sizes 1 4]
        [--repeats 3] [--modes predict call]

Prints a table and writes `benchmarks/results/i3d_throughput_<backend>.json`. `predict` is
`model.predict_on_batch` (compiled under JAX/TensorFlow), `call` is an eager `model(x)`. The
first call per shape (tracing/compilation) is timed separately and excluded from the rate.
The clips are random uint8 frames made I3D input by `keras_hpdm.metrics.preprocess_videos`.
"""

import argparse
import os
import platform
import time

import keras
import numpy as np
from report import report

from keras_hpdm.metrics import I3D, preprocess_videos

SOURCE_SIZE = 56  # random uint8 frames, resized by `preprocess_videos` to I3D's input size


def _run(model, x, mode):
    out = model.predict_on_batch(x) if mode == "predict" else model(x)
    return np.asarray(keras.ops.convert_to_numpy(out))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["predict", "call"],
                        choices=["predict", "call"])
    parser.add_argument("--output", default=None, help="JSON path (default: results/...)")
    args = parser.parse_args(argv)

    backend = keras.config.backend()
    start = time.perf_counter()
    model = I3D()
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rows = []
    for mode in args.modes:
        for batch in args.batch_sizes:
            frames = rng.integers(0, 256, (batch, args.frames, SOURCE_SIZE, SOURCE_SIZE, 3))
            x = keras.ops.convert_to_numpy(preprocess_videos(frames.astype("uint8")))
            start = time.perf_counter()
            _run(model, x, mode)
            first_s = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _run(model, x, mode)
                times.append(time.perf_counter() - start)
            best = min(times)
            rows.append({
                "mode": mode, "batch_size": batch, "frames": args.frames,
                "first_call_s": round(first_s, 3), "best_batch_s": round(best, 3),
                "s_per_clip": round(best / batch, 3),
                "median_s_per_clip": round(float(np.median(times)) / batch, 3),
            })

    result = {
        "benchmark": "i3d_throughput", "backend": backend, "keras": keras.__version__,
        "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "load_s": round(load_s, 3),
        "load_avg_1min": round(os.getloadavg()[0], 2), "rows": rows,
    }
    report(f"i3d_throughput_{backend}", TABLE, rows, result, path=args.output,
           title=f"I3D throughput, backend={backend}, frames={args.frames}, "
                 f"build+load {load_s:.2f}s, cpus={os.cpu_count()}")


TABLE = [
    ("mode", "mode", None), ("batch", "batch_size", "d"), ("first call s", "first_call_s", ".3f"),
    ("s/clip", "s_per_clip", ".3f"), ("median s/clip", "median_s_per_clip", ".3f"),
]

if __name__ == "__main__":
    main()
