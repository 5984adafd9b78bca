"""Generate videos larger than the model's patches: level by level, tile by tile.

```
KERAS_BACKEND=jax python examples/generate_high_resolution.py --output runs/high_res
KERAS_BACKEND=jax python examples/generate_high_resolution.py --checkpoint runs/mnist/model.keras
```

An HPDM never sees a whole video during training: every level of its pyramid is a patch of
the same size (e.g. 4x16x16), level 0 being the whole video downsampled and each finer level
a crop at twice the resolution. Generation builds the video coarse to fine: level 0 is one
patch; level `l` is a canvas `2**l` times larger per pyramided axis, covered by overlapping
tiles of the patch size, each denoised against the finished coarser levels around it and
averaged where tiles overlap. With 3 levels the finest output has 16x the patch's area
(4x4 patches' worth, and 4x its frames).

The model comes from `--checkpoint`: a `.keras` file (e.g. the `model.keras` of the other
examples or of `keras-hpdm train`), or `pretrained:moving_mnist` (the default: the
class-conditional Moving MNIST model bundled with the package,
`keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist")`). The example

1. generates at every level's resolution in one call
   (`generate(..., return_pyramid=True)`), printing per level the canvas size against the
   patch size, the number of tiles, the sampling steps and the seconds spent; it checks
   that `generate(..., num_levels=k)` (stop early, a coarser output) gives exactly level
   `k - 1` of that pyramid;
2. regenerates without tile overlap (`overlap=0`: fewer tiles, faster, but nothing blends
   neighbouring tiles, so their borders can show as seams; measured as the edge contrast
   on the tile borders against elsewhere, and as the difference to the overlapped videos);
3. regenerates with another `tile_batch_size` (tiles per network call: it bounds the
   accelerator memory a level needs, trades it for speed, and leaves the result unchanged,
   up to float rounding).

Each timed configuration is first run once with one step per level (`--no-warmup` skips
this), so that compiling the network for a new tile batch shape does not count as sampling
time.

It writes to `--output`: `level_<l>.{mp4,gif,png}` (each level's video), `levels.png`
(`keras_hpdm.media.levels_sheet`: one sample's canvases coarse to fine), `overlap_0.png`
(without overlap, for comparison with `level_<L-1>.png`) and `summary.json`.

`--quick` (or `HPDM_EXAMPLE_QUICK=1`) samples one video with one step per level and stops at
level 1 (the smoke test). If the bundled model file is not installed yet, `--quick` builds
a tiny untrained model instead (and says so): its videos are noise.
"""

import argparse
import json
import math
import os
import sys
import time

# As the `keras-hpdm` command: JAX unless KERAS_BACKEND says otherwise. keras_hpdm is
# imported before Keras: it quiets TensorFlow's start-up logs before anything loads it.
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras_hpdm  # isort: skip

import keras
import numpy as np

from keras_hpdm.diffusion import tile_grid
from keras_hpdm.media import levels_sheet, save_png, save_videos

PRETRAINED_PREFIX = "pretrained:"


def to_uint8(canvas):
    """[-1, 1] canvas `(N, T, H, W, C)` -> uint8 RGB, as `generate` returns videos."""
    video = np.clip(np.round((np.asarray(canvas, np.float32) + 1.0) * 127.5), 0, 255)
    video = video.astype(np.uint8)
    return np.repeat(video, 3, axis=-1) if video.shape[-1] == 1 else video


def tiny_untrained_model(seed=0):
    """A tiny class-conditional grayscale model, as the bundled one but untrained."""
    spec = keras_hpdm.PyramidSpec((2, 16, 16), num_levels=2)
    backbone = keras_hpdm.backbones.RINBackbone.from_preset("tiny", pyramid=spec,
                                                            num_classes=10, channels=1)
    return keras_hpdm.PatchDiffusionModel(backbone, seed=seed)


def load_model(checkpoint, quick):
    """`(model, description)`; in quick mode a missing bundled model becomes a tiny
    untrained one."""
    if checkpoint.startswith(PRETRAINED_PREFIX):
        name = checkpoint[len(PRETRAINED_PREFIX):]
        try:
            path = keras_hpdm.pretrained.pretrained_path(name)
        except FileNotFoundError as e:
            if not quick:
                raise SystemExit(f"{e}\nPass --checkpoint PATH.keras (e.g. the model.keras of "
                                 "examples/moving_mnist_class_conditional.py).") from e
            print(f"NOTE: the bundled model {name!r} is not installed yet: using a tiny "
                  "UNTRAINED model instead (its videos are noise).")
            return tiny_untrained_model(), "tiny untrained model (bundled model missing)"
    else:
        path = checkpoint
    return keras.saving.load_model(path, compile=False), path


def default_conditions(model, classes, prompts):
    bb = model.backbone
    if bb.num_classes:
        return [c % bb.num_classes for c in classes]
    if bb.text_dim:
        return list(prompts)
    return None


class LevelTimer:
    """A `generate` callback recording when each level's last step finished."""

    def __init__(self):
        self.start = time.perf_counter()
        self.ends = {}

    def __call__(self, info):
        self.ends[info["level"]] = time.perf_counter()
        return False

    def seconds(self):
        out, previous = [], self.start
        for level in sorted(self.ends):
            out.append(self.ends[level] - previous)
            previous = self.ends[level]
        return out


def seam_contrast(video, tile):
    """Mean absolute difference between neighbouring pixels across the borders of a grid of
    `tile = (h, w)` tiles, over the same mean everywhere (1: no visible seams)."""
    x = np.asarray(video, np.float32).mean(axis=-1)  # (N, T, H, W)
    ratios = []
    for axis, size in ((2, tile[0]), (3, tile[1])):
        diff = np.abs(np.diff(x, axis=axis))
        if diff.shape[axis] < size:
            continue
        border = np.take(diff, np.arange(size - 1, diff.shape[axis], size), axis=axis)
        ratios.append(border.mean() / max(diff.mean(), 1e-6))
    return float(np.mean(ratios)) if ratios else 1.0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="pretrained:moving_mnist",
                        help="a .keras file or pretrained:<name> (default: %(default)s)")
    parser.add_argument("--output", default="runs/generate_high_resolution",
                        help="output folder")
    parser.add_argument("--class", dest="classes", type=int, nargs="+", default=[3, 7],
                        help="class ids, for a class-conditional model")
    parser.add_argument("--prompt", nargs="+", default=["the digit 3 moving diagonally"],
                        help="prompts, for a text-conditional model")
    parser.add_argument("--num-samples", type=int, default=2,
                        help="videos, for an unconditional model")
    parser.add_argument("--steps", type=int, nargs="+",
                        help="sampling steps: level 0 (halved per level, at least 4) or one "
                             "per level (default: the model's, 32 for the bundled one)")
    parser.add_argument("--guidance", type=float, default=1.5,
                        help="guidance scale, for a conditional model")
    parser.add_argument("--overlap", type=float, nargs=3, default=(0.5, 0.5, 0.0),
                        help="tile overlap per axis (frames, height, width)")
    parser.add_argument("--tile-batch-size", type=int, default=16,
                        help="tiles per network call")
    parser.add_argument("--other-tile-batch-size", type=int, default=64,
                        help="the tile batch size to compare with")
    parser.add_argument("--levels", type=int, help="generate this many levels (default: all)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="time the first calls too (they include compilation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="one video, one step per level, two levels (also "
                             "HPDM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("HPDM_EXAMPLE_QUICK") == "1":
        args.quick = True
        args.classes, args.prompt, args.num_samples = args.classes[:1], args.prompt[:1], 1
        args.steps, args.guidance, args.levels = [1], 1.0, min(args.levels or 2, 2)
        # 32 covers level 1's 18 tiles in one call; 8 then reuses the tile batch shape of
        # the 8-tile run without overlap (fewer shapes for JAX / TensorFlow to compile).
        args.tile_batch_size, args.other_tile_batch_size, args.warmup = 32, 8, False
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    start = time.perf_counter()
    model, source = load_model(args.checkpoint, args.quick)
    spec = model.pyramid
    num_levels = spec.num_levels if args.levels is None else min(args.levels, spec.num_levels)
    print(f"model: {source} ({type(model.backbone).__name__}, "
          f"{model.backbone.count_params():,} parameters, loaded in "
          f"{time.perf_counter() - start:.1f} s, backend {keras.config.backend()})")
    print(f"pyramid: {spec.num_levels} levels of {'x'.join(map(str, spec.patch_size))} "
          f"patches -> {'x'.join(map(str, spec.target_size))} videos; generating "
          f"{num_levels} level(s)")
    conditions = default_conditions(model, args.classes, args.prompt)
    conditional = conditions is not None
    options = {
        "conditions": conditions,
        "num_samples": None if conditional else args.num_samples,
        "num_steps": _steps_per_level(args.steps or [model.sampling["num_steps"]], num_levels),
        "guidance_scale": args.guidance if conditional else 1.0,
        "seed": args.seed, "verbose": 0, "num_levels": num_levels,
    }
    overlap = tuple(args.overlap)
    os.makedirs(args.output, exist_ok=True)

    def warm_up(**kwargs):
        """One step per level first: JAX / TensorFlow compile the network for each new tile
        batch shape on first use, which would otherwise count as sampling time."""
        if args.warmup:
            model.generate(**{**options, **kwargs, "num_steps": (1,) * num_levels})

    # 1. Every level in one call, timed per level.
    warm_up(overlap=overlap, tile_batch_size=args.tile_batch_size)
    timer = LevelTimer()
    videos, canvases = model.generate(**options, overlap=overlap,
                                      tile_batch_size=args.tile_batch_size,
                                      return_pyramid=True, callbacks=[timer])
    seconds = timer.seconds()
    steps = options["num_steps"]
    patch_voxels, patch_area = math.prod(spec.patch_size), math.prod(spec.patch_size[1:])
    patch = "x".join(map(str, spec.patch_size))
    if not args.warmup:
        print("(no warm-up: the times include compiling each new tile batch shape)")
    print(f"\nconditions {conditions if conditional else f'none ({args.num_samples} videos)'}"
          f", guidance {options['guidance_scale']}, overlap {overlap}, tile batch "
          f"{args.tile_batch_size}")
    print("level  canvas (TxHxW)  patch      area  voxels  tiles  steps  seconds")
    levels = []
    for level, canvas in enumerate(canvases):
        size = spec.level_size(level)
        tiles = len(tile_grid(size, spec.patch_size, overlap))
        levels.append({"level": level, "size": list(size), "tiles": tiles,
                       "steps": steps[level], "seconds": round(seconds[level], 3),
                       "area_ratio": math.prod(size[1:]) / patch_area,
                       "voxel_ratio": math.prod(size) / patch_voxels})
        print(f"{level:>5}  {'x'.join(map(str, size)):>14}  {patch:>9}"
              f"  {levels[-1]['area_ratio']:>3.0f}x  {levels[-1]['voxel_ratio']:>5.0f}x"
              f"  {tiles:>5}  {steps[level]:>5}  {seconds[level]:>7.2f}")
        save_videos(os.path.join(args.output, f"level_{level}"), to_uint8(canvas))
    save_png(os.path.join(args.output, "levels.png"), levels_sheet(canvases))
    print(f"output {videos.shape} uint8: {levels[-1]['area_ratio']:.0f}x the patch area, "
          f"{levels[-1]['voxel_ratio']:.0f}x its voxels")

    # `num_levels=k` stops early: the same videos as level k-1 of the full pyramid.
    early = []
    for k in range(1, num_levels):
        coarse = model.generate(**{**options, "num_levels": k,
                                   "num_steps": steps[:k]},
                                overlap=overlap,
                                tile_batch_size=args.tile_batch_size)
        diff = int(np.abs(coarse.astype(int) - to_uint8(canvases[k - 1]).astype(int)).max())
        early.append({"num_levels": k, "shape": list(coarse.shape), "max_abs_diff": diff})
        print(f"num_levels={k}: {coarse.shape}, max |difference| to level {k - 1} of the "
              f"full pyramid: {diff}")

    # 2. Without overlap: fewer tiles, but seams.
    warm_up(overlap=0.0, tile_batch_size=args.tile_batch_size)
    start = time.perf_counter()
    no_overlap = model.generate(**options, overlap=0.0, tile_batch_size=args.tile_batch_size)
    no_overlap_seconds = time.perf_counter() - start
    save_png(os.path.join(args.output, "overlap_0.png"),
             keras_hpdm.media.contact_sheet(no_overlap, scale=2))
    border = spec.patch_size[1:]
    comparison = {
        "overlap": {str(overlap): {"tiles": levels[-1]["tiles"], "seconds": sum(seconds),
                                   "seam_contrast": seam_contrast(videos, border)},
                    "0.0": {"tiles": len(tile_grid(spec.level_size(num_levels - 1),
                                                   spec.patch_size, 0.0)),
                            "seconds": no_overlap_seconds,
                            "seam_contrast": seam_contrast(no_overlap, border)}},
    }
    print("\noverlap         tiles (last level)  seconds  edge contrast on tile borders")
    for name, row in comparison["overlap"].items():
        print(f"{name:<15} {row['tiles']:>18}  {row['seconds']:>7.2f}  "
              f"{row['seam_contrast']:.2f}x")
    change = np.abs(no_overlap.astype(int) - videos.astype(int))
    comparison["overlap"]["mean_abs_diff"] = float(change.mean())
    print(f"mean |difference| between the two: {change.mean():.2f} (of 255), "
          f"{(change > 16).mean():.1%} of the pixels differ by more than 16")

    # 3. Another tile batch size: the same videos, another memory / speed trade-off.
    warm_up(overlap=overlap, tile_batch_size=args.other_tile_batch_size)
    start = time.perf_counter()
    other = model.generate(**options, overlap=overlap,
                           tile_batch_size=args.other_tile_batch_size)
    other_seconds = time.perf_counter() - start
    diff = int(np.abs(other.astype(int) - videos.astype(int)).max())
    calls = {b: math.ceil(len(videos) * levels[-1]["tiles"] / b)
             for b in (args.tile_batch_size, args.other_tile_batch_size)}
    comparison["tile_batch_size"] = {
        str(args.tile_batch_size): {"seconds": sum(seconds),
                                    "calls_per_step": calls[args.tile_batch_size]},
        str(args.other_tile_batch_size): {"seconds": other_seconds,
                                          "calls_per_step": calls[args.other_tile_batch_size]},
        "max_abs_diff": diff,
    }
    print("\ntile_batch_size  network calls per step (last level)  seconds")
    for b, s in ((args.tile_batch_size, sum(seconds)),
                 (args.other_tile_batch_size, other_seconds)):
        print(f"{b:>15}  {calls[b]:>34}  {s:>7.2f}")
    print(f"max |difference| between the two: {diff} (of 255)")

    summary = {"model": source, "num_levels": num_levels, "levels": levels,
               "early_stop": early, "comparison": comparison,
               "untrained": source.startswith("tiny untrained")}
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nwrote {args.output}: level_*.mp4/.gif/.png, levels.png, overlap_0.png, "
          "summary.json")
    return {**summary, "videos": videos, "canvases": canvases, "no_overlap": no_overlap,
            "other_tile_batch": other, "model": model}


def _steps_per_level(steps, num_levels):
    """Sampling steps per level, as `generate` takes them from `--steps`: one number is
    level 0's (halved per level, at least 4), or one number per level."""
    if len(steps) == 1:
        return tuple(max(min(4, steps[0]), steps[0] // 2**lv) for lv in range(num_levels))
    if len(steps) < num_levels:
        raise SystemExit(f"--steps needs 1 or {num_levels} numbers, got {steps}.")
    return tuple(steps[:num_levels])


if __name__ == "__main__":
    main()
