"""Generation time and peak memory at growing output sizes, with and without cached context.

Each configuration runs in its own process (peak RSS is per process), after a warm-up
generation at the same size; the median of `--repeats` runs is reported. Output sizes grow
4x and 16x in pixels (time is not pyramided, so each level doubles height and width).

    python benchmarks/generation_scaling.py [--backend jax] [--size small] [--repeats 3]

Prints a table and writes `benchmarks/results/generation_scaling_<backend>.json`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

SIZES = {  # patch size, levels, steps at level 0
    "small": ((2, 16, 16), 3, 4),
    "large": ((8, 64, 64), 3, 16),
}

CHILD = r"""
import json, os, resource, statistics, sys, time
import numpy as np
import keras_hpdm
from keras_hpdm.backbones import RINBackbone

patch, levels, steps, out_levels, cache, repeats = json.loads(sys.argv[1])
spec = keras_hpdm.PyramidSpec(tuple(patch), levels, pyramid_time=False)
model = keras_hpdm.PatchDiffusionModel(RINBackbone.from_preset("tiny", pyramid=spec))
kw = dict(num_samples=1, num_steps=steps, seed=0, verbose=0, cache_context=cache,
          num_levels=out_levels, sampler="euler")
model.generate(**kw)  # warm-up: compilation and caches
times = []
for _ in range(repeats):
    t = time.perf_counter()
    video = model.generate(**kw)
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": statistics.median(times), "shape": list(video.shape),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    patch, levels, steps = SIZES[args.size]
    rows = []
    for out_levels in range(1, levels + 1):
        for cache in (True, False):
            r = run(args.backend, [list(patch), levels, steps, out_levels, cache, args.repeats])
            _, t, h, w, _ = r["shape"]
            pixels = t * h * w
            rows.append({"levels": out_levels, "cache_context": cache, "output": r["shape"][1:4],
                         "pixels": pixels, "seconds": r["seconds"],
                         "us_per_pixel": 1e6 * r["seconds"] / pixels,
                         "peak_rss_mb": r["peak_rss_mb"]})
    base = rows[0]["pixels"]
    print(f"generation scaling, backend={args.backend}, size={args.size}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'output':>16} {'pixels':>7} {'cache':>5} {'s':>8} {'us/px':>8} {'RSS MB':>8}")
    for r in rows:
        print(f"{'x'.join(map(str, r['output'])):>16} {r['pixels'] // base:>6}x "
              f"{str(r['cache_context']):>5} {r['seconds']:8.2f} {r['us_per_pixel']:8.2f} "
              f"{r['peak_rss_mb']:8.0f}")
    speedups = {}
    for out_levels in range(2, levels + 1):
        cached, fresh = (next(r for r in rows if r["levels"] == out_levels
                              and r["cache_context"] is c) for c in (True, False))
        speedups[out_levels] = fresh["seconds"] / cached["seconds"]
        print(f"cached-context speedup at {out_levels} levels: {speedups[out_levels]:.2f}x")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"generation_scaling_{args.backend}.json")
    with open(path, "w") as f:
        json.dump({"backend": args.backend, "size": args.size, "rows": rows,
                   "cached_speedup": speedups, "machine": platform.platform(),
                   "cpus": os.cpu_count()}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
