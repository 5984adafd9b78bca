"""Trains a class-conditional Moving MNIST model for a wall-clock budget, without TensorFlow.

The GPU machine we are sometimes lent has JAX and torch but no TensorFlow (`../shared/GPU.md`),
so this script feeds `fit` from numpy: every batch is a fresh set of Moving MNIST videos
(`keras_hpdm.data.moving_mnist`, never repeated) cut into pyramids with the same geometry as
`PyramidSpec.sample` (offsets from `PyramidSpec.offsets_from_uniform`, levels as exact box
averages). The model is built by `keras-hpdm train`'s own `build_model` from its own flags, so
every flag of that command that shapes the model or the loss works here too.

Every `--save-every-minutes` and at the end it writes a sampling-only copy (EMA weights, as
`keras-hpdm export` does) and a model card (command, steps, minutes, loss history, machine) to
`--out-dir`; with `--eval-per-class N` it then scores the copy with `evaluate_moving_mnist`
(the packaged digit reader) and adds the scores to the card (slow on a GPU: tiled sampling is
many small calls; `keras-hpdm evaluate` anywhere gives the same figures). `--init-from
FILE.keras` continues from such a copy (fresh optimizer, EMA restarted at its weights).

`--text-table TABLE.npz` trains a text-conditional model on captioned Moving MNIST
(`keras_hpdm.data.captioned_moving_mnist`) instead: each video is conditioned on the
embeddings of one of the table's captions of its own facts (digit, direction, speed). The
table (`scripts/caption_table.py`, run where the text encoder is installed) holds them
precomputed, so training needs neither the encoder nor TensorFlow; the model records the
encoder and builds it when it first encodes a prompt (`keras-hpdm evaluate` scores it).
`--init-backbone-from pretrained:moving_mnist` starts it from the trained class model: every
backbone weight with the same path and shape is copied (`copy_matching_weights`), so only
the text layers start fresh and the network already draws moving digits.

The bundled model (README "The bundled model"):
```
python scripts/gpu_train_moving_mnist.py --minutes 4.5 --out-dir out --name A \
    --channels 1 --labels auto --preset mini --batch-size 128 --p-mean -0.4 --p-std 1.4 \
    --lr 2e-3 --workers 7
python scripts/gpu_train_moving_mnist.py --minutes 3.6 --out-dir out --name A2 \
    --init-from out/A.keras --labels auto --batch-size 128 --p-mean -0.4 --p-std 1.4 \
    --lr 1e-3 --workers 12
```
"""

import argparse
import collections
import datetime
import functools
import itertools
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_hpdm  # noqa: E402
from keras_hpdm.cli.export import sampling_copy  # noqa: E402
from keras_hpdm.cli.train import OVERRIDE_DEFAULTS, add_parser, build_model  # noqa: E402
from keras_hpdm.data.moving_mnist import moving_mnist  # noqa: E402
from keras_hpdm.data.moving_mnist_captions import (  # noqa: E402
    DIRECTIONS,
    SPEEDS,
    captioned_moving_mnist,
)
from keras_hpdm.metrics.moving_mnist_evaluation import evaluate_moving_mnist  # noqa: E402


def pyramid_batch(spec, batch_size, seed, index):
    """Batch `index`: `batch_size` new Moving MNIST videos (seeded by `seed` and `index`),
    one pyramid each, patches in [-1, 1]; the same numbers as `spec.sample` gives."""
    frames, size = spec.target_size[0], spec.target_size[1]
    videos, labels = moving_mnist(batch_size, num_frames=frames, size=size,
                                  seed=(seed * 1_000_003 + index) % 2**62)
    return {**cut_pyramids(spec, videos, seed, index), "label": labels.astype(np.int32)}


def cut_pyramids(spec, videos, seed, index):
    """One random pyramid per uint8 video (offsets seeded by `seed` and `index`)."""
    batch_size, frames, size = len(videos), spec.target_size[0], spec.target_size[1]
    videos = videos.astype(np.float32) / 127.5 - 1.0
    rng = np.random.default_rng((seed, index))
    offsets = np.stack([spec.offsets_from_uniform(rng.random((spec.num_levels, 3)))
                        for _ in range(batch_size)])
    patches = np.empty((batch_size, spec.num_levels) + spec.patch_size + (1,), np.float32)
    for level in range(spec.num_levels):
        (rf, rh, rw), (kf, kh, kw) = spec.patch_size, spec.level_factor(level)
        # The level canvas (the video box-averaged by the level factor), then crops.
        canvas = videos.reshape(batch_size, frames // kf, kf, size // kh, kh, size // kw, kw,
                                1).mean(axis=(2, 4, 6))
        for i, (of, oh, ow) in enumerate(offsets[:, level]):
            patches[i, level] = canvas[i, of:of + rf, oh:oh + rh, ow:ow + rw]
    coords = np.stack([spec.coords_from_offsets(o) for o in offsets]).astype(np.float32)
    return {"patches": patches, "coords": coords}


@functools.lru_cache(maxsize=2)
def load_text_table(path):
    """A caption table (`scripts/caption_table.py`): embeddings of captions for every fact
    triple, and per triple the rows that describe it."""
    with np.load(path) as data:
        table = {k: data[k] for k in data.files}
    keys = fact_keys(table["facts"])
    table["rows"] = [np.flatnonzero(keys == k)
                     for k in range(10 * len(DIRECTIONS) * len(SPEEDS))]
    if any(len(r) == 0 for r in table["rows"]):
        raise ValueError(f"{path}: some (digit, direction, speed) have no caption.")
    return table


def fact_keys(facts):
    """`(N, 3)` (digit, direction, speed) -> one int per fact triple."""
    facts = np.asarray(facts)
    return (facts[:, 0] * len(DIRECTIONS) + facts[:, 1]) * len(SPEEDS) + facts[:, 2]


def text_pyramid_batch(spec, batch_size, seed, index, table_path):
    """Batch `index` of captioned Moving MNIST: new videos, one pyramid each, and for each
    video the embeddings of one of the table's captions of its own facts."""
    frames, size = spec.target_size[0], spec.target_size[1]
    video_seed = (seed * 1_000_003 + index) % 2**62
    videos, _, facts = captioned_moving_mnist(batch_size, num_frames=frames, size=size,
                                              seed=video_seed)
    table = load_text_table(table_path)
    rng = np.random.default_rng((seed, index, 1))
    keys = fact_keys(np.stack([facts["digit"], facts["direction"], facts["speed"]], 1))
    rows = np.array([table["rows"][k][rng.integers(len(table["rows"][k]))] for k in keys])
    return {**cut_pyramids(spec, videos, seed, index),
            "text_embeddings": table["embeddings"][rows].astype(np.float32)}


def _batch_job(job):
    config, batch_size, seed, index, table_path = job
    spec = keras_hpdm.PyramidSpec.from_config(config)
    if table_path:
        return text_pyramid_batch(spec, batch_size, seed, index, table_path)
    return pyramid_batch(spec, batch_size, seed, index)


def pyramid_batches(spec, batch_size, seed, processes, num_batches=None, table_path=None,
                    ahead=4):
    """Batches 0, 1, 2, ... in order (cycling after `num_batches`), made by `processes`
    spawned worker processes (not forked: forking a process that holds an accelerator is
    unsafe; 0 makes them here); captioned ones with `table_path`.

    At most `ahead` batches per process are made before they are consumed (`Pool.imap`
    would make them as fast as the workers can: where training is slower than the data,
    on a CPU, memory grows until the process is killed)."""
    indices = itertools.count() if num_batches is None else itertools.cycle(range(num_batches))
    jobs = ((spec.get_config(), batch_size, seed, i, table_path) for i in indices)
    if not processes:
        yield from map(_batch_job, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        yield from bounded_imap(pool, _batch_job, jobs, ahead * processes)


def bounded_imap(pool, fn, jobs, window):
    """`pool.imap(fn, jobs)` with at most `window` jobs submitted and not yet consumed."""
    pending = collections.deque(pool.apply_async(fn, (job,))
                                for job in itertools.islice(jobs, window))
    while pending:
        result = pending.popleft().get()
        pending.extend(pool.apply_async(fn, (job,)) for job in itertools.islice(jobs, 1))
        yield result


class Budget(keras.callbacks.Callback):
    """Stops at the wall-clock deadline (or after `max_steps`); at epoch ends, saves a
    sampling copy when `save_every` seconds have passed since the last, and keeps per-epoch
    history with times."""

    def __init__(self, deadline, save_every, save, max_steps=None):
        super().__init__()
        self.deadline, self.save_every, self.save = deadline, save_every, save
        self.max_steps = max_steps
        self.start = time.time()
        self.last_save = self.start
        self.step = 0
        self.ended = None
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if time.time() >= self.deadline or self.step == self.max_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        entry = {k: round(float(v), 4) for k, v in (logs or {}).items()}
        entry.update(epoch=epoch + 1, step=self.step,
                     seconds=round(time.time() - self.start, 1))
        self.history.append(entry)
        print(json.dumps(entry), flush=True)
        if time.time() - self.last_save >= self.save_every:
            self.save(self.step, self.history)
            self.last_save = time.time()


def continue_from(path, args):
    """A model with the weights of the sampling copy at `path` (which has no EMA or optimizer
    state): an EMA of `--ema-half-life` starting at those weights, a fresh optimizer, and
    the file's training objective but for the objective flags given (`--p-mean`, ...)."""
    from keras_hpdm.cli.generate import load_checkpoint
    from keras_hpdm.cli.train import compile_model, objective_overrides
    from keras_hpdm.models.growth import copy_weights

    trained = load_checkpoint(path)
    model = type(trained).from_config({**trained.get_config(), "ema_decay": None,
                                       "ema_half_life": args.ema_half_life,
                                       **objective_overrides(args)})
    copy_weights(model.backbone.weights, trained.backbone.weights)
    restart_ema(model)
    compile_model(model, args)
    return model


def restart_ema(model):
    """Sets every EMA copy to its weight's current value (a fresh average from here)."""
    for ema, weight in zip(model.ema_weights, model.backbone.trainable_weights, strict=True):
        ema.assign(keras.ops.convert_to_numpy(weight))


def warm_start(model, path):
    """Copies the backbone weights of the model at `path` that match the new model's (same
    path and shape) and restarts the EMA at the result; prints what starts fresh."""
    from keras_hpdm.cli.generate import load_checkpoint
    from keras_hpdm.models.warm_start import copy_matching_weights

    copied, kept = copy_matching_weights(model.backbone, load_checkpoint(path).backbone)
    restart_ema(model)
    print(f"--init-backbone-from {path}: {len(copied)} weights copied, fresh: "
          f"{', '.join(kept) or 'none'}", flush=True)


def device_name():
    """The accelerator the backend computes on, for the model card."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    return backend


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    own.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    own.add_argument("--out-dir", required=True)
    own.add_argument("--name", default="moving_mnist")
    own.add_argument("--max-steps", type=int, default=None,
                     help="also stop after this many steps (a fixed budget for comparisons)")
    own.add_argument("--save-every-minutes", type=float, default=1.0)
    own.add_argument("--eval-per-class", type=int, default=0,
                     help="videos per digit scored at the end (0: no evaluation)")
    own.add_argument("--eval-steps", type=int, default=None,
                     help="level-0 sampling steps for the evaluation (default: the model's)")
    own.add_argument("--workers", type=int, default=4, help="data loading processes")
    own.add_argument("--num-videos", type=int, default=None,
                     help="cycle over this many fixed videos instead of fresh ones")
    own.add_argument("--init-backbone-from", default=None, metavar="FILE_OR_PRETRAINED",
                     help="start the new model's backbone from a trained model with other "
                          "conditioning (e.g. the text model from pretrained:moving_mnist): "
                          "weights with the same path and shape are copied, the new "
                          "conditioning layers start fresh")
    own.add_argument("--text-table", default=None,
                     help="train a text model on captioned Moving MNIST, with the caption "
                          "embeddings of this table (scripts/caption_table.py)")
    ours, train_flags = own.parse_known_args(argv)

    parser = argparse.ArgumentParser(prog="keras-hpdm")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "builtin:moving_mnist", "--out", ours.out_dir]
                             + train_flags)
    for name, default in OVERRIDE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)
    os.makedirs(ours.out_dir, exist_ok=True)

    if ours.init_backbone_from and args.init_from:
        own.error("--init-backbone-from starts a new model; --init-from continues one")
    text = None
    if ours.text_table:
        if ours.eval_per_class:
            own.error("--eval-per-class scores class models; score a text model with "
                      "`keras-hpdm evaluate` where its text encoder is installed")
        table = load_text_table(os.path.abspath(ours.text_table))
        text = (json.loads(str(table["encoder"])), int(table["embeddings"].shape[-1]))
    model = (continue_from(args.init_from, args) if args.init_from
             else build_model(args, num_classes=None if text else 10, captions=False,
                              text=text))
    if ours.init_backbone_from:
        warm_start(model, ours.init_backbone_from)
    spec = model.pyramid
    num_batches = (None if ours.num_videos is None
                   else max(1, ours.num_videos // args.batch_size))
    data = pyramid_batches(spec, args.batch_size, args.seed, ours.workers, num_batches,
                           os.path.abspath(ours.text_table) if ours.text_table else None)
    command = "python scripts/gpu_train_moving_mnist.py " + shlex.join(argv)
    device = device_name()
    origin = (f"from {args.init_from}" if args.init_from
              else f"'{args.preset}' from {ours.init_backbone_from}" if ours.init_backbone_from
              else f"'{args.preset}'")
    print(f"{type(model.backbone).__name__} {origin}, "
          f"{model.backbone.count_params():,} parameters, {spec}, {device}", flush=True)

    def save(step, history, evaluation=None):
        copy = sampling_copy(model)
        path = os.path.join(ours.out_dir, ours.name + ".keras")
        copy.save(path + ".tmp.keras")
        os.replace(path + ".tmp.keras", path)
        card = {
            "description": (f"{'Text' if text else 'Class'}-conditional Moving MNIST (one "
                            "digit, "
                            f"{'x'.join(map(str, spec.target_size))} grayscale), "
                            f"{model.backbone.count_params():,}-parameter "
                            f"{type(model.backbone).__name__[:-len('Backbone')]} HPDM: "
                            f"{spec.num_levels} levels of "
                            f"{'x'.join(map(str, spec.patch_size))} patches"),
            "command": command,
            "steps": step,
            "batch_size": args.batch_size,
            "minutes": round(((budget.ended or time.time()) - budget.start) / 60, 1),
            "final_loss": history[-1].get("loss") if history else None,
            "backend": keras.config.backend(),
            "machine": f"{device}, {platform.machine()}, {os.cpu_count()} cores",
            "exported": datetime.date.today().isoformat(),
            "params": model.backbone.count_params(),
            "history": history,
        }
        if text:
            card["captions"] = {
                "data": "captioned Moving MNIST (keras_hpdm.data.captioned_moving_mnist)",
                "table": os.path.basename(ours.text_table),
                "captions": int(len(table["captions"])),
                "sequence_length": int(table["embeddings"].shape[1])}
        if ours.init_backbone_from:
            card["backbone_from"] = ours.init_backbone_from
        if evaluation is not None:
            card["evaluation"] = evaluation
        with open(os.path.join(ours.out_dir, ours.name + ".json"), "w") as f:
            json.dump(card, f, indent=1)
        return copy

    budget = Budget(time.time() + 60 * ours.minutes, 60 * ours.save_every_minutes, save,
                    ours.max_steps)
    model.fit(data, steps_per_epoch=args.log_every, epochs=10**6, callbacks=[budget],
              verbose=0, shuffle=False)
    budget.ended = time.time()
    trained = budget.ended - budget.start
    print(f"trained {budget.step} steps in {trained:.0f} s "
          f"({budget.step * args.batch_size / trained:.0f} videos/s)", flush=True)
    copy = save(budget.step, budget.history)
    if ours.eval_per_class:
        start = time.time()
        scores = evaluate_moving_mnist(copy, per_class=ours.eval_per_class, seed=0,
                                       num_steps=ours.eval_steps)
        evaluation = {"settings": {"per_class": ours.eval_per_class, "seed": 0,
                                   "num_steps": ours.eval_steps},
                      "scores": scores, "seconds": round(time.time() - start, 1)}
        print(json.dumps(evaluation), flush=True)
        save(budget.step, budget.history, evaluation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
