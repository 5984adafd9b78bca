"""Ablations on real data: the paper's Table 3 switches (and Table 4's tile overlap), trained
on class-conditional Moving MNIST with one recipe and scored by the library's evaluation.

Every variant is the bundled model's architecture (RIN `--preset`, 3 levels of 4x16x16 on
16x64x64 Moving MNIST, 1 channel, 10 classes) trained by `scripts/gpu_train_moving_mnist.py`
(a fresh process per run) for the same number of steps, batch size, learning rate and
seed, changing one backbone switch:

  - `default`:   deep context fusion before every block, coordinates, gradients into coarse
                 levels, the paper's adaptive computation (`levels_per_block="linear"`),
  - `shallow`:   `fusion_mode="shallow"` (context once, from the coarse patches' tokens),
  - `no_coords`: `use_coords=False`,
  - `detach`:    `detach_context=True`,
  - `no_ac`:     `levels_per_block=None` (every level runs every block),
  - `no_fusion`: `fusion_mode="none"` (not in the paper: a floor for the others).

Each trained copy (EMA weights) is scored on

  - the held-out EDM loss per level: 64 fresh videos (never trained on), their pyramids, and
    noise levels and noise drawn once from a fixed seed, identical for every variant
    (`PatchDiffusionModel.pyramid_loss`): the most sensitive figure at small budgets;
  - with `--per-class N`: `evaluate_moving_mnist` (digit-reader class accuracy, persistence)
    and, with `--fvd N`, FVD/KVD against real videos with the real/real figure beside them;
  - training speed: with `--speed-repeats N` (default 3; 0: skip) each variant's train step
    is timed side by side (one process per variant, rounds interleaved, medians: the ratio
    to the default is the figure); else the runs' own videos/s (data loading included, and
    skewed by whatever else shared the machine while each run trained).

Then the default model of the first seed is generated again with `overlap=0` (tiles that
do not overlap, Table 4) and scored the same way (on a model trained to draw digits:
`keras-hpdm evaluate pretrained:moving_mnist --overlap 0 0 0`).

Runs repeat over `--seeds`; the table gives the mean and, with 2 or more seeds, the spread
(half the max-min range) so signal can be told from noise.

    python benchmarks/ablations.py [--budget 1] [--seeds 0 1] [--variants default shallow]
        [--per-class 1] [--fvd 0] [--eval-steps 32] [--preset mini] [--batch-size 32]
        [--workers 1] [--out-dir benchmarks/results/ablations_runs]

`--budget` scales the training steps (400 steps at batch 32 per unit; a GPU run would use
e.g. `--budget 50 --batch-size 128 --workers 12`). Prints a table and writes
`benchmarks/results/ablations_<backend>.json` / `.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # the training runs inherit it

import numpy as np  # noqa: E402
from machine import machine_info  # noqa: E402
from report import fmt, markdown_table, median, report  # noqa: E402
from workers import finish_all, interleave, start_workers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(ROOT, "scripts", "gpu_train_moving_mnist.py")
STEPS_PER_BUDGET = 400

VARIANTS = {
    "default": {},
    "shallow": {"fusion_mode": "shallow"},
    "no_coords": {"use_coords": False},
    "detach": {"detach_context": True},
    "no_ac": {"levels_per_block": None},
    "no_fusion": {"fusion_mode": "none"},
}
# The paper's Table 3 (UCF-101 64x256x256, FVD@512 at the finest level, A100 videos/s).
PAPER_TABLE3 = {"default": (378.2, 4.4), "shallow": (467.0, 4.91), "no_coords": (389.5, 4.47),
                "detach": (397.3, 4.4), "no_ac": (373.9, 2.73)}
HELD_OUT_SEED = 987_654  # Moving MNIST seeds of the held-out videos (training uses others)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", type=float, default=1.0,
                   help=f"training steps in units of {STEPS_PER_BUDGET}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--preset", default="mini")
    p.add_argument("--workers", type=int, default=1, help="data processes per training run")
    p.add_argument("--held-out", type=int, default=64, help="videos for the held-out loss")
    p.add_argument("--per-class", type=int, default=0,
                   help="videos per digit for the digit reader (0: skip)")
    p.add_argument("--fvd", type=int, default=0, help="videos for FVD/KVD (0: skip)")
    p.add_argument("--eval-steps", type=int, default=32,
                   help="level-0 sampling steps of the evaluation (halved per finer level)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results",
                                                     "ablations_runs"))
    p.add_argument("--json", default=None, help="default: results/ablations_<backend>.json")
    p.add_argument("--speed-repeats", type=int, default=3,
                   help="interleaved rounds of side-by-side train-step timing (0: skip)")
    p.add_argument("--reuse", action="store_true",
                   help="score runs already in --out-dir instead of training them again")
    return p.parse_args(argv)


def train(variant, seed, args):
    """Trains one variant in a fresh process; returns its model card (JSON written by the
    training script beside the sampling copy)."""
    name = f"{variant}_s{seed}"
    card_path = os.path.join(args.out_dir, name + ".json")
    if args.reuse and os.path.exists(card_path):
        with open(card_path) as f:
            return name, json.load(f)
    steps = max(1, round(args.budget * STEPS_PER_BUDGET))
    options = [f"--backbone-option={k}={json.dumps(v)}" for k, v in VARIANTS[variant].items()]
    command = [sys.executable, TRAIN_SCRIPT, "--minutes", "1e6", "--max-steps", str(steps),
               "--save-every-minutes", "1e6", "--out-dir", args.out_dir, "--name", name,
               "--workers", str(args.workers), "--channels", "1", "--labels", "auto",
               "--preset", args.preset, "--batch-size", str(args.batch_size),
               "--p-mean", "-0.4", "--p-std", "1.4", "--lr", str(args.lr),
               # Four logged epochs: throughput is timed after the first (compilation).
               "--log-every", str(max(1, steps // 4)), "--seed", str(seed), *options]
    print(f"[{name}] training {steps} steps: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    with open(card_path) as f:
        return name, json.load(f)


def held_out_batch(model, size, seed=HELD_OUT_SEED):
    """Pyramids of `size` fresh videos, with noise levels drawn from the model's training
    distribution and noise, from fixed seeds (the same for every variant)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from gpu_train_moving_mnist import pyramid_batch

    spec, dist = model.pyramid, model.noise_distribution
    batch = pyramid_batch(spec, size, seed, 0)
    rng = np.random.default_rng(seed)
    n = rng.standard_normal((size, spec.num_levels))
    sigma = (np.exp(dist.p_mean + dist.p_std * n)
             * dist.level_noise_scale ** np.arange(spec.num_levels)).astype(np.float32)
    noise = rng.standard_normal(batch["patches"].shape).astype(np.float32)
    return batch, sigma, noise


def held_out_loss(model, batch, sigma, noise, chunk=16):
    """Mean EDM loss per level (and overall) on the held-out batch, in chunks."""
    from keras import ops

    per_level = []
    for i in range(0, len(sigma), chunk):
        part = slice(i, i + chunk)
        _, levels = model.pyramid_loss(batch["patches"][part], batch["coords"][part],
                                       {"label": batch["label"][part]}, sigma[part],
                                       noise[part])
        per_level.append([float(ops.convert_to_numpy(v)) for v in levels])
    return np.mean(per_level, axis=0).tolist()


def score(model, args, batch, sigma, noise, overlaps=(None,)):
    from keras_hpdm.metrics import evaluate_moving_mnist

    out = {"held_out_loss": held_out_loss(model, batch, sigma, noise)}
    if args.per_class:
        for overlap in overlaps:
            kwargs = {} if overlap is None else {"overlap": overlap}
            scores = evaluate_moving_mnist(model, per_class=args.per_class, seed=0,
                                           fvd_videos=args.fvd,
                                           num_steps=args.eval_steps,
                                           **kwargs)
            out["evaluation" if overlap is None else f"evaluation_overlap_{overlap}"] = {
                k: v for k, v in scores.items() if k != "per_class_accuracy"}
    return out


def throughput(card):
    """Training videos/s after the first logged epoch (which holds the compilation), or over
    the whole run when it logged one epoch."""
    history = card["history"]
    if not history:
        return None
    first, last = history[0], history[-1]
    if last["step"] > first["step"]:
        return (last["step"] - first["step"]) * card["batch_size"] / (
            last["seconds"] - first["seconds"])
    return last["step"] * card["batch_size"] / last["seconds"]


def side_by_side_speed(args, spec):
    """Training videos/s of each variant's model, every variant in its own process and
    their timed rounds interleaved (A, B, C, A, B, C, ...), so that what else the machine
    runs weighs on all of them alike. Random batches of the runs' shapes."""
    config = {"backbone": "rin", "preset": args.preset, "batch_size": args.batch_size,
              "spec": {"patch_size": list(spec.patch_size), "num_levels": spec.num_levels},
              "warmup": 2, "train": True, "xla": False}
    specs = [(variant, {**config, "overrides": VARIANTS[variant]},
              os.environ["KERAS_BACKEND"]) for variant in args.variants]
    print(f"timing {len(specs)} variants side by side, {args.speed_repeats} rounds",
          flush=True)
    workers = start_workers(specs, jobs=1)
    live = [w for w in workers if not w.error]
    replies = interleave(live, args.speed_repeats, ("train", {"min_seconds": 3.0}))
    finish_all(live)
    return {w.name: args.batch_size / median([t for r in replies[w.name]["train"]
                                             for t in r["times"]]) for w in live}


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.ptp(values) / 2) if len(values) > 1 else None)


def summarise(runs, variants, speed=None):
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        row = {"variant": variant, "seeds": len(mine)}
        finest = [r["held_out_loss"][-1] for r in mine]
        overall = [float(np.mean(r["held_out_loss"])) for r in mine]
        row["loss_finest"], row["loss_finest_spread"] = spread(finest)
        row["loss_mean"], row["loss_mean_spread"] = spread(overall)
        row["run_videos_per_s"], _ = spread([r["videos_per_s"] for r in mine])
        row["videos_per_s"] = (speed or {}).get(variant, row["run_videos_per_s"])
        for key in ("class_accuracy", "persistence", "fvd"):
            row[key], row[key + "_spread"] = spread(
                [r.get("evaluation", {}).get(key) for r in mine])
        paper = PAPER_TABLE3.get(variant)
        row["paper_fvd"], row["paper_videos_per_s"] = paper if paper else (None, None)
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "default"), None)
    for row in rows:
        if base and base["loss_finest"]:
            row["loss_finest_vs_default"] = row["loss_finest"] / base["loss_finest"]
        if base and base["videos_per_s"]:
            row["speed_vs_default"] = row["videos_per_s"] / base["videos_per_s"]
        if row["paper_fvd"]:
            row["paper_fvd_vs_default"] = row["paper_fvd"] / PAPER_TABLE3["default"][0]
    return rows


def with_spread(key, spec):
    def cell(row):
        if row.get(key) is None:
            return None
        s = row.get(key + "_spread")
        return format(row[key], spec) + ("" if s is None else f" ± {format(s, spec)}")
    return cell


def main(argv=None):
    args = parse_args(argv)
    import keras

    import keras_hpdm  # noqa: F401 (registers the model classes for loading)

    os.makedirs(args.out_dir, exist_ok=True)
    start = time.time()
    runs = []
    batch = sigma = noise = None
    for seed in args.seeds:
        for variant in args.variants:
            name, card = train(variant, seed, args)
            model = keras.saving.load_model(os.path.join(args.out_dir, name + ".keras"))
            if batch is None:
                batch, sigma, noise = held_out_batch(model, args.held_out)
                spec = model.pyramid
            overlaps = (None, 0) if (variant == "default" and seed == args.seeds[0]) else (None,)
            scores = score(model, args, batch, sigma, noise, overlaps)
            run = {"variant": variant, "seed": seed, "steps": card["steps"],
                   "batch_size": card["batch_size"], "params": card["params"],
                   "videos_per_s": throughput(card),
                   "final_train_loss": card["final_loss"], **scores}
            runs.append(run)
            print(json.dumps(run), flush=True)
    overlap_run = next((r for r in runs if "evaluation_overlap_0" in r), None)
    speed = (side_by_side_speed(args, spec)
             if args.speed_repeats > 0 and runs else None)
    rows = summarise(runs, args.variants, speed)
    columns = [
        ("variant", "variant", None), ("seeds", "seeds", "d"),
        ("held-out loss, finest", with_spread("loss_finest", ".4f"), None),
        ("vs default", "loss_finest_vs_default", ".3f"),
        ("all levels", with_spread("loss_mean", ".4f"), None),
        ("videos/s" + (" (side by side)" if speed else " (runs)"), "videos_per_s", ".1f"),
        ("speed vs default", "speed_vs_default", ".2f"),
    ]
    if args.per_class:
        columns += [("class acc", with_spread("class_accuracy", ".2f"), None),
                    ("persistence", with_spread("persistence", ".2f"), None)]
    if args.fvd:
        columns += [(f"FVD (N={args.fvd})", with_spread("fvd", ".0f"), None)]
    columns += [("paper FVD@512", "paper_fvd", ".1f"),
                ("paper vs default", "paper_fvd_vs_default", ".3f"),
                ("paper videos/s", "paper_videos_per_s", ".2f")]
    notes = []
    if overlap_run:
        model_name = f"default_s{args.seeds[0]}"
        for label, key in (("50% overlap (default)", "evaluation"),
                           ("no overlap", "evaluation_overlap_0")):
            e = overlap_run[key]
            notes.append(f"{model_name}, tiles with {label}: class accuracy "
                         f"{fmt(e.get('class_accuracy'))}, frame accuracy "
                         f"{fmt(e.get('frame_accuracy'))}, "
                         f"persistence {fmt(e.get('persistence'))}"
                         + (f", FVD {fmt(e.get('fvd'), '.0f')}" if "fvd" in e else ""))
        notes.append("paper Table 4 (FVD@512): no overlap 475.1, 50% overlap in time and "
                     "height 436.8")
    real_real = [r["evaluation"]["fvd_real_real"] for r in runs
                 if "fvd_real_real" in r.get("evaluation", {})]
    if real_real:
        notes.append(f"FVD of real against real videos (N={args.fvd}, the floor at this N): "
                     f"{np.mean(real_real):.0f}")
    steps = runs[0]["steps"] if runs else None
    title = (f"Ablations on Moving MNIST ({keras.config.backend()}): {steps} steps at batch "
             f"{args.batch_size}, {args.preset} preset, seeds {args.seeds}; spread = half the "
             f"range over seeds; {(time.time() - start) / 60:.0f} min")
    backend = keras.config.backend()
    meta = {"title": title, "settings": vars(args), "runs": runs, "rows": rows, "speed": speed,
            "overlap": overlap_run, "machine": machine_info()}
    report(f"ablations_{backend}", columns, rows, meta, title=title, notes=notes,
           path=args.json, markdown=title + "\n\n" + markdown_table(columns, rows) + "\n\n"
           + "\n".join(f"- {n}" for n in notes) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
