"""What a text model draws at level 0 where noise hides everything: its mean given the prompt.

At high noise the best denoiser of level 0 (the whole video at patch size) returns the
data's mean given the prompt. On captioned Moving MNIST that mean is a blob travelling the
named way, as far as the named speed takes it. This script compares the model's
`D(x; sigma, prompt)` at level 0 (averaged over noise draws) with the data's mean for the
same facts: the share of prompts whose mean travels in the named direction's 45-degree
sector, and how far it travels (level-0 pixels, first frame to last) per speed. A model
that follows the prompt only partly falls back towards the unconditional mean, which does
not move. `--text-tokens off` zeroes the text tokens' own path into the backbone (RIN's
`text_to_latent`), so that only the pooled text conditions the model: which path carries
the layout. `--by-wording` adds the share per direction wording: which wordings the model
does not follow. Prints a table and writes JSON.

    python scripts/level0_mean_probe.py pretrained:moving_mnist_text \
        [--phrasings train held_out] [--videos 256] [--sigmas 20 5] [--text-tokens off]
        [--by-wording]
"""

import argparse
import json
import sys

import keras
import numpy as np

from keras_hpdm.cli.generate import load_checkpoint
from keras_hpdm.data import captioned_moving_mnist
from keras_hpdm.data.moving_mnist_captions import (
    _DIRECTION_PHRASES,
    DIRECTIONS,
    PHRASINGS,
    SPEEDS,
)


def level0_videos(spec, videos, channels):
    """uint8 `(N, T, H, W, 1)` videos -> their level-0 patches in [-1, 1]."""
    origin = np.zeros((spec.num_levels, 3), np.int64)
    x = np.stack([spec.extract(video, origin)[0] for video in videos]) / 127.5 - 1.0
    return np.repeat(x.astype(np.float32), channels, axis=-1)


def travel(x):
    """`(N, f, h, w, C)` videos in [-1, 1] -> `(N, 2)` (rows, columns) displacement of the
    brightness centroid from the first frame to the last. Brightness-weighted, not
    thresholded as `keras_hpdm.metrics.motion.digit_centroids`: a mean is a faint blur."""
    weight = np.clip(x.mean(-1) + 1.0, 0.0, None)
    rows, cols = np.mgrid[:x.shape[2], :x.shape[3]]
    total = weight.sum((2, 3)) + 1e-6
    centre = np.stack([(weight * rows).sum((2, 3)), (weight * cols).sum((2, 3))], -1)
    centre = centre / total[..., None]
    return centre[:, -1] - centre[:, 0]


def in_named_sector(x, facts):
    """Per video: does it travel in its named direction's 45-degree sector?"""
    shift = travel(x)
    angle = np.arctan2(shift[:, 1], -shift[:, 0])  # clockwise from up, as DIRECTIONS
    return np.round(angle / (np.pi / 4)).astype(int) % len(DIRECTIONS) == facts["direction"]


def scores(x, facts):
    """The share of videos moving in their named sector and the mean travel per speed."""
    distance = np.linalg.norm(travel(x), axis=1)
    out = {"named_sector": float(np.mean(in_named_sector(x, facts)))}
    for i, speed in enumerate(SPEEDS):
        out[f"travel_{speed}"] = float(distance[facts["speed"] == i].mean())
    return out


def direction_wording(caption, direction, phrasings):
    """The wording of `direction` (an index) that `caption` uses: the longest of the
    `phrasings` set's wordings of that direction found in it."""
    wordings = _DIRECTION_PHRASES[phrasings][DIRECTIONS[direction]]
    return max((w for w in wordings if w in caption.lower()), key=len)


def by_wording(ok, captions, facts, phrasings):
    """`{wording: [prompts in the named sector, prompts]}`, worst share first."""
    counts = {}
    for hit, caption, direction in zip(ok, captions, facts["direction"], strict=True):
        count = counts.setdefault(direction_wording(caption, direction, phrasings), [0, 0])
        count[0] += int(hit)
        count[1] += 1
    return dict(sorted(counts.items(), key=lambda item: item[1][0] / item[1][1]))


def conditional_means(model, x0, captions, sigma, draws, seed):
    """The model's level-0 `D(x0 + sigma * noise; sigma, caption)`, averaged over draws."""
    spec, n = model.pyramid, len(x0)
    coords = np.broadcast_to(spec.coords_from_offsets(np.zeros((spec.num_levels, 3)))[:1],
                             (n, 1, 6))
    conditions = {"text_embeddings": model.encode_text(captions)}
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(draws):
        noisy = x0[:, None] + sigma * rng.standard_normal(x0[:, None].shape).astype("float32")
        denoised = model.denoise(noisy, np.full((n, 1), sigma, "float32"), coords, conditions)
        total = total + keras.ops.convert_to_numpy(denoised)[:, 0]
    return total / draws


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a text model: FILE.keras, a run folder or pretrained:NAME")
    p.add_argument("--phrasings", nargs="+", choices=PHRASINGS, default=["train", "held_out"])
    p.add_argument("--videos", type=int, default=256, help="prompts per phrasing set")
    p.add_argument("--sigmas", type=float, nargs="+", default=[20.0, 5.0])
    p.add_argument("--draws", type=int, default=4, help="noise draws averaged per prompt")
    p.add_argument("--text-tokens", choices=("on", "off"), default="on")
    p.add_argument("--seed", type=int, default=1, help="videos and captions (default: 1)")
    p.add_argument("--by-wording", action="store_true",
                   help="also the named-sector share per direction wording (first sigma): "
                        "which wordings the model does not follow")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.videos < 1 or args.draws < 1:
        p.error("--videos and --draws must be >= 1")
    model = load_checkpoint(args.model)
    if not model.backbone.text_dim:
        p.error(f"{args.model} is not text-conditional")
    if args.text_tokens == "off":
        to_latent = getattr(model.backbone, "text_to_latent", None)
        if to_latent is None:
            p.error(f"--text-tokens off: {type(model.backbone).__name__} has no text_to_latent")
        to_latent.kernel.assign(np.zeros(to_latent.kernel.shape, "float32"))
    spec = model.pyramid
    rows, wordings = [], {}
    for phrasings in args.phrasings:
        videos, captions, facts = captioned_moving_mnist(
            args.videos, num_frames=spec.target_size[0], size=spec.target_size[1],
            seed=args.seed, phrasings=phrasings)
        x0 = level0_videos(spec, videos, model.backbone.channels)
        means = np.zeros_like(x0)  # the data's own mean video for each (direction, speed)
        for key in set(zip(facts["direction"], facts["speed"], strict=True)):
            same = (facts["direction"] == key[0]) & (facts["speed"] == key[1])
            means[same] = x0[same].mean(0)
        rows.append({"phrasings": phrasings, "source": "data", **scores(x0, facts)})
        rows.append({"phrasings": phrasings, "source": "data mean", **scores(means, facts)})
        for sigma in args.sigmas:
            got = conditional_means(model, x0, captions, sigma, args.draws, args.seed)
            rows.append({"phrasings": phrasings, "source": f"model, sigma {sigma:g}",
                         **scores(got, facts)})
            if args.by_wording and sigma == args.sigmas[0]:
                wordings[phrasings] = by_wording(in_named_sector(got, facts), captions, facts,
                                                 phrasings)
    header = ["phrasings", "source", "named_sector"] + [f"travel_{s}" for s in SPEEDS]
    print(f"text tokens {args.text_tokens}, {args.videos} prompts per set, "
          f"{args.draws} noise draws")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else row[k]
                         for k in header))
    for phrasings, counts in wordings.items():
        print(f"\n{phrasings} wordings, model at sigma {args.sigmas[0]:g}: named sector | "
              "prompts | wording")
        for wording, (hits, total) in counts.items():
            print(f"{hits / total:.3f} | {total} | {wording}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "rows": rows, "by_wording": wordings}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
