"""Adaptive computation (AC): training throughput and generation time with and without it.

The same backbone on the same 3-level pyramid, twice:

  - `ac`:   coarse levels leave early: RIN with 6 blocks and `levels_per_block=(1,1,2,2,3,3)`
            (the paper's schedule), UNet with its preset's `"linear"` schedule over its
            encoder / middle / decoder stages,
  - `no_ac`: `levels_per_block=None`, every level runs every block.

Each configuration lives in its own process; after warm-up (compilation, first generation)
the rounds are interleaved (train steps of A, generation of A, train steps of B, generation
of B, A, B, ...), and medians are reported. Under JAX the FLOPs of each compiled train step
come from XLA's cost analysis, so the measured speed-up can be set beside the analytic one.
Generation is `model.generate(num_samples=1, sampler="euler", cache_context=True)` at the full
target size: with AC the finest level runs only the blocks that process it.

Paper anchor (A100, RIN HPDM-S): 4.4 vs 2.73 videos/s with vs without AC (1.61x); about
1.1x for UNets.

    python benchmarks/adaptive_computation.py [--backend jax] [--size small] [--repeats 3]
        [--backbones rin unet] [--rin-preset small] [--unet-preset tiny] [--no-generate]

Prints a table and writes `benchmarks/results/adaptive_computation_<backend>.json`.
"""

import argparse
import os
import time

from machine import machine_info
from paper import PAPER
from report import RESULTS, median, ratio, report
from workers import finish_all, interleave, start_workers

SIZES = {  # patch, levels, batch, presets, generation steps per level
    "small": {"patch": (2, 16, 16), "levels": 3, "batch": 4, "rin": "small", "unet": "tiny",
              "gen_steps": 4},
    "large": {"patch": (4, 32, 32), "levels": 3, "batch": 8, "rin": "small", "unet": "small",
              "gen_steps": 8},
}
RIN_AC = [1, 1, 2, 2, 3, 3]


def configs(args, size):
    out = []
    spec = {"patch_size": list(size["patch"]), "num_levels": size["levels"]}
    for backbone in args.backbones:
        for mode in ("ac", "no_ac"):
            if backbone == "rin":
                preset = args.rin_preset
                overrides = {"num_blocks": 6,
                             "levels_per_block": RIN_AC if mode == "ac" else None}
            else:
                preset = args.unet_preset
                overrides = {"levels_per_block": "linear" if mode == "ac" else None}
            cfg = {"backbone": backbone, "preset": preset, "spec": spec, "overrides": overrides,
                   "batch_size": args.batch_size, "warmup": args.warmup, "train": True,
                   "torch_threads": args.torch_threads}
            if args.generate:
                cfg["generate"] = {"num_steps": size["gen_steps"], "sampler": "euler",
                                   "cache_context": True, "tile_batch_size": 16}
            out.append((f"{backbone}/{mode}", cfg, args.backend))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--backbones", nargs="+", default=["rin", "unet"], choices=["rin", "unet"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rin-preset", default=None)
    parser.add_argument("--unet-preset", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--min-round-s", type=float, default=1.0,
                        help="each worker's round times train steps until this many seconds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-generate", dest="generate", action="store_false")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 on a busy machine)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    size = SIZES[args.size]
    args.batch_size = args.batch_size or size["batch"]
    args.rin_preset = args.rin_preset or size["rin"]
    args.unet_preset = args.unet_preset or size["unet"]
    machine = machine_info()
    t0 = time.perf_counter()

    specs = configs(args, size)
    print(f"adaptive computation: setting up {len(specs)} workers (backend {args.backend})",
          flush=True)
    workers = start_workers(specs, jobs=args.jobs)
    live = [w for w in workers if not w.error]
    calls = [("train", {"min_seconds": args.min_round_s})]
    if args.generate:
        calls.append(("generate", {}))
    replies = interleave(live, args.repeats, *calls)
    finals = finish_all(live)

    rows = []
    for w, (_, cfg, _) in zip(workers, specs, strict=True):
        backbone, mode = w.name.split("/")
        if w.error:
            rows.append({"backbone": backbone, "mode": mode, "error": w.error[-2000:]})
            continue
        info, rep = w.info, replies[w.name]
        times = [t for r in rep["train"] for t in r["times"]]
        gen = [r["seconds"] for r in rep.get("generate", [])]
        xla = info.get("xla") or {}
        step_s = median(times)
        rows.append({
            "backbone": backbone, "mode": mode, "preset": cfg["preset"],
            "levels_per_block": info["levels_per_block"],
            "level_blocks": sum(info["levels_per_block"]), "params": info["params"],
            "step_s": step_s, "num_steps_timed": len(times),
            "videos_per_s": ratio(args.batch_size, step_s),
            "generate_s": median(gen), "generate_runs": len(gen),
            "output_shape": info.get("output_shape"),
            "first_generate_s": info.get("first_generate_s"),
            "gflops_per_step": xla["flops"] / 1e9 if "flops" in xla else None,
            "xla_total_mb": xla.get("total_mb"), "step_mb": finals[w.name].get(
                "step_rss_growth_mb"), "jit_compile": info.get("jit_compile"),
        })

    speedups = {}
    for backbone in args.backbones:
        by = {r["mode"]: r for r in rows if r["backbone"] == backbone and "error" not in r}
        if "ac" not in by or "no_ac" not in by:
            continue
        ac, no = by["ac"], by["no_ac"]
        speedups[backbone] = {
            "train_speedup": ratio(ac["videos_per_s"], no["videos_per_s"]),
            "generate_speedup": ratio(no["generate_s"], ac["generate_s"]),
            "flop_ratio": ratio(no["gflops_per_step"], ac["gflops_per_step"]),
            "level_block_ratio": no["level_blocks"] / ac["level_blocks"],
            "paper_train_speedup": (PAPER["ac_rin_speedup"] if backbone == "rin"
                                    else PAPER["ac_unet_speedup"]),
        }
        ac.update(speedups[backbone])

    patch = "x".join(map(str, size["patch"]))
    result = {
        "benchmark": "adaptive_computation", "backend": args.backend, "size": args.size,
        "patch_size": list(size["patch"]), "num_levels": size["levels"],
        "batch_size": args.batch_size, "rin_preset": args.rin_preset,
        "unet_preset": args.unet_preset, "repeats": args.repeats,
        "torch_threads": args.torch_threads,
        "generation": {"num_steps": size["gen_steps"], "sampler": "euler",
                       "cache_context": True, "tile_batch_size": 16} if args.generate else None,
        "rows": rows, "speedups": speedups, "paper": PAPER, "machine": machine,
        "load_avg_end": round(os.getloadavg()[0], 2), "wall_s": time.perf_counter() - t0,
    }
    report(
        f"adaptive_computation_{args.backend}", TABLE, rows, result, out=args.out,
        title=f"\nadaptive computation, backend={args.backend}, size={args.size} (patch "
              f"{patch}, {size['levels']} levels), batch {args.batch_size}, RIN "
              f"'{args.rin_preset}' (6 blocks), UNet '{args.unet_preset}'; {machine['cpu']}, "
              f"{machine['cpu_count']} cores",
        failed=lambda r: f"{r['backbone']}/{r['mode']}",
        notes=[f"paper: RIN {PAPER['ac_rin_videos_per_s']} vs {PAPER['noac_rin_videos_per_s']} "
               f"videos/s ({PAPER['ac_rin_speedup']:.2f}x); UNet ~{PAPER['ac_unet_speedup']}x"],
    )


TABLE = [
    ("backbone", "backbone", None), ("config", "mode", None),
    ("levels/block", lambda r: ",".join(map(str, r["levels_per_block"])), None),
    ("params", "params", ","), ("step s", "step_s", ".3f"), ("videos/s", "videos_per_s", ".2f"),
    ("GFLOP", "gflops_per_step", ".3f"), ("gen s", "generate_s", ".2f"),
    ("train x", "train_speedup", ".2f"), ("gen x", "generate_speedup", ".2f"),
    ("FLOP x", "flop_ratio", ".2f"), ("lvl-blk x", "level_block_ratio", ".2f"),
    ("paper x", "paper_train_speedup", ".2f"),
]


if __name__ == "__main__":
    main()
