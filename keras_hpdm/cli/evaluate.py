"""`keras-hpdm evaluate`: score a Moving MNIST model (class- or text-conditional)."""

import json
import os

from keras_hpdm.checks import SAMPLERS
from keras_hpdm.cli.common import (
    CommandError,
    add_guidance_options,
    check_plan,
    checkpoint_inputs,
    fraction,
    model_config,
    non_negative_int,
    per_level,
    positive_int,
    refuse_overwrite,
)
from keras_hpdm.models.generation_plan import DEFAULT_OVERLAP

# `keras_hpdm.data.moving_mnist_captions.PHRASINGS`, written out: building the parser
# imports no data module (they import TensorFlow); a test keeps the two equal.
PHRASINGS = ("train", "held_out", "compass")
SCORES = ("class_accuracy", "digit_accuracy", "direction_accuracy", "still_fraction",
          "frame_accuracy", "persistence", "class_effect", "noise_effect", "fvd",
          "fvd_real_real", "kvd", "kvd_real_real")


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="score a digit model: class accuracy, persistence, FVD",
        description="Generate --per-class videos of every digit (sample i of every digit "
        "shares its noise) and judge them with the packaged digit reader (a CNN trained on "
        "4000 real MNIST digits, 95.8%% on the 1000 held out): class accuracy (videos read as "
        "the requested digit), frame accuracy, persistence (frames showing a digit), class "
        "and noise effects (mean |pixel difference| /255 between two digits at one noise, "
        "and one digit at two noises); with --fvd N also FVD/KVD of N generated videos vs N "
        "real Moving MNIST videos, beside the real/real figures. A text-conditional model "
        "instead generates --videos videos from captions of real captioned Moving MNIST "
        "videos (--phrasings: held-out wordings by default) and is scored on the digit and "
        "the direction of motion the captions name.",
        epilog="examples:\n"
        "  keras-hpdm evaluate pretrained:moving_mnist\n"
        "  keras-hpdm evaluate runs/text --videos 40 --phrasings train --fvd 40\n"
        "  keras-hpdm evaluate runs/mnist --per-class 4 --steps 64 --fvd 64 --json "
        "scores.json",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .keras file, a run folder, or pretrained:NAME")
    p.add_argument("--per-class", type=positive_int, default=2,
                   help="videos per digit (default: 2)")
    p.add_argument("--videos", type=positive_int, default=20,
                   help="text models: videos (one caption each; default: 20)")
    p.add_argument("--phrasings", choices=PHRASINGS, default="held_out",
                   help="text models: caption wordings (default: held_out, never trained on; "
                        "compass: held_out with compass words for the direction)")
    p.add_argument("--steps", type=positive_int, nargs="+",
                   help="sampling steps: level 0 (halved per level) or one per level "
                        "(default: the model's)")
    p.add_argument("--sampler", choices=SAMPLERS, nargs="+",
                   help="one for all levels or one per level (default: the model's)")
    add_guidance_options(p)
    p.add_argument("--overlap", type=fraction, nargs=3, metavar=("F", "H", "W"),
                   help="tile overlap per axis (default: generate's, "
                   + " ".join(f"{v:g}" for v in DEFAULT_OVERLAP) + "; 0 0 0: tiles that do "
                   "not overlap; benchmarks/tile_overlap.py scores the paper's Table 4)")
    p.add_argument("--tile-batch-size", type=positive_int, default=32, help="default: 32")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    p.add_argument("--fvd", type=non_negative_int, default=0, metavar="N",
                   help="FVD/KVD with N generated and N real videos (0: skip; default: 0); "
                        "text models: any N > 0 scores the --videos videos")
    p.add_argument("--sensitivity", type=non_negative_int, default=0, metavar="N",
                   help="text models: also the caption sensitivity on N videos, the "
                        "denoising loss increase when the caption names another digit, "
                        "direction or speed (keras_hpdm.metrics.caption_sensitivity; 0: "
                        "skip; default: 0)")
    p.add_argument("--json", help="also write the scores (and the settings) to this file")
    p.add_argument("--card", help="add the scores and settings to this model card (the JSON "
                                  "`export` writes beside the .keras), under 'evaluation'; "
                                  "a text model's under 'evaluations' by --phrasings too, "
                                  "its held-out scores also under 'evaluation'")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                   help="0 silent, 1 progress bars, 2 one line per level (default: 0)")
    p.set_defaults(func=run)
    return p


def read_card(path):
    """The model card to update, read before the (long) evaluation so a bad one fails fast."""
    if path is None:
        return None
    try:
        with open(path) as f:
            card = json.load(f)
    except FileNotFoundError:
        raise CommandError(f"--card {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CommandError(f"--card {path} is not valid JSON ({e}).") from None
    if not isinstance(card, dict):
        raise CommandError(f"--card {path} must hold a JSON object (a model card).")
    return card


def print_sensitivity(gaps):
    """The caption-sensitivity table: loss increase (%) per changed fact and sigma."""
    print(f"  caption sensitivity ({gaps['num_videos']} videos): loss increase in % when "
          "the caption names another ..., all levels / level 0")
    print("    sigma      " + "".join(f"{s:>14g}" for s in gaps["sigmas"]))
    for name in gaps["increase"]:
        cells = "".join(f"{a:>+7.2f}/{b:<+6.2f}" for a, b in
                        zip(gaps["increase"][name], gaps["increase_level_0"][name],
                            strict=True))
        print(f"    {name:<10} {cells}")


def run(args):
    from keras_hpdm.cli.generate import load_checkpoint

    if args.fvd == 1:
        raise CommandError("--fvd needs at least 2 videos (or 0 to skip).")
    inputs = checkpoint_inputs(args.checkpoint)
    refuse_overwrite([p for p in (args.json, args.card) if p], inputs)
    card = read_card(args.card)
    # From the model file's config when it is readable: before the weights load.
    config = model_config(args.checkpoint)
    model = load_checkpoint(args.checkpoint) if config is None else None
    backbone = model.backbone.get_config() if config is None else config["backbone"]
    text = bool(backbone.get("text_dim"))
    if backbone.get("channels") != 1 or not (text or backbone.get("num_classes") == 10):
        raise CommandError("evaluate scores Moving MNIST models (1 channel; 10 classes or "
                           f"text); this one has num_classes={backbone.get('num_classes')}, "
                           f"text_dim={backbone.get('text_dim')}, channels="
                           f"{backbone.get('channels')}.")
    if args.sensitivity and not text:
        raise CommandError("--sensitivity scores text-conditional models; this one is "
                           "class-conditional.")
    steps, sampler = per_level(args.steps), per_level(args.sampler)
    guidance_scale = per_level(args.guidance)
    overlap = {} if args.overlap is None else {"overlap": tuple(args.overlap)}
    if model is None:
        # The requests the evaluation makes: one digit and `per_class` samples, or one
        # caption per video.
        request = (["a caption"] * args.videos, None) if text else (0, args.per_class)
        check_plan(config, request[0], num_samples=request[1], num_steps=steps,
                   sampler=sampler, guidance_scale=guidance_scale,
                   context_sigma=args.context_sigma, tile_batch_size=args.tile_batch_size,
                   seed=args.seed, verbose=args.verbose, **overlap)
        model = load_checkpoint(args.checkpoint)
    from keras_hpdm.metrics import evaluate_moving_mnist, evaluate_moving_mnist_text

    if guidance_scale is None:
        guidance_scale = model.sampling["guidance_scale"]
    context_sigma = (model.sampling["context_sigma"] if args.context_sigma is None
                     else args.context_sigma)
    options = dict(num_steps=steps, sampler=sampler, guidance_scale=guidance_scale,
                   context_sigma=context_sigma, tile_batch_size=args.tile_batch_size,
                   verbose=args.verbose, **overlap)
    settings = {"num_steps": steps, "sampler": sampler, "guidance_scale": guidance_scale,
                "context_sigma": context_sigma, "seed": args.seed, **overlap}
    if text:
        if args.fvd and args.videos < 2:
            raise CommandError("--fvd needs at least 2 videos: raise --videos.")
        settings.update(videos=args.videos, phrasings=args.phrasings)
        scores = evaluate_moving_mnist_text(
            model, num_videos=args.videos, phrasings=args.phrasings, seed=args.seed,
            fvd=bool(args.fvd), **options)
        if args.sensitivity:
            from keras_hpdm.metrics import caption_sensitivity

            settings["sensitivity_videos"] = args.sensitivity
            scores["caption_sensitivity"] = caption_sensitivity(
                model, num_videos=args.sensitivity, phrasings=args.phrasings, seed=args.seed)
    else:
        settings["per_class"] = args.per_class
        scores = evaluate_moving_mnist(model, per_class=args.per_class, seed=args.seed,
                                       fvd_videos=args.fvd, **options)
    print(f"{args.checkpoint}: {scores['num_videos']} videos in {scores['seconds']:.0f} s "
          f"(steps {steps or model.sampling['num_steps']}, guidance {guidance_scale}, "
          f"context sigma {context_sigma}, seed {args.seed}"
          + (f", overlap {' '.join(f'{v:g}' for v in args.overlap)}" if overlap else "") + ")")
    for name in SCORES:
        if name in scores:
            print(f"  {name:<16} {scores[name]:.4f}")
    if "per_class_accuracy" in scores:
        print("  per digit        "
              + " ".join(f"{a:.2f}" for a in scores["per_class_accuracy"]))
    for example in scores.get("examples", [])[:5]:
        print(f"  {example['caption']!r}: read {example['digit_read']}, moving "
              f"{example['direction_measured'] or 'nowhere'}")
    if "caption_sensitivity" in scores:
        print_sensitivity(scores["caption_sensitivity"])
    if "fvd" in scores:
        print(f"  (FVD/KVD with {scores['fvd_num_videos']} generated and real videos)")
    record = {"settings": settings, "scores": scores,
              "command": "keras-hpdm " + " ".join(args.argv)}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, **record}, f, indent=1)
        print(f"wrote scores: {os.path.abspath(args.json)}")
    if card is not None:
        if text:  # a record per wording set; the held-out one is the model's headline
            card.setdefault("evaluations", {})[args.phrasings] = record
        if not text or args.phrasings == "held_out":
            card["evaluation"] = record
        tmp = args.card + ".tmp"
        with open(tmp, "w") as f:
            json.dump(card, f, indent=1)
        os.replace(tmp, args.card)
        print(f"updated model card: {os.path.abspath(args.card)}")
    return 0
