"""Training cost of HPDM patch pyramids vs the same backbone on full-resolution video.

For each backbone (RIN, 3D UNet) three configurations train on random videos:

  - `hpdm_ac`:  a 3-level pyramid `PyramidSpec(patch, 3)` with adaptive computation
                (the preset's `levels_per_block="linear"`),
  - `hpdm`:     the same pyramid with every level in every block (`levels_per_block=None`),
  - `full`:     the full-resolution video as one level, `PyramidSpec(target, 1)`.

Each configuration lives in its own process (own peak memory); after warm-up the timed train
steps are interleaved across configurations (A, B, C, A, B, C, ...) so background load hits
all of them alike, and the median step time is reported. Memory per configuration:

  - `state MB`: model + EMA + optimizer variables,
  - `step RSS MB`: peak RSS growth over the post-warm-up baseline during the timed steps (what
    a step allocates: activations, gradients, temporaries; compiler memory excluded),
  - JAX: `XLA temp MB`, the compiled train step's temporaries from XLA's buffer assignment
    (exact; the RSS growth agrees with it within allocator noise), and the step's FLOPs from
    XLA's cost analysis,
  - `peak MB` = state + step: on a GPU the device's peak statistics; on a CPU state + XLA temp
    under JAX, state + step RSS under TensorFlow / PyTorch (`from` says which). `mem x` is its
    ratio to full resolution, `RSS mem x` the same from RSS alone.

Paper anchor (A100, 64x256x256, HPDM-S RIN): full resolution 65.3 GB / 1.24 videos/s vs HPDM
with adaptive computation 14.2 GB / 6.71 videos/s: 0.22x memory, 5.4x throughput.

    python benchmarks/patch_vs_full.py [--backend jax] [--size small] [--repeats 5]
        [--backbones rin unet] [--batch-size 2] [--rin-preset small] [--unet-preset tiny]

Prints a table and writes `benchmarks/results/patch_vs_full_<backend>.json` and a PNG.
"""

import argparse
import os
import time

from machine import machine_info
from paper import PAPER
from report import RESULTS, median, ratio, report
from workers import finish_all, interleave, start_workers

SIZES = {  # patch, levels, batch, RIN preset, UNet preset
    "small": {"patch": (2, 16, 16), "levels": 3, "batch": 2, "rin": "small", "unet": "tiny"},
    "large": {"patch": (4, 32, 32), "levels": 3, "batch": 8, "rin": "small", "unet": "small"},
    # The paper's Table 1 (one GPU): HPDM-S, 16x64x64 patches, 64x256x256 (3 levels) and
    # 64x512x512 (4 levels, where full resolution runs out of memory on an A100 80GB).
    "paper": {"patch": (16, 64, 64), "levels": 3, "batch": 4, "rin": "hpdm_s",
              "unet": "hpdm_s"},
    "paper512": {"patch": (16, 64, 64), "levels": 4, "batch": 4, "rin": "hpdm_s",
                 "unet": "hpdm_s"},
}
MODES = ("hpdm_ac", "hpdm", "full")


def configs(args, size):
    patch, levels = size["patch"], size["levels"]
    target = tuple(p * 2 ** (levels - 1) for p in patch)
    out = []
    for backbone in args.backbones:
        preset = args.rin_preset if backbone == "rin" else args.unet_preset
        for mode in args.modes:
            if mode == "full":
                spec = {"patch_size": list(target), "num_levels": 1}
                overrides = {}
            else:
                spec = {"patch_size": list(patch), "num_levels": levels}
                overrides = {} if mode == "hpdm_ac" else {"levels_per_block": None}
            cfg = {"backbone": backbone, "preset": preset, "spec": spec, "overrides": overrides,
                   "batch_size": args.batch_size, "warmup": args.warmup, "train": True,
                   "torch_threads": args.torch_threads}
            out.append((f"{backbone}/{mode}", cfg, args.backend))
    return out


def summarise(name, info, steps, fin, batch):
    backbone, mode = name.split("/")
    times = [t for reply in steps for t in reply["times"]]
    step_s = median(times)
    row = {"backbone": backbone, "mode": mode, "preset": info.get("preset"),
           "levels_per_block": info.get("levels_per_block"), "params": info.get("params"),
           "target": info.get("target_size"), "step_s": step_s,
           "step_s_min": min(times) if times else None,
           "step_s_max": max(times) if times else None, "num_steps_timed": len(times),
           "videos_per_s": ratio(batch, step_s), "first_step_s": info.get("first_step_s"),
           "state_mb": info.get("state_mb"), "step_mb": fin.get("step_rss_growth_mb"),
           "peak_rss_mb": fin.get("peak_rss_mb"),
           "peak_rss_setup_mb": info.get("peak_rss_setup_mb"),
           "rss_built_mb": info.get("rss_built_mb"), "jit_compile": info.get("jit_compile"),
           "device_peak_mb": fin.get("device_peak_mb")}
    xla = info.get("xla") or {}
    row["xla_temp_mb"] = xla.get("temp_mb")
    row["xla_total_mb"] = xla.get("total_mb")
    row["gflops_per_step"] = xla["flops"] / 1e9 if "flops" in xla else None
    state = row["state_mb"] or 0.0
    row["peak_rss_est_mb"] = None if row["step_mb"] is None else state + row["step_mb"]
    row["peak_xla_mb"] = None if row["xla_temp_mb"] is None else state + row["xla_temp_mb"]
    # Device statistics on a GPU; on a CPU, JAX's exact buffer assignment of the compiled
    # step where there is one (RSS growth agrees with it within allocator noise), else RSS.
    for source, key in (("device", "device_peak_mb"), ("xla", "peak_xla_mb"),
                        ("rss", "peak_rss_est_mb")):
        if row[key] is not None:
            row["peak_mb"], row["peak_source"] = row[key], source
            break
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        choices=("jax", "tensorflow", "torch"))
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--backbones", nargs="+", default=["rin", "unet"], choices=["rin", "unet"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rin-preset", default=None)
    parser.add_argument("--unet-preset", default=None)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--min-round-s", type=float, default=1.0,
                        help="each worker's round times steps until this many seconds (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. compile)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 on a busy machine)")
    parser.add_argument("--jobs", type=int, default=2, help="workers setting up at once")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    size = SIZES[args.size]
    args.batch_size = args.batch_size or size["batch"]
    args.rin_preset = args.rin_preset or size["rin"]
    args.unet_preset = args.unet_preset or size["unet"]
    machine = machine_info()
    t0 = time.perf_counter()

    specs = configs(args, size)
    print(f"patch vs full: setting up {len(specs)} workers (backend {args.backend})", flush=True)
    workers = start_workers(specs, jobs=args.jobs)
    live = [w for w in workers if not w.error]
    replies = interleave(live, args.repeats, ("train", {"min_seconds": args.min_round_s}))
    finals = finish_all(live)
    rows = []
    for w, (_, cfg, _) in zip(workers, specs, strict=True):
        if w.error:
            rows.append({"backbone": cfg["backbone"], "mode": w.name.split("/")[1],
                         "error": w.error[-2000:]})
            continue
        info = dict(w.info, preset=cfg["preset"])
        rows.append(summarise(w.name, info, replies[w.name]["train"], finals[w.name],
                              args.batch_size))

    ratios = {}
    for backbone in args.backbones:
        by_mode = {r["mode"]: r for r in rows if r["backbone"] == backbone and "error" not in r}
        full = by_mode.get("full")
        for mode in ("hpdm_ac", "hpdm"):
            r = by_mode.get(mode)
            if not (r and full):
                continue
            r["throughput_vs_full"] = ratio(r["videos_per_s"], full["videos_per_s"])
            r["memory_vs_full"] = ratio(r["peak_mb"], full["peak_mb"])
            r["rss_memory_vs_full"] = ratio(r["peak_rss_est_mb"], full["peak_rss_est_mb"])
            r["xla_memory_vs_full"] = ratio(r["peak_xla_mb"], full["peak_xla_mb"])
            r["flops_vs_full"] = ratio(r["gflops_per_step"], full["gflops_per_step"])
            ratios[f"{backbone}/{mode}"] = {k: r[k] for k in (
                "throughput_vs_full", "memory_vs_full", "rss_memory_vs_full",
                "xla_memory_vs_full", "flops_vs_full")}

    patch = "x".join(map(str, size["patch"]))
    target = "x".join(str(p * 2 ** (size["levels"] - 1)) for p in size["patch"])
    result = {
        "benchmark": "patch_vs_full", "backend": args.backend, "size": args.size,
        "patch_size": list(size["patch"]), "num_levels": size["levels"],
        "batch_size": args.batch_size, "rin_preset": args.rin_preset,
        "unet_preset": args.unet_preset, "repeats": args.repeats, "min_round_s": args.min_round_s,
        "warmup": args.warmup, "torch_threads": args.torch_threads, "rows": rows,
        "ratios": ratios, "paper": PAPER,
        "machine": machine, "load_avg_end": round(os.getloadavg()[0], 2),
        "wall_s": time.perf_counter() - t0,
    }
    ok = [r for r in rows if "throughput_vs_full" in r]
    chart = None
    if ok:
        chart = {
            "title": f"HPDM vs full-resolution training ({args.backend}, target {target}, "
                     f"batch {args.batch_size}): ratio to full resolution",
            "labels": [f"{r['backbone']} {r['mode']}" for r in ok] + ["paper RIN hpdm_ac"],
            "series": {"throughput (x)": [r["throughput_vs_full"] for r in ok]
                       + [PAPER["throughput_ratio"]],
                       "peak memory (x)": [r["memory_vs_full"] for r in ok]
                       + [PAPER["memory_ratio"]]},
            "unit": "x", "note": f"{machine['cpu']}, {machine['cpu_count']} cores; "
                                 f"medians of {args.repeats} interleaved rounds",
        }
    report(
        f"patch_vs_full_{args.backend}", TABLE, rows, result, out=args.out,
        title=f"\npatch vs full resolution, backend={args.backend}, size={args.size} (patch "
              f"{patch}, {size['levels']} levels, target {target}), batch {args.batch_size}, "
              f"RIN '{args.rin_preset}', UNet '{args.unet_preset}'; {machine['cpu']}, "
              f"{machine['cpu_count']} cores",
        failed=lambda r: f"{r['backbone']}/{r['mode']}",
        notes=[f"paper (A100, 64x256x256, RIN): HPDM+AC vs full = "
               f"{PAPER['memory_ratio']:.2f}x memory, {PAPER['throughput_ratio']:.1f}x throughput"],
        chart=chart,
    )


TABLE = [
    ("backbone", "backbone", None), ("config", "mode", None), ("target", lambda r: "x".join(
        map(str, r["target"])) if r.get("target") else None, None),
    ("params", "params", ","), ("step s", "step_s", ".3f"), ("videos/s", "videos_per_s", ".2f"),
    ("state MB", "state_mb", ".1f"), ("step RSS MB", "step_mb", ".0f"),
    ("XLA temp MB", "xla_temp_mb", ".0f"), ("peak MB", "peak_mb", ".0f"),
    ("from", "peak_source", None), ("GFLOP", "gflops_per_step", ".2f"),
    ("thru x", "throughput_vs_full", ".2f"), ("mem x", "memory_vs_full", ".3f"),
    ("RSS mem x", "rss_memory_vs_full", ".3f"), ("FLOP x", "flops_vs_full", ".3f"),
]


if __name__ == "__main__":
    main()
