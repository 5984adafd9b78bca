"""Training step time of RIN presets under JAX, TensorFlow and PyTorch, and model FLOP
utilisation (MFU) against this machine's measured float32 matmul peak.

Every (backend, preset) runs in its own process with Keras' default train step
(`model.compile(jit_compile="auto")` + `train_on_batch`):

  - `jax`: the train step is `jax.jit`-compiled (XLA),
  - `tensorflow`: a `tf.function` graph; Keras' "auto" turns XLA off on CPU-only machines
    (on a GPU "auto" means XLA), so `tensorflow_xla` (`jit_compile=True`) is measured too,
  - `torch`: eager PyTorch (Keras' "auto" never uses `torch.compile`); `torch_1thread` is the
    same with `torch.set_num_threads(1)`: on a machine whose cores are busy with other work,
    torch's OpenMP threads wait for each other at every op and eager torch slows down by up
    to 10-50x, while one thread does not (JAX and TensorFlow degrade far less).

After warm-up the rounds are interleaved over all processes; in every round each process also
times a float32 `keras.ops.matmul` of two n x n matrices (best of 3), so the matmul peak is
measured in the same run under the same load. FLOPs per train step are counted once, by XLA's
cost analysis of the compiled JAX train step (forward + backward + Adam + EMA), and reused for
every backend. MFU = FLOPs per step / median step time / peak matmul FLOP/s, where the peak is
the best backend's median matmul rate.

    python benchmarks/backends.py [--backends jax tensorflow torch] [--presets tiny small]
        [--size small] [--repeats 5] [--no-tf-xla] [--no-torch-1thread]

Prints a table and writes `benchmarks/results/backends.json`.
"""

import argparse
import os
import time

from machine import machine_info
from report import RESULTS, fmt, median, ratio, report
from workers import finish_all, interleave, start_workers

SIZES = {  # patch, levels, batch, matmul size
    "small": {"patch": (2, 16, 16), "levels": 3, "batch": 4, "matmul": 2048},
    "large": {"patch": (4, 32, 32), "levels": 3, "batch": 8, "matmul": 8192},
}
NOTES = {
    "jax": "jax.jit (XLA)",
    "tensorflow": "tf.function, jit_compile='auto'",
    "tensorflow_xla": "tf.function, jit_compile=True (XLA)",
    "torch": "eager (jit_compile='auto' = no torch.compile)",
    "torch_1thread": "eager, torch.set_num_threads(1)",
    "torch_compile": "jit_compile=True (Keras' torch.compile path)",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"],
                        choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--min-round-s", type=float, default=1.0,
                        help="each worker's round times train steps until this many seconds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-tf-xla", dest="tf_xla", action="store_false",
                        help="skip the tensorflow jit_compile=True variant")
    parser.add_argument("--no-torch-1thread", dest="torch_1thread", action="store_false",
                        help="skip the torch variant limited to one intra-op thread")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also torch with jit_compile=True (torch.compile): minutes to "
                             "compile, see the README's Performance notes")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    size = SIZES[args.size]
    batch = args.batch_size or size["batch"]
    machine = machine_info()
    t0 = time.perf_counter()

    variants = []
    for b in args.backends:
        variants.append((b, b, "auto", None))
        if b == "tensorflow" and args.tf_xla:
            variants.append(("tensorflow_xla", "tensorflow", True, None))
        if b == "torch" and args.torch_1thread:
            variants.append(("torch_1thread", "torch", "auto", 1))
        if b == "torch" and args.torch_compile:
            variants.append(("torch_compile", "torch", True, None))
    spec = {"patch_size": list(size["patch"]), "num_levels": size["levels"]}
    specs = []
    for preset in args.presets:
        for name, backend, jit, threads in variants:
            cfg = {"backbone": "rin", "preset": preset, "spec": spec, "batch_size": batch,
                   "warmup": args.warmup, "train": True, "jit_compile": jit,
                   "matmul": size["matmul"], "torch_threads": threads}
            specs.append((f"{name}/{preset}", cfg, backend))
    if "jax" not in args.backends:  # FLOPs are counted by XLA: one untimed JAX worker each
        for preset in args.presets:
            cfg = {"backbone": "rin", "preset": preset, "spec": spec, "batch_size": batch,
                   "warmup": 1, "train": True}
            specs.append((f"flops/{preset}", cfg, "jax"))

    print(f"backends: setting up {len(specs)} workers", flush=True)
    workers = start_workers(specs, jobs=args.jobs)
    timed = [w for w in workers if not w.error and not w.name.startswith("flops/")]
    replies = interleave(timed, args.repeats,
                         ("train", {"min_seconds": args.min_round_s}), ("matmul", {}))
    finals = finish_all([w for w in workers if not w.error])

    flops = {}
    for w in workers:
        xla = (w.info or {}).get("xla") or {}
        if "flops" in xla:
            flops.setdefault(w.name.split("/")[1], xla["flops"])
    matmul = {w.name: median([r["gflops"] for r in replies[w.name]["matmul"]])
              for w in timed}
    peak = max((v for v in matmul.values() if v), default=None)

    rows = []
    for w, (_, _, backend) in zip(workers, specs, strict=True):
        if w.name.startswith("flops/"):
            continue
        variant, preset = w.name.split("/")
        if w.error:
            rows.append({"backend": variant, "preset": preset, "error": w.error[-2000:]})
            continue
        times = [t for r in replies[w.name]["train"] for t in r["times"]]
        step_s = median(times)
        f = flops.get(preset)
        achieved = None if f is None or not step_s else f / step_s / 1e9
        rows.append({
            "backend": variant, "keras_backend": backend, "preset": preset,
            "params": w.info["params"], "jit_compile": w.info.get("jit_compile"),
            "how": NOTES[variant], "step_s": step_s, "step_s_min": min(times),
            "num_steps_timed": len(times), "steps_per_s": ratio(1.0, step_s),
            "videos_per_s": ratio(batch, step_s),
            "first_step_s": w.info.get("first_step_s"), "gflops_per_step": ratio(f, 1e9),
            "achieved_gflops": achieved, "matmul_gflops": matmul[w.name],
            "mfu": ratio(achieved, peak), "mfu_own_matmul": ratio(achieved, matmul[w.name]),
            "step_mb": finals.get(w.name, {}).get("step_rss_growth_mb"),
            "torch_threads": w.info.get("torch_threads"),
        })
    for preset in args.presets:
        ref = next((r for r in rows if r["preset"] == preset and r["backend"] == "jax"
                    and "error" not in r), None)
        for r in rows:
            if ref and r["preset"] == preset and "error" not in r:
                r["step_vs_jax"] = ratio(r["step_s"], ref["step_s"])

    p = "x".join(map(str, size["patch"]))
    result = {
        "benchmark": "backends", "size": args.size, "patch_size": list(size["patch"]),
        "num_levels": size["levels"], "batch_size": batch, "presets": args.presets,
        "repeats": args.repeats, "matmul_n": size["matmul"], "peak_matmul_gflops": peak,
        "flops_per_step": flops, "flops_source": "XLA cost analysis of the JAX train step",
        "rows": rows, "machine": machine, "load_avg_end": round(os.getloadavg()[0], 2),
        "wall_s": time.perf_counter() - t0,
    }
    report(
        "backends", TABLE, rows, result, out=args.out,
        title=f"\nbackends, size={args.size} (RIN, patch {p}, {size['levels']} levels, batch "
              f"{batch}); {machine['cpu']}, {machine['cpu_count']} cores; float32 matmul peak "
              f"{fmt(peak, '.1f')} GFLOP/s (n={size['matmul']}, best backend's median)",
        failed=lambda r: f"{r['backend']}/{r['preset']}",
        notes=[f"  {variant}: {note}" for variant, note in NOTES.items()
               if any(r["backend"] == variant for r in rows)],
    )


TABLE = [
    ("backend", "backend", None), ("preset", "preset", None), ("params", "params", ","),
    ("jit", "jit_compile", None), ("step ms", lambda r: r["step_s"] * 1e3, ".1f"),
    ("best ms", lambda r: r["step_s_min"] * 1e3, ".1f"),
    ("steps/s", "steps_per_s", ".2f"), ("vs jax", "step_vs_jax", ".2f"),
    ("GFLOP/step", "gflops_per_step", ".3f"), ("GFLOP/s", "achieved_gflops", ".2f"),
    ("matmul GFLOP/s", "matmul_gflops", ".1f"), ("MFU", "mfu", ".1%"),
    ("compile s", "first_step_s", ".1f"),
]


if __name__ == "__main__":
    main()
