"""Grow a trained model by one pyramid level and fine-tune it at twice the resolution.

```
KERAS_BACKEND=jax python examples/grow_to_high_resolution.py --output runs/grown
```

The paper reaches high resolution by training small first and then adding pyramid levels.
This example takes the bundled Moving MNIST model (3 levels of 4x16x16 patches: 16x64x64
videos) and:

1. grows it to 4 levels (`model.grow(4)`: 32x128x128 videos; every trained level keeps
   its blocks, the new finest level joins the last ones) and checks that the grown model,
   stopped at 3 levels, generates exactly the old model's videos (same seed);
2. fine-tunes it on Moving MNIST at twice the resolution in space and time
   (`keras_hpdm.data.moving_mnist(n, 32, 128, digit_size=56, speed=0.05)`: the same
   kind of video, so the old levels see the data they learned and only the new level has
   something new to learn), measuring every level's loss on held-out videos at fixed noise
   (the same noise draws at every evaluation, so the curve moves only with the weights);
3. generates every digit (`--per-digit` videos each) with the model before growing, the
   grown one before fine-tuning and after, and reads the digits with the packaged reader
   (on 32x128x128 videos box-averaged to 16x64x64, the size it reads).

It writes to `--output`: `grown.keras` (the fine-tuned model, EMA weights), `samples.png`
(the fine-tuned model's first video of each digit, one row each; `samples.mp4` / `.gif`),
`loss.png` (held-out loss per level over the steps) and `report.json` (every figure
above, with the times).

`--quick` (or `HPDM_EXAMPLE_QUICK=1`) grows a tiny untrained model on a small pyramid
and runs two steps: the smoke test.
"""

import argparse
import json
import os
import sys
import time

# As the `keras-hpdm` command: JAX unless KERAS_BACKEND says otherwise. keras_hpdm is
# imported before Keras: it quiets TensorFlow's start-up logs before anything loads it.
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras_hpdm  # isort: skip

import keras
import numpy as np

from keras_hpdm.backbones import RINBackbone
from keras_hpdm.cli.export import sampling_copy
from keras_hpdm.media import plot_curves, save_videos
from keras_hpdm.metrics import digit_video_scores
from keras_hpdm.models.growth import copy_weights


def twice_the_resolution(spec, num_videos, seed):
    """Moving MNIST at `spec`'s target size, drawn as 64x64 Moving MNIST at
    `spec.target_size[1] / 64` times the resolution (digit size and speed scaled): at
    32x128x128, 56-pixel digits crossing 5% of the room per frame."""
    frames, size = spec.target_size[0], spec.target_size[1]
    return keras_hpdm.data.moving_mnist(num_videos, num_frames=frames, size=size, seed=seed,
                                        digit_size=56 * size // 128, speed=0.1 * 64 / size)


def held_out_pyramids(spec, videos, labels, seed):
    """One pyramid per video, patches in [-1, 1], with its label: a fixed evaluation batch."""
    pyramids = [spec.sample(v.astype("float32") / 127.5 - 1.0, seed=seed + i)
                for i, v in enumerate(videos)]
    return {"patches": np.stack([p["patches"] for p in pyramids]),
            "coords": np.stack([p["coords"] for p in pyramids]),
            "label": np.asarray(labels, "int32")}


def level_losses(model, batch, seed=0, batch_size=16):
    """Every level's EDM-weighted denoising loss on `batch` at noise drawn once from the
    model's training distribution (`LevelNoiseDistribution`'s formula, drawn by NumPy from
    `seed`: the same draws at every call and on every backend), so two calls differ only
    by the weights. Returns a list, coarsest level first."""
    patches = batch["patches"]
    n, num_levels = patches.shape[:2]
    rng = np.random.default_rng(seed)
    noise = model.noise_distribution
    sigma = (np.exp(noise.p_mean + noise.p_std * rng.standard_normal((n, num_levels)))
             * noise.level_noise_scale ** np.arange(num_levels)).astype("float32")
    noisy = patches + sigma[:, :, None, None, None, None] * rng.standard_normal(
        patches.shape).astype("float32")
    total = np.zeros(num_levels)
    for i in range(0, n, batch_size):
        part = slice(i, i + batch_size)
        denoised = model.denoise(noisy[part], sigma[part], batch["coords"][part],
                                 {"label": batch["label"][part]})
        _, per_level = model.loss_fn(patches[part], denoised, sigma[part])
        total += keras.ops.convert_to_numpy(per_level) * len(patches[part])
    return [float(v) for v in total / n]


class HeldOutLoss(keras.callbacks.Callback):
    """`level_losses` of the EMA weights on a fixed batch at every epoch end, printed and
    kept in `rows`."""

    def __init__(self, batch, steps_per_epoch):
        super().__init__()
        self.batch, self.steps_per_epoch, self.rows = batch, steps_per_epoch, []

    def record(self, step):
        # The EMA weights, which `generate` samples with.
        swap = bool(self.model.ema_weights)
        if swap:
            self.model.swap_ema_weights()
        try:
            losses = level_losses(self.model, self.batch)
        finally:
            if swap:
                self.model.swap_ema_weights()
        self.rows.append({"step": step, "levels": losses})
        print(f"step {step}: held-out loss per level "
              + " ".join(f"{v:.4f}" for v in losses), flush=True)

    def on_epoch_end(self, epoch, logs=None):
        self.record((epoch + 1) * self.steps_per_epoch)


def halved(videos):
    """uint8 `(N, T, H, W, C)` -> box-averaged by 2 on every axis (the digit reader's scale)."""
    n, t, h, w, c = videos.shape
    x = videos.astype("float32").reshape(n, t // 2, 2, h // 2, 2, w // 2, 2, c)
    return np.rint(x.mean((2, 4, 6))).astype("uint8")


def digit_scores(model, digits, sample_kwargs, halve=True):
    """Generates `digits` and scores them with the packaged digit reader (`halved` to its
    scale first when `halve`); the videos are kept under `"videos"`."""
    start = time.time()
    videos = model.generate(digits, **sample_kwargs)
    seconds = time.time() - start
    scores = digit_video_scores(halved(videos) if halve else videos, digits)
    return {"class_accuracy": scores["class_accuracy"], "persistence": scores["persistence"],
            "frame_accuracy": scores["frame_accuracy"], "seconds": round(seconds, 1),
            "size": list(videos.shape[1:4]), "videos": videos}


def tiny_untrained_model(seed):
    """The quick mode's stand-in for the bundled model: a tiny 2-level class model, without
    EMA as the bundled one."""
    spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)  # 4x32x32, grown to 8x64x64
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_classes=10, channels=1)
    return keras_hpdm.PatchDiffusionModel(backbone, seed=seed, ema_decay=None)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/grown", help="output folder")
    parser.add_argument("--init-from", default="pretrained:moving_mnist",
                        help="the model to grow: pretrained:NAME, a .keras file or a run "
                             "folder (default: pretrained:moving_mnist)")
    parser.add_argument("--num-videos", type=int, default=2000, help="training videos")
    parser.add_argument("--held-out-videos", type=int, default=128,
                        help="videos of the held-out loss")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps-per-epoch", type=int, default=250,
                        help="steps between held-out evaluations")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4,
                        help="peak learning rate (cosine decay after the warm-up)")
    parser.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    parser.add_argument("--ema-half-life", type=float, default=500.0,
                        help="in steps, for a model that keeps no EMA (default: 500)")
    parser.add_argument("--per-digit", type=int, default=3,
                        help="videos per digit scored for each model (default: 3)")
    parser.add_argument("--sample-steps", type=int, default=32,
                        help="sampling steps at level 0, halved per level (default: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model, two steps (also HPDM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("HPDM_EXAMPLE_QUICK") == "1":
        args.quick = True
        args.num_videos, args.held_out_videos, args.batch_size, args.per_digit = 8, 4, 2, 1
        args.steps_per_epoch, args.epochs, args.warmup, args.sample_steps = 1, 2, 0, 1
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    keras.utils.set_random_seed(args.seed)
    if args.quick:
        model = tiny_untrained_model(args.seed)
    else:
        from keras_hpdm.cli.generate import load_checkpoint

        model = load_checkpoint(args.init_from)
    old_levels = model.pyramid.num_levels
    sample_kwargs = {"seed": args.seed, "verbose": 0, "num_steps": args.sample_steps}

    # 1. Grow; at the old level count the grown model is the old model.
    grown = model.grow(old_levels + 1)
    spec = grown.pyramid
    digits = list(range(10)) * args.per_digit
    scores = {"before growing": digit_scores(model, digits, sample_kwargs, halve=False),
              "grown, not fine-tuned": digit_scores(grown, digits, sample_kwargs)}
    start = time.time()
    before = model.generate([3, 7], **sample_kwargs)
    after = grown.generate([3, 7], num_levels=old_levels, **sample_kwargs)
    identical = bool(np.array_equal(before, after))
    print(f"grown {model.pyramid.target_size} -> {spec.target_size} "
          f"({old_levels} -> {spec.num_levels} levels, blocks run "
          f"{model.backbone.levels_per_block} -> {grown.backbone.levels_per_block} levels); "
          f"at {old_levels} levels it generates the old model's videos: "
          f"{'identical' if identical else 'DIFFERENT'} ({time.time() - start:.0f} s)")
    if not identical:
        raise RuntimeError("The grown model does not reproduce the old one's videos.")

    # 2. Fine-tune at twice the resolution; held-out loss per level at fixed noise.
    videos, labels = twice_the_resolution(spec, args.num_videos, args.seed)
    ds = keras_hpdm.data.pyramid_dataset((videos, labels), spec, args.batch_size,
                                         labels=True, channels=1, seed=args.seed)
    held_videos, held_labels = twice_the_resolution(spec, args.held_out_videos,
                                                    args.seed + 1)
    held_out = held_out_pyramids(spec, held_videos, held_labels, args.seed)
    if not grown.ema_weights:
        # A bundled or exported model keeps no EMA (it is a sampling copy): the same model
        # with a fresh EMA starting at its weights. (A run's model keeps its own.)
        trained, grown = grown, type(grown).from_config({
            **grown.get_config(), "ema_decay": None, "ema_half_life": args.ema_half_life})
        copy_weights(grown.backbone.weights, trained.backbone.weights)
        copy_weights(grown.ema_weights, grown.backbone.trainable_weights)
    total_steps = args.steps_per_epoch * args.epochs
    grown.compile(optimizer=keras_hpdm.hpdm_optimizer(
        learning_rate=args.learning_rate, total_steps=total_steps, warmup_steps=args.warmup))
    held = HeldOutLoss(held_out, args.steps_per_epoch)
    held.set_model(grown)
    held.record(0)
    start = time.time()
    history = grown.fit(ds, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs,
                        callbacks=[held], verbose=args.verbose)
    train_seconds = time.time() - start
    new = spec.num_levels - 1
    print(f"{total_steps} steps of {args.batch_size} in {train_seconds:.0f} s; held-out loss "
          f"of the new level {held.rows[0]['levels'][new]:.4f} -> "
          f"{held.rows[-1]['levels'][new]:.4f}")

    # 3. Sample every digit at the new resolution; read them at the reader's scale.
    os.makedirs(args.output, exist_ok=True)
    final = sampling_copy(grown)
    final.save(os.path.join(args.output, "grown.keras"))
    scores["grown and fine-tuned"] = digit_scores(final, digits, sample_kwargs)
    samples = scores["grown and fine-tuned"].pop("videos")[:10]
    for row in scores.values():
        row.pop("videos", None)
    files = save_videos(os.path.join(args.output, "samples"), samples)  # mp4, gif, png
    loss_plot = plot_curves(
        os.path.join(args.output, "loss.png"), [r["step"] for r in held.rows],
        {f"level {level}": [r["levels"][level] for r in held.rows]
         for level in range(spec.num_levels)},
        "held-out loss per level (fixed noise) while fine-tuning the grown model")
    report = {
        "init_from": "tiny (quick)" if args.quick else args.init_from,
        "target_size": {"before": list(model.pyramid.target_size),
                        "after": list(spec.target_size)},
        "levels_per_block": {"before": list(model.backbone.levels_per_block),
                             "after": list(grown.backbone.levels_per_block)},
        "old_levels_identical": identical, "steps": total_steps,
        "batch_size": args.batch_size, "ema_half_life": grown.ema_half_life,
        "train_seconds": round(train_seconds, 1),
        "held_out_loss": held.rows, "train_loss": history.history,
        "digit_scores": scores,
        "backend": keras.config.backend(), "files": {**files, "loss": loss_plot},
    }
    with open(os.path.join(args.output, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(f"{len(digits)} videos per model ({args.per_digit} per digit): model | output | "
          "digit drawn | persistence | sampling")
    for name, row in scores.items():
        print(f"{name} | {'x'.join(map(str, row['size']))} | {row['class_accuracy']:.1%} | "
              f"{row['persistence']:.1%} | {row['seconds']:.0f} s")
    print(f"wrote {args.output}: grown.keras, samples.png/.mp4/.gif, loss.png, report.json")
    return {**report, "samples": samples, "model": final}


if __name__ == "__main__":
    main()
