"""A text model's direction, digit and legibility against its guidance per level and the
noise its finer levels see on the coarser ones (`context_sigma`).

Each setting is `W` (one guidance scale for all levels) or `W0,W1,...` (one per level),
optionally `@SIGMA` (the context sigma; default: the model's). Full pyramids are scored by
`keras_hpdm.metrics.evaluate_moving_mnist_text` (the same prompts and seed for every
setting). `--level0` generates level 0 alone (16 steps; the first guidance scale) and
reads it 4x upsampled, per named speed: level 0 decides the direction, and reading it
costs a tenth of a pyramid. Prints a table and writes JSON.

    python scripts/guidance_sweep.py pretrained:moving_mnist_text --videos 40 \
        --settings 4@0.002 16,4,4@0.002 16,4,4@0.7
    python scripts/guidance_sweep.py pretrained:moving_mnist_text --level0 --videos 400 \
        --phrasings train --settings 4 16
"""

import argparse
import json
import sys

import numpy as np

from keras_hpdm.cli.generate import load_checkpoint
from keras_hpdm.data import captioned_moving_mnist
from keras_hpdm.data.moving_mnist_captions import PHRASINGS, SPEEDS
from keras_hpdm.metrics import evaluate_moving_mnist_text
from keras_hpdm.metrics.motion import STILL, digit_centroids, measured_directions


def parse_setting(text):
    """`"16,4,4@0.7"` -> `{"guidance_scale": [16.0, 4.0, 4.0], "context_sigma": 0.7}`."""
    scales, _, sigma = text.partition("@")
    try:
        setting = {"guidance_scale": [float(w) for w in scales.split(",")]}
        if sigma:
            setting["context_sigma"] = float(sigma)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a setting is W or W0,W1,... with an optional @SIGMA, got {text!r}") from None
    if len(setting["guidance_scale"]) == 1:
        setting["guidance_scale"] = setting["guidance_scale"][0]
    return setting


def level0_scores(model, captions, facts, guidance_scale, seed):
    """Level 0 alone, 4x upsampled to the video's size: the named direction per speed and
    how far the digit travels (pixels of the full video, first frame to last)."""
    videos = model.generate(captions, num_levels=1, num_steps=16, seed=seed, verbose=0,
                            guidance_scale=guidance_scale)
    scale = model.pyramid.target_size[1] // videos.shape[2]
    videos = np.repeat(np.repeat(videos, scale, 2), scale, 3)
    measured = measured_directions(videos)
    centres = digit_centroids(videos)
    travel = np.linalg.norm(centres[:, -1] - centres[:, 0], axis=1)
    right = measured == facts["direction"]
    out = {"direction_accuracy": float(right.mean()),
           "still_fraction": float(np.mean(measured == STILL))}
    for i, speed in enumerate(SPEEDS):
        named = facts["speed"] == i
        out[f"direction_{speed}"] = float(right[named].mean())
        out[f"travel_{speed}"] = float(np.nanmean(travel[named]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--settings", type=parse_setting, nargs="+", required=True)
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--phrasings", choices=PHRASINGS, default="held_out")
    p.add_argument("--level0", action="store_true",
                   help="level 0 alone (the first guidance scale), per named speed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="guidance_sweep.json")
    args = p.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    rows = []
    if args.level0:
        _, captions, facts = captioned_moving_mnist(args.videos, seed=args.seed,
                                                    phrasings=args.phrasings)
        columns = ["direction_accuracy", *(f"direction_{s}" for s in SPEEDS),
                   *(f"travel_{s}" for s in SPEEDS), "still_fraction"]
    else:
        columns = ["direction_accuracy", "digit_accuracy", "persistence", "still_fraction",
                   "seconds"]
    for setting in args.settings:
        if args.level0:
            scales = setting["guidance_scale"]
            scores = level0_scores(model, captions, facts,
                                   scales[0] if isinstance(scales, list) else scales,
                                   args.seed)
        else:
            scores = evaluate_moving_mnist_text(model, num_videos=args.videos,
                                                phrasings=args.phrasings, seed=args.seed,
                                                **setting)
            scores.pop("examples")
        rows.append({"setting": setting, **scores})
        print(f"{json.dumps(setting):<62}"
              + " ".join(f"{name} {scores[name]:.3f}" for name in columns), flush=True)
    with open(args.json, "w") as f:
        json.dump({"checkpoint": args.checkpoint, "videos": args.videos,
                   "phrasings": args.phrasings, "level0": args.level0, "seed": args.seed,
                   "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
