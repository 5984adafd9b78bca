"""Kill-and-resume soak: `kill -9` a `keras-hpdm train` run N times, resume it each time.

One uninterrupted reference run, then the same run killed at random moments (every other
kill lands while a checkpoint is being written: the script waits for the temporary file to
appear) and resumed with `train --resume` until it reaches the same step. Reports

  - checkpoints lost: a kill after which the checkpoint on disk does not load, or holds an
    earlier step than the last one seen (must be 0),
  - steps lost: steps trained but not yet checkpointed when the process died (the epochs
    logged after the last checkpoint, plus the epoch being saved by a kill during a write),
  - whether the resumed run's per-epoch losses and final weights equal the uninterrupted
    run's (under JAX they must, bit for bit: the data stream, noise seeds, optimizer and
    EMA all continue from the checkpoint).

Usage: python benchmarks/kill_resume_soak.py [--kills 8] [--steps 40] [--backend jax]
Prints a table and writes benchmarks/results/kill_resume_soak_<backend>.json.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from library_internals import checkpoint_temp_path
from report import report

DATA = "builtin:moving_mnist?num_videos=16&num_frames=8&size=32"
LOG_EVERY = 2
TRAIN = ["train", DATA, "--labels", "auto", "--channels", "1", "--patch-size", "2", "8", "8",
         "--levels", "2", "--preset", "tiny", "--batch-size", "2",
         "--log-every", str(LOG_EVERY), "--save-every", str(LOG_EVERY), "--verbose", "2"]
EPOCH_LINE = re.compile(r"^\d+/\d+ - .*loss: ", re.M)


def cli(backend, *argv):
    return [sys.executable, "-m", "keras_hpdm.cli", "--backend", backend, *map(str, argv)]


def start(command, log):
    # Unbuffered: a killed process must have written every epoch line it printed.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def checkpoint_step(run):
    """(step, problem): the step of the checkpoint on disk, loaded as a resume would."""
    from keras_hpdm.callbacks import load_training_checkpoint, read_training_state

    try:
        state = read_training_state(run)
        if state is None:
            return None, None
        model = load_training_checkpoint(run)
        step = int(np.asarray(model.optimizer.iterations))
        if step != state["step"]:
            return state["step"], f"state says step {state['step']}, weights {step}"
        return step, None
    except Exception as e:  # any failure to load is a lost checkpoint: record it
        return None, f"{type(e).__name__}: {e}"


def wait_for_training(run, since_step, process, timeout):
    """Waits until the run has saved a checkpoint past `since_step` (training is underway)."""
    from keras_hpdm.callbacks import read_training_state

    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            state = read_training_state(run)
        except ValueError:
            state = None
        if state is not None and state["step"] > since_step:
            return True
        time.sleep(0.05)
    return False


def kill_during_write(run, process, timeout):
    """Kills as soon as a checkpoint write has begun (the temporary file exists)."""
    began = time.time()
    deadline = began + timeout
    path = checkpoint_temp_path(run)
    while time.time() < deadline and process.poll() is None:
        # (A temporary file left by an earlier kill does not count.)
        if os.path.exists(path) and os.path.getmtime(path) >= began:
            process.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.002)
    return False


def fail(message, log_path):
    with open(log_path) as f:
        tail = f.read()[-3000:]
    sys.exit(f"{message}; the end of its log ({log_path}):\n{tail}")


def history(run):
    from keras_hpdm.callbacks import read_training_state

    return [h["loss"] for h in read_training_state(run)["history"]]


def weights(run):
    from keras_hpdm.callbacks import load_training_checkpoint

    model = load_training_checkpoint(run)
    return [np.asarray(v) for v in model.weights]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--backend", default="jax", choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per wait")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        reference, soak = os.path.join(tmp, "reference"), os.path.join(tmp, "soak")
        t0 = time.time()
        log_path = os.path.join(tmp, "reference.log")
        with open(log_path, "w") as log:
            rc = start(cli(args.backend, *TRAIN, "--steps", args.steps, "--out", reference),
                       log).wait()
        if rc != 0:
            fail(f"the reference run failed (exit {rc})", log_path)
        reference_seconds = time.time() - t0

        rows, last_step = [], 0
        for kill in range(args.kills):
            resume = os.path.exists(os.path.join(soak, "model.keras"))
            command = (cli(args.backend, "train", "--resume", "--out", soak, "--steps", args.steps)
                       if resume else cli(args.backend, *TRAIN, "--steps", args.steps,
                                          "--out", soak))
            log_path = os.path.join(tmp, f"soak_{kill}.log")
            with open(log_path, "w") as log:
                process = start(command, log)
                during_write = kill % 2 == 0
                if during_write:
                    killed = kill_during_write(soak, process, args.timeout)
                else:
                    killed = wait_for_training(soak, last_step, process, args.timeout)
                    if killed:  # somewhere inside the next epoch or its save
                        time.sleep(rng.uniform(0.0, 1.5))
                        killed = process.poll() is None
                        process.send_signal(signal.SIGKILL)
                process.wait()
            if not killed:
                print(f"kill {kill}: the run ended before it could be killed; stopping")
                break
            with open(log_path) as f:
                logged = len(EPOCH_LINE.findall(f.read())) * LOG_EVERY
            step, problem = checkpoint_step(soak)
            lost = problem is not None or (step or 0) < last_step
            started = last_step
            last_step = step if step is not None else last_step
            rows.append({"kill": kill + 1, "when": "during write" if during_write else "random",
                         "resumed_from": started, "checkpoint_step": step,
                         # Keras prints an epoch's line after the checkpoint callback has
                         # saved it: a kill during that save loses the epoch being saved.
                         "steps_lost": max(0, started + logged - (step or 0))
                         + (LOG_EVERY if during_write else 0),
                         "checkpoint_lost": lost, "problem": problem})
        t0 = time.time()
        log_path = os.path.join(tmp, "final.log")
        with open(log_path, "w") as log:
            rc = start(cli(args.backend, "train", "--resume", "--out", soak, "--steps",
                           args.steps), log).wait()
        if rc != 0:
            fail(f"the final resume failed (exit {rc})", log_path)
        final_seconds = time.time() - t0

        same_losses = history(reference) == history(soak)
        pairs = list(zip(weights(reference), weights(soak), strict=True))
        max_weight_diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in pairs)

    summary = {
        "kills": len(rows), "kills_during_write": sum(r["when"] == "during write" for r in rows),
        "checkpoints_lost": sum(r["checkpoint_lost"] for r in rows),
        "steps_lost_total": sum(r["steps_lost"] for r in rows),
        "same_epoch_losses": same_losses, "max_abs_weight_difference": max_weight_diff,
        "reference_seconds": round(reference_seconds, 1),
        "final_resume_seconds": round(final_seconds, 1),
    }
    result = {"backend": args.backend, "steps": args.steps, "train_args": TRAIN,
              "summary": summary, "kills": rows}  # `report` adds "machine"
    report(f"kill_resume_soak_{args.backend}", TABLE, rows, result, path=args.out,
           notes=[json.dumps(summary, indent=1)])
    return 0 if summary["checkpoints_lost"] == 0 else 1


TABLE = [
    ("kill", "kill", "d"), ("when", "when", None), ("resumed from", "resumed_from", "d"),
    ("checkpoint step", "checkpoint_step", "d"), ("steps lost", "steps_lost", "d"),
    ("checkpoint lost", "checkpoint_lost", None),
]


if __name__ == "__main__":
    sys.exit(main())
