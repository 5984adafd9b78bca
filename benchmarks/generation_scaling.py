"""Generation time and memory at growing output sizes, with and without cached context.

Output sizes grow 4x and 16x in pixels (`num_levels=1, 2, 3`; time is not pyramided, so each
level doubles height and width). Each (size, cache) configuration runs in its own process;
after a warm-up generation at the same size the timed generations are interleaved over all
configurations, and the median of `--repeats` is reported, also per output pixel.

Memory, per configuration (RSS = resident host memory of the process):

  - `warm-up MB`: RSS growth from the built model to after the warm-up generation: one-off
    costs, mostly JAX's per-shape compiled-op caches (generation runs the backbone eagerly),
  - `timed MB`: peak RSS growth over the post-warm-up baseline during the timed generations,
  - `beyond canvas MB`: `timed MB` minus the output canvas (float32, host),
  - `host MB`: numpy peak during one generation (tracemalloc: canvases, tile stacks, sums),
  - `context MB`: what the context cache of the finest level held (`info["context_cache_bytes"]`
    of `generate`'s callbacks: every tile batch's `encode_context` features, kept for the
    whole level) in each variant: `cached` (float32), `bf16` (`context_cache_dtype=
    "bfloat16"`), `fresh` (`cache_context=False`: recomputed at every step, nothing held),
  - `after clear MB` (JAX): RSS after `jax.clear_caches()` + `malloc_trim`, which shows how
    much of the resident memory was compilation caches.

    python benchmarks/generation_scaling.py [--backend jax] [--size small] [--repeats 5]

Prints a table and writes `benchmarks/results/generation_scaling_<backend>.json` and a PNG.
"""

import argparse
import os
import time

from machine import machine_info
from report import RESULTS, median, ratio, report
from workers import finish_all, interleave, start_workers

# The context cache: whole (float32), stored in bfloat16, or none (recomputed every step).
VARIANTS = {"cached": {"cache_context": True},
            "bf16": {"cache_context": True, "context_cache_dtype": "bfloat16"},
            "fresh": {"cache_context": False}}

SIZES = {  # patch size, levels, steps at level 0
    "small": ((2, 16, 16), 3, 4),
    "large": ((8, 64, 64), 3, 16),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--preset", default="tiny", help="RIN preset (untrained)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile-batch-size", type=int, default=16)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 on a busy machine)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    patch, levels, steps = SIZES[args.size]
    machine = machine_info()
    t0 = time.perf_counter()

    specs = []
    for out_levels in range(1, levels + 1):
        for variant, options in VARIANTS.items():
            cfg = {"backbone": "rin", "preset": args.preset,
                   "spec": {"patch_size": list(patch), "num_levels": levels,
                            "pyramid_time": False},
                   "generate": {"num_steps": steps, **options,
                                "num_levels": out_levels, "sampler": "euler",
                                "tile_batch_size": args.tile_batch_size},
                   "clear_caches": True, "torch_threads": args.torch_threads}
            specs.append((f"L{out_levels}/{variant}", cfg, args.backend))
    print(f"generation scaling: setting up {len(specs)} workers (backend {args.backend})",
          flush=True)
    workers = start_workers(specs, jobs=args.jobs)
    live = [w for w in workers if not w.error]
    replies = interleave(live, args.repeats, ("generate", {}))
    memory = {w.name: w.call("memory") or {} for w in live}  # before the probe's allocations
    probes = {w.name: w.call("probe") or {} for w in live}  # untimed, after the timed runs
    finals = finish_all(live)

    rows = []
    for w, (name, cfg, _) in zip(workers, specs, strict=True):
        g = cfg["generate"]
        variant = name.split("/")[1]
        if w.error:
            rows.append({"levels": g["num_levels"], "cache_context": g["cache_context"],
                         "variant": variant, "error": w.error[-2000:]})
            continue
        info, fin, probe = w.info, dict(finals[w.name], **memory[w.name]), probes[w.name]
        _, t, h, wd, _ = info["output_shape"]
        pixels = t * h * wd
        seconds = median([r["seconds"] for r in replies[w.name]["generate"]])
        ctx = probe.get("context_mb_by_level") or {}
        held = probe.get("context_mb_held_by_level") or {}
        finest = held.get(str(g["num_levels"] - 1))
        timed = fin.get("step_rss_growth_mb")
        canvas = probe.get("canvas_mb")
        rows.append({
            "levels": g["num_levels"], "cache_context": g["cache_context"],
            "variant": variant, "output": info["output_shape"][1:4], "pixels": pixels,
            "seconds": seconds,
            "us_per_pixel": 1e6 * seconds / pixels if seconds else None,
            "first_generate_s": info.get("first_generate_s"),
            "rss_built_mb": info["rss_built_mb"],
            "rss_after_warmup_mb": info["rss_after_warmup_mb"],
            "warmup_growth_mb": info["rss_after_warmup_mb"] - info["rss_built_mb"],
            "peak_rss_setup_mb": info["peak_rss_setup_mb"],
            "timed_growth_mb": timed, "canvas_mb": canvas,
            "beyond_canvas_mb": None if timed is None or canvas is None else timed - canvas,
            "host_numpy_peak_mb": probe.get("host_numpy_peak_mb"),
            "all_canvases_mb": probe.get("all_canvases_mb"),
            "context_mb_finest_level": finest if g["cache_context"] else None,
            "context_mb_by_level": ctx, "context_mb_held_by_level": held,
            "peak_rss_mb": max(info["peak_rss_setup_mb"], fin.get("peak_rss_mb") or 0.0),
            "rss_end_mb": fin.get("rss_end_mb"),
            "rss_after_clear_caches_mb": fin.get("rss_after_clear_caches_mb"),
            "device_peak_mb": fin.get("device_peak_mb"),
        })

    ok = [r for r in rows if "error" not in r]
    base = min((r["pixels"] for r in ok), default=1)
    speedups, notes = {}, []
    for lv in range(2, levels + 1):
        by = {r["variant"]: r for r in ok if r["levels"] == lv}
        for variant in ("cached", "bf16"):
            if variant in by and "fresh" in by:
                speedups.setdefault(variant, {})[lv] = ratio(by["fresh"]["seconds"],
                                                             by[variant]["seconds"])
                notes.append(f"{variant} context speed-up over recomputing at {lv} levels: "
                             f"{speedups[variant][lv]:.2f}x")
    result = {
        "benchmark": "generation_scaling", "backend": args.backend, "size": args.size,
        "preset": args.preset, "patch_size": list(patch), "num_levels": levels,
        "steps": steps, "tile_batch_size": args.tile_batch_size, "repeats": args.repeats,
        "torch_threads": args.torch_threads,
        "rows": rows, "cached_speedup": speedups.get("cached", {}),
        "bf16_speedup": speedups.get("bf16", {}), "machine": machine,
        "load_avg_end": round(os.getloadavg()[0], 2), "wall_s": time.perf_counter() - t0,
    }
    cached = [r for r in ok if r["variant"] == "cached"]
    chart = None
    if cached:
        chart = {
            "title": f"Generation per output pixel and memory ({args.backend}, cached context)",
            "labels": [f"{'x'.join(map(str, r['output']))} ({r['pixels'] // base}x pixels)"
                       for r in cached],
            "series": {"us per output pixel": [r["us_per_pixel"] for r in cached],
                       "warm-up RSS growth (MB)": [r["warmup_growth_mb"] for r in cached],
                       "timed peak over baseline (MB)": [r["timed_growth_mb"] for r in cached]},
            "note": f"{machine['cpu']}, {machine['cpu_count']} cores; median of {args.repeats}",
        }
    report(
        f"generation_scaling_{args.backend}", table(base), rows, result, out=args.out,
        title=f"\ngeneration scaling, backend={args.backend}, size={args.size}, RIN "
              f"'{args.preset}' (untrained), euler {steps} steps/level, tile batch "
              f"{args.tile_batch_size}; {machine['cpu']}, {machine['cpu_count']} cores",
        failed=lambda r: f"L{r['levels']} {r['variant']}",
        notes=notes, chart=chart,
    )


def table(base):
    return [
        ("output", lambda r: "x".join(map(str, r["output"])), None),
        ("pixels", lambda r: f"{r['pixels'] // base}x", None),
        ("context", "variant", None), ("s", "seconds", ".3f"),
        ("us/px", "us_per_pixel", ".1f"), ("warm-up MB", "warmup_growth_mb", ".0f"),
        ("timed MB", "timed_growth_mb", ".1f"), ("canvas MB", "canvas_mb", ".3f"),
        ("beyond canvas MB", "beyond_canvas_mb", ".1f"), ("host MB", "host_numpy_peak_mb", ".2f"),
        ("context MB", "context_mb_finest_level", ".2f"), ("peak RSS MB", "peak_rss_mb", ".0f"),
        ("after clear MB", "rss_after_clear_caches_mb", ".0f"),
    ]


if __name__ == "__main__":
    main()
