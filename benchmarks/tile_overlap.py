"""The paper's Table 4 on a trained model: generation with tiles that overlap by half along
each combination of axes (time f, height h, width w), scored by the library's evaluation.

Every strategy generates the same requests (`--per-class` videos of each digit, same seeds)
from one checkpoint (default: the bundled `pretrained:moving_mnist`), each in a fresh
`keras-hpdm evaluate` process, and is scored by the digit reader (frames read as the
requested digit, persistence) and, with `--fvd N`, FVD/KVD against N real videos with the
real/real figure beside them. Repeated over `--seeds`; the table gives the mean and, with 2
or more seeds, the spread (half the max-min range), and how many seeds each strategy beats
tiles without overlap at (paired at equal seeds: the seeds differ by more than the
strategies do).

Cost: `tile steps` counts the network evaluations per video (tiles of every level times that
level's sampling steps), exact, and with `--speed-repeats N` (default 3; 0: skip) one
process times a generation of each strategy side by side (rounds interleaved, medians).

    python benchmarks/tile_overlap.py [--checkpoint pretrained:moving_mnist]
        [--strategies none f-h f-h-w] [--seeds 0 1] [--per-class 5] [--fvd 50]
        [--steps 32 16 8] [--reuse] [--out-dir benchmarks/results/tile_overlap]

`--reuse` scores again from the records already in `--out-dir` (made with the same
settings) instead of generating again. Prints a table and writes
`benchmarks/results/tile_overlap_<backend>.json` / `.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # the evaluation processes inherit it

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402
from report import RESULTS, markdown_table, median, report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Half a tile of overlap on the named axes (f: time, h: height, w: width).
STRATEGIES = {name: tuple(0.5 if axis in name.split("-") else 0.0 for axis in "fhw")
              for name in ("none", "w", "h", "h-w", "f", "f-w", "f-h", "f-h-w")}
# The paper's Table 4: FVD@512 on UCF-101 at 32x128x128 and 64x256x256.
PAPER_TABLE4 = {"none": (385.40, 475.05), "w": (367.10, 452.79), "h": (383.15, 467.36),
                "h-w": (382.25, 456.10), "f": (380.63, 460.74), "f-w": (398.77, 492.84),
                "f-h": (360.46, 436.81), "f-h-w": (381.85, 467.37)}
SCORES = ("fvd", "frame_accuracy", "persistence", "class_accuracy", "kvd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="pretrained:moving_mnist",
                   help="a class-conditional Moving MNIST model: .keras file, run folder or "
                        "pretrained:NAME")
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES),
                   default=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--per-class", type=int, default=5, help="videos per digit")
    p.add_argument("--fvd", type=int, default=50, help="videos for FVD/KVD (0: skip)")
    p.add_argument("--steps", type=int, nargs="+", default=[32, 16, 8],
                   help="sampling steps, one per level (or level 0's, halved per level)")
    p.add_argument("--speed-repeats", type=int, default=3,
                   help="interleaved rounds of side-by-side generation timing (0: skip)")
    p.add_argument("--out-dir", default=os.path.join(RESULTS, "tile_overlap"))
    p.add_argument("--json", default=None, help="default: results/tile_overlap_<backend>.json")
    p.add_argument("--reuse", action="store_true",
                   help="score the records already in --out-dir instead of generating again")
    args = p.parse_args(argv)
    if "none" not in args.strategies:
        p.error("--strategies must include none: every strategy is compared with it")
    return args


def evaluate(strategy, seed, args):
    """Scores one strategy at one seed in a fresh `keras-hpdm evaluate` process; returns its
    record (settings and scores)."""
    path = os.path.join(args.out_dir, f"{strategy}_s{seed}.json")
    overlap = STRATEGIES[strategy]
    wanted = {"num_steps": args.steps, "seed": seed, "overlap": list(overlap),
              "per_class": args.per_class}
    if args.reuse and os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
        settings = {k: record["settings"].get(k) for k in wanted}
        if settings == wanted and record["scores"].get("fvd_num_videos", 0) == args.fvd:
            return record
        print(f"[{strategy}_s{seed}] {path} was made with other settings ({settings}, "
              f"fvd {record['scores'].get('fvd_num_videos', 0)}): scoring again", flush=True)
        os.remove(path)  # `evaluate` refuses to overwrite a file
    command = [sys.executable, "-m", "keras_hpdm.cli", "evaluate", args.checkpoint,
               "--per-class", str(args.per_class), "--steps", *map(str, args.steps),
               "--fvd", str(args.fvd), "--seed", str(seed),
               "--overlap", *(f"{v:g}" for v in overlap), "--json", path]
    print(f"[{strategy}_s{seed}] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    with open(path) as f:
        return json.load(f)


def tile_steps(spec, steps, overlap):
    """Network evaluations per video: every level's tiles times its sampling steps."""
    from keras_hpdm.diffusion import tile_grid

    return sum(len(tile_grid(spec.level_size(level), spec.patch_size, overlap)) * n
               for level, n in enumerate(steps))


def level_steps(model, steps):
    """`--steps` as `generate` reads them: one count per level (one count alone: level
    0's, halved per finer level)."""
    from keras_hpdm.models.generation_plan import GenerationPlan

    backbone = model.backbone
    plan = GenerationPlan.resolve(
        model.pyramid.num_levels, model.sampling, backbone.num_classes,
        backbone.text_dim, conditions=0,
        num_steps=steps[0] if len(steps) == 1 else steps)
    return list(plan.num_steps)


def side_by_side_seconds(model, args, steps):
    """Seconds per generation (one digit, `--per-class` videos) of each strategy, timed in
    this one process with the rounds interleaved (A, B, C, A, B, C, ...): medians."""
    def once(strategy):
        start = time.perf_counter()
        model.generate(0, num_samples=args.per_class, num_steps=steps,
                       overlap=STRATEGIES[strategy], tile_batch_size=32, seed=0, verbose=0)
        return time.perf_counter() - start

    for strategy in args.strategies:  # warm-up: compilation and caches per tile batch shape
        once(strategy)
    times = {s: [] for s in args.strategies}
    for round_ in range(args.speed_repeats):
        print(f"timing {len(times)} strategies side by side: round {round_ + 1}/"
              f"{args.speed_repeats}", flush=True)
        for strategy in args.strategies:
            times[strategy].append(once(strategy))
    return {s: median(t) for s, t in times.items()}


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.ptp(values) / 2) if len(values) > 1 else None)


def summarise(records, strategies, tiles, seconds=None):
    """A row per strategy: scores' mean and spread over seeds, seeds at which its FVD beats
    no overlap's (paired), cost against no overlap, and the paper's figures."""
    by = {(r["strategy"], r["seed"]): r["scores"] for r in records}
    seeds = sorted({r["seed"] for r in records})
    rows = []
    for strategy in strategies:
        mine = [by[(strategy, s)] for s in seeds if (strategy, s) in by]
        row = {"strategy": strategy, "overlap": list(STRATEGIES[strategy]),
               "seeds": len(mine), "tile_steps": tiles[strategy],
               "tile_steps_vs_none": tiles[strategy] / tiles["none"]}
        for key in SCORES:
            row[key], row[key + "_spread"] = spread([m.get(key) for m in mine])
        paired = [(by[(strategy, s)]["fvd"], by[("none", s)]["fvd"]) for s in seeds
                  if (strategy, s) in by and ("none", s) in by
                  and by[(strategy, s)].get("fvd") is not None]
        row["fvd_beats_none"] = sum(a < b for a, b in paired) if paired else None
        row["fvd_vs_none"] = (float(np.mean([a / b for a, b in paired]))
                              if paired else None)
        if seconds:
            row["seconds"] = seconds.get(strategy)
            row["time_vs_none"] = (None if row["seconds"] is None or not seconds.get("none")
                                   else row["seconds"] / seconds["none"])
        small, large = PAPER_TABLE4[strategy]
        row.update(paper_fvd_small=small, paper_fvd_large=large,
                   paper_fvd_large_vs_none=large / PAPER_TABLE4["none"][1])
        rows.append(row)
    return rows


def with_spread(key, spec, scale=1.0):
    def cell(row):
        if row.get(key) is None:
            return None
        s = row.get(key + "_spread")
        return (format(row[key] * scale, spec)
                + ("" if s is None else f" ± {format(s * scale, spec)}"))
    return cell


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_hpdm.cli.generate import load_checkpoint

    os.makedirs(args.out_dir, exist_ok=True)
    start = time.time()
    model = load_checkpoint(args.checkpoint)
    steps = level_steps(model, args.steps)
    tiles = {s: tile_steps(model.pyramid, steps, STRATEGIES[s]) for s in args.strategies}
    records = []
    for seed in args.seeds:
        for strategy in args.strategies:
            record = evaluate(strategy, seed, args)
            records.append({"strategy": strategy, "seed": seed, **record})
            print(json.dumps({"strategy": strategy, "seed": seed,
                              **{k: record["scores"].get(k) for k in SCORES}}), flush=True)
    seconds = side_by_side_seconds(model, args, steps) if args.speed_repeats > 0 else None
    rows = summarise(records, args.strategies, tiles, seconds)
    columns = [("tiles overlap by half in", "strategy", None),
               ("tile steps per video", "tile_steps", "d"),
               ("vs none", "tile_steps_vs_none", ".2f")]
    if seconds:
        columns += [("time vs none (side by side)", "time_vs_none", ".2f")]
    if args.fvd:
        columns += [(f"FVD, N={args.fvd}", with_spread("fvd", ".0f"), None),
                    ("vs none (paired)", "fvd_vs_none", ".3f"),
                    ("seeds better than none", "fvd_beats_none", "d")]
    columns += [("frames read right %", with_spread("frame_accuracy", ".1f", 100), None),
                ("persistence %", with_spread("persistence", ".1f", 100), None),
                ("class accuracy %", with_spread("class_accuracy", ".0f", 100), None),
                ("paper FVD 32x128²", "paper_fvd_small", ".1f"),
                ("paper FVD 64x256²", "paper_fvd_large", ".1f"),
                ("paper vs none", "paper_fvd_large_vs_none", ".3f")]
    notes = []
    real_real = [r["scores"]["fvd_real_real"] for r in records
                 if "fvd_real_real" in r["scores"]]
    if real_real:
        notes.append(f"FVD of real against real videos (N={args.fvd}, the floor at this N): "
                     f"{np.mean(real_real):.0f}")
    backend = keras.config.backend()
    title = (f"Tile overlap at generation (the paper's Table 4) on {args.checkpoint} "
             f"({backend}): {args.per_class} videos per digit, steps {steps}, seeds "
             f"{args.seeds}; spread = half the range over seeds; "
             f"{(time.time() - start) / 60:.0f} min")
    meta = {"title": title, "settings": vars(args), "level_steps": steps,
            "records": records, "rows": rows, "seconds": seconds, "machine": machine_info()}
    report(f"tile_overlap_{backend}", columns, rows, meta, title=title, notes=notes,
           path=args.json, markdown=title + "\n\n" + markdown_table(columns, rows) + "\n\n"
           + "\n".join(f"- {n}" for n in notes) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
