"""Runs the benchmark suite and writes `results/summary.json` and `results/summary.md`.

In order, each script in its own process, at one `--size`:

  1. `backends.py`: train step time and MFU of RIN `tiny`/`small` under `--backends`,
  2. `patch_vs_full.py`: HPDM pyramid (with / without adaptive computation) vs full resolution,
  3. `adaptive_computation.py`: AC vs no AC, training and generation,
  4. `generation_scaling.py`: generation time and memory at 1x / 4x / 16x output pixels,
  5. `data_pipeline.py` with `--data-pipeline` (TensorFlow input pipeline, backend-free).

2-4 run under `--backend`. The summary sets our ratios beside the paper's (Skorokhodov et al.,
CVPR 2024), with the machine, the package versions and the command to reproduce.
`--size small` (default) is sized for a 2-core CPU (about 10-15 minutes when the machine is
otherwise idle); `--size large` is for a GPU.

    python benchmarks/run_all.py [--size small] [--backend jax]
        [--backends jax tensorflow torch] [--data-pipeline] [--only NAME ...]
        [--summary-only]
"""

import argparse
import json
import os
import subprocess
import sys
import time

from machine import machine_info
from paper import PAPER
from report import RESULTS, fmt, markdown_table, report

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPTS = ("backends", "patch_vs_full", "adaptive_computation", "generation_scaling")


def script_args(name, args):
    if name == "backends":
        return ["--size", args.size, "--backends", *args.backends]
    if name == "data_pipeline":
        return []
    threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    return ["--size", args.size, "--backend", args.backend, *threads]


def result_path(name, backend):
    if name in ("backends", "data_pipeline"):
        return os.path.join(RESULTS, f"{name}.json")
    return os.path.join(RESULTS, f"{name}_{backend}.json")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_suite(args, names):
    timings = {}
    for name in names:
        cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *script_args(name, args)]
        print(f"\n=== {' '.join(os.path.relpath(c) if c.endswith('.py') else c for c in cmd)}",
              flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
        timings[name] = {"seconds": time.perf_counter() - t, "returncode": rc}
        print(f"=== {name}: {timings[name]['seconds']:.0f} s, exit code {rc}", flush=True)
    return timings


# ------------------------------------------------------------------------- summary
def section_patch_vs_full(d):
    if not d:
        return None
    cols = [("backbone", "backbone", None), ("config", "mode", None),
            ("input per video", "input", None), ("step s", "step_s", ".3f"),
            ("videos/s", "videos_per_s", ".2f"), ("peak MB", "peak_mb", ".0f"),
            ("from", "peak_source", None),
            ("throughput vs full", "throughput_vs_full", ".2f"),
            ("memory vs full", "memory_vs_full", ".3f"),
            ("RSS memory vs full", "rss_memory_vs_full", ".3f"),
            ("FLOPs vs full", "flops_vs_full", ".3f")]
    rows = []
    for r in d["rows"]:
        if "error" in r:
            rows.append({"backbone": r["backbone"], "mode": r["mode"], "input": "FAILED"})
            continue
        patch = "x".join(map(str, d["patch_size"]))
        r = dict(r, input=("x".join(map(str, r["target"])) if r["mode"] == "full"
                           else f"{d['num_levels']} x {patch}"))
        rows.append(r)
    p = d["paper"]
    rows.append({"backbone": "paper RIN", "mode": "full", "input": "64x256x256",
                 "videos_per_s": p["full_videos_per_s"], "peak_mb": p["full_memory_gb"] * 1024})
    rows.append({"backbone": "paper RIN", "mode": "hpdm_ac", "input": "3 x 16x64x64",
                 "videos_per_s": p["hpdm_ac_videos_per_s"],
                 "peak_mb": p["hpdm_ac_memory_gb"] * 1024,
                 "throughput_vs_full": p["throughput_ratio"], "memory_vs_full": p["memory_ratio"]})
    head = (f"## Patch pyramid vs full resolution ({d['backend']})\n\n"
            f"Target {'x'.join(str(s * 2 ** (d['num_levels'] - 1)) for s in d['patch_size'])}, "
            f"batch {d['batch_size']}, RIN `{d['rin_preset']}`, UNet `{d['unet_preset']}`; "
            f"medians of {d['repeats']} interleaved rounds. `peak MB` = variables + optimizer "
            f"state + the train step's temporaries (from: `xla` = XLA's buffer assignment of "
            f"the compiled step, `rss` = peak RSS growth during timed steps, `device` = GPU "
            f"peak statistics); `RSS memory` is the ratio from RSS alone.\n")
    return head + "\n" + markdown_table(cols, rows)


def section_ac(d):
    if not d:
        return None
    cols = [("backbone", "backbone", None), ("AC levels/block", "lpb", None),
            ("videos/s AC", "ac_vps", ".2f"), ("videos/s no AC", "no_vps", ".2f"),
            ("train speedup", "train_speedup", ".2f"), ("FLOP ratio", "flop_ratio", ".2f"),
            ("generation s AC", "ac_gen", ".2f"), ("generation s no AC", "no_gen", ".2f"),
            ("generation speedup", "generate_speedup", ".2f"),
            ("paper train speedup", "paper", None)]
    rows = []
    for backbone, s in d["speedups"].items():
        by = {r["mode"]: r for r in d["rows"] if r["backbone"] == backbone}
        rows.append({"backbone": f"{backbone} ({by['ac']['preset']})",
                     "lpb": ",".join(map(str, by["ac"]["levels_per_block"])),
                     "ac_vps": by["ac"]["videos_per_s"], "no_vps": by["no_ac"]["videos_per_s"],
                     "ac_gen": by["ac"]["generate_s"], "no_gen": by["no_ac"]["generate_s"],
                     "paper": ("1.61 (4.4 vs 2.73 videos/s)" if backbone == "rin" else "~1.1"),
                     **s})
    g = d.get("generation") or {}
    gen = (f"`generate(num_steps={g['num_steps']}, sampler={g['sampler']!r}, cache_context="
           f"{g['cache_context']}, tile_batch_size={g['tile_batch_size']})`" if g else "skipped")
    head = (f"## Adaptive computation ({d['backend']})\n\nPatch "
            f"{'x'.join(map(str, d['patch_size']))}, {d['num_levels']} levels, batch "
            f"{d['batch_size']}; RIN with 6 blocks; generation {gen}; medians of {d['repeats']} "
            f"interleaved rounds; FLOP ratio from XLA's cost analysis of the train steps.\n")
    return head + "\n" + markdown_table(cols, rows)


def section_backends(d):
    if not d:
        return None
    cols = [("backend", "backend", None), ("train step", "how", None), ("preset", "preset", None),
            ("params", "params", ","), ("step ms", lambda r: r["step_s"] * 1e3, ".1f"),
            ("vs jax", "step_vs_jax", ".2f"), ("GFLOP/step", "gflops_per_step", ".3f"),
            ("achieved GFLOP/s", "achieved_gflops", ".2f"), ("MFU", "mfu", ".1%")]
    head = (f"## Backends\n\nRIN, patch {'x'.join(map(str, d['patch_size']))}, "
            f"{d['num_levels']} levels, batch {d['batch_size']}; FLOPs per step from "
            f"{d['flops_source']}; float32 matmul peak "
            f"{fmt(d['peak_matmul_gflops'], '.1f')} GFLOP/s "
            f"(n={d['matmul_n']}, measured in the same run).\n")
    return head + "\n" + markdown_table(cols, [r for r in d["rows"] if "error" not in r])


def section_generation(d):
    if not d:
        return None
    ok = [r for r in d["rows"] if "error" not in r]
    base = min((r["pixels"] for r in ok), default=1)
    cols = [("output", lambda r: "x".join(map(str, r["output"])), None),
            ("pixels", lambda r: f"{r['pixels'] // base}x", None),
            ("context", lambda r: r.get("variant", "cached" if r["cache_context"]
                                        else "fresh"), None),
            ("s", "seconds", ".3f"), ("us/pixel", "us_per_pixel", ".1f"),
            ("warm-up RSS MB", "warmup_growth_mb", ".0f"),
            ("timed peak MB", "timed_growth_mb", ".1f"),
            ("beyond canvas MB", "beyond_canvas_mb", ".1f"),
            ("context cache MB", "context_mb_finest_level", ".2f"),
            ("peak RSS MB", "peak_rss_mb", ".0f"),
            ("RSS after clear_caches MB", "rss_after_clear_caches_mb", ".0f")]
    head = (f"## Generation scaling ({d['backend']})\n\nRIN `{d['preset']}` (untrained), "
            f"patch {'x'.join(map(str, d['patch_size']))}, euler {d['steps']} steps per level, "
            f"tile batch {d['tile_batch_size']}; median of {d['repeats']}.\n")
    return head + "\n" + markdown_table(cols, ok)


def section_data(d, rerun):
    if not d:
        return None
    cols = [("source", "case", None), ("pyramids/s", "pyramids_per_s", ".1f"),
            ("vs train", "vs_train", ".2f"), ("first batches s", "warmup_seconds", ".2f")]
    train = d.get("train")
    head = (f"## Data pipeline\n\n`PyramidSpec{tuple(d['spec']['patch_size'])}`, "
            f"{d['spec']['num_levels']} levels, batch {d['batch_size']}, source "
            f"`{d['source']}`"
            + ("." if rerun else "; from an earlier `data_pipeline.py` run (not re-run: pass "
               "`--data-pipeline`).")
            + ("" if not train else
               f" `vs train`: pyramids/s over the {train['videos_per_s']:.1f} videos/s RIN "
               f"`{train['preset']}` trains at on the same spec and batch ({train['backend']}).")
            + "\n")
    return head + "\n" + markdown_table(cols, d["results"])


def section_other_backends(backend):
    """Ratios from patch_vs_full / adaptive_computation results of the other backends."""
    rows = []
    for other in ("jax", "tensorflow", "torch"):
        if other == backend:
            continue
        pvf = load(result_path("patch_vs_full", other)) or {}
        ac = load(result_path("adaptive_computation", other)) or {}
        for backbone in ("rin", "unet"):
            r = (pvf.get("ratios") or {}).get(f"{backbone}/hpdm_ac") or {}
            s = (ac.get("speedups") or {}).get(backbone) or {}
            if not (r or s):
                continue
            threads = pvf.get("torch_threads") or ac.get("torch_threads")
            rows.append({
                "backend": other + (f" ({threads} thread)" if threads else ""),
                "backbone": backbone, "thru": r.get("throughput_vs_full"),
                "mem": r.get("memory_vs_full"), "ac": s.get("train_speedup"),
                "gen": s.get("generate_speedup"),
                "rounds": f"{pvf.get('repeats', '-')} / {ac.get('repeats', '-')}",
                "date": (pvf.get("machine") or ac.get("machine") or {}).get("date"),
            })
    if not rows:
        return None
    cols = [("backend", "backend", None), ("backbone", "backbone", None),
            ("HPDM+AC vs full: throughput", "thru", ".2f"), ("memory", "mem", ".3f"),
            ("AC train speedup", "ac", ".2f"), ("AC generation speedup", "gen", ".2f"),
            ("rounds (pvf / AC)", "rounds", None), ("run", "date", None)]
    head = ("## Other backends (shorter runs of patch_vs_full.py / adaptive_computation.py)\n\n"
            "Same sizes; fewer interleaved rounds, so noisier; separate runs (dates).\n")
    return head + "\n" + markdown_table(cols, rows)


def write_summary(args, timings, wall_s):
    results = {name: load(result_path(name, args.backend)) for name in SCRIPTS}
    results["data_pipeline"] = load(result_path("data_pipeline", args.backend))
    machine = machine_info()
    reproduce = ("python benchmarks/run_all.py --size " + args.size + " --backend "
                 + args.backend + " --backends " + " ".join(args.backends)
                 + (" --data-pipeline" if args.data_pipeline else ""))
    summary = {"command": reproduce, "size": args.size, "backend": args.backend,
               "backends": args.backends, "machine": machine, "timings": timings,
               "wall_s": wall_s, "paper": PAPER, "headline": headline(results),
               "results": results}
    v = machine["versions"]
    head = [
        "# keras_hpdm benchmark summary", "",
        f"Reproduce: `{reproduce}`", "",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores"
        + (f", GPU: {', '.join(machine['gpus'])}" if machine["gpus"] else ", no GPU")
        + f"; {machine['platform']}; Python {machine['python']}; keras {v['keras']}, "
        f"jax {v['jax']}, tensorflow {v['tensorflow']}, torch {v['torch']}; "
        f"git {machine['git']}; {machine['date']}; load average at the end "
        f"{machine['load_avg_1min']}" + (f"; suite wall time {wall_s / 60:.1f} min" if wall_s
                                         else ""), "",
        "Per script: " + (", ".join(f"{n} {t['seconds']:.0f} s" + (
            "" if t["returncode"] == 0 else " (FAILED)") for n, t in timings.items()) or "-"),
        "",
        "## Headline: our ratios beside the paper's", "",
    ]
    lines = head + [markdown_table(HEADLINE, summary["headline"])]
    for section in (section_patch_vs_full(results["patch_vs_full"]),
                    section_ac(results["adaptive_computation"]),
                    section_other_backends(args.backend),
                    section_backends(results["backends"]),
                    section_generation(results["generation_scaling"]),
                    section_data(results["data_pipeline"], "data_pipeline" in timings)):
        if section:
            lines += ["", section]
    report("summary", HEADLINE, summary["headline"], summary, title="\n" + "\n".join(head),
           markdown="\n".join(lines) + "\n")


HEADLINE = [("measure", "measure", None), ("ours", "ours", None),
            ("paper (A100, HPDM-S)", "paper", None)]


def headline(results):
    out = []
    pvf = results.get("patch_vs_full") or {}
    for key, r in (pvf.get("ratios") or {}).items():
        backbone, mode = key.split("/")
        label = "with AC" if mode == "hpdm_ac" else "without AC"
        paper = (mode == "hpdm_ac" and backbone == "rin")
        out.append({"measure": f"{backbone}: HPDM {label} vs full res, throughput",
                    "ours": fmt(r["throughput_vs_full"], ".2f") + "x",
                    "paper": f"{PAPER['throughput_ratio']:.1f}x" if paper else "-"})
        out.append({"measure": f"{backbone}: HPDM {label} vs full res, peak memory",
                    "ours": fmt(r["memory_vs_full"], ".3f") + "x",
                    "paper": f"{PAPER['memory_ratio']:.2f}x" if paper else "-"})
    ac = results.get("adaptive_computation") or {}
    for backbone, s in (ac.get("speedups") or {}).items():
        paper = "1.61x" if backbone == "rin" else "~1.1x"
        out.append({"measure": f"{backbone}: AC training speedup (FLOP ratio)",
                    "ours": f"{fmt(s['train_speedup'])}x "
                            f"({fmt(s['flop_ratio'])}x)", "paper": paper})
        out.append({"measure": f"{backbone}: AC generation speedup",
                    "ours": fmt(s["generate_speedup"]) + "x", "paper": "-"})
    gen = results.get("generation_scaling") or {}
    rows = [r for r in gen.get("rows", []) if r.get("variant", "cached" if r.get(
        "cache_context") else "fresh") == "cached" and "error" not in r]
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        out.append({"measure": f"generation {hi['pixels'] // lo['pixels']}x pixels: time / "
                               "us per pixel",
                    "ours": f"{hi['seconds'] / lo['seconds']:.2f}x / "
                            f"{hi['us_per_pixel'] / lo['us_per_pixel']:.2f}x", "paper": "-"})
    for backend_row in (results.get("backends") or {}).get("rows", []):
        if "error" not in backend_row and backend_row["preset"] == "small":
            out.append({"measure": f"MFU, RIN small, {backend_row['backend']}",
                        "ours": fmt(backend_row["mfu"], ".1%"), "paper": "-"})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=("small", "large"))
    parser.add_argument("--backend", default="jax", choices=("jax", "tensorflow", "torch"),
                        help="backend of patch_vs_full, adaptive_computation, generation")
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"],
                        choices=["jax", "tensorflow", "torch"], help="backends.py's backends")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="with --backend torch: torch intra-op threads (1 on a busy machine)")
    parser.add_argument("--data-pipeline", action="store_true")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS + ("data_pipeline",))
    parser.add_argument("--summary-only", action="store_true",
                        help="rebuild the summary from existing results")
    args = parser.parse_args()
    names = list(args.only or SCRIPTS)
    if args.data_pipeline and "data_pipeline" not in names:
        names.append("data_pipeline")
    t = time.perf_counter()
    if args.summary_only:  # keep the timings of the run that produced the results
        previous = load(os.path.join(RESULTS, "summary.json")) or {}
        timings, wall_s = previous.get("timings", {}), previous.get("wall_s")
    else:
        timings = run_suite(args, names)
        wall_s = time.perf_counter() - t
    write_summary(args, timings, wall_s)
    failed = [n for n, r in timings.items() if r["returncode"]]
    if failed:
        print(f"FAILED: {failed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
