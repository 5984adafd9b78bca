"""`keras-hpdm demo`: generate videos with the bundled pretrained model."""

import argparse
import os

from keras_hpdm.cli.common import (
    add_guidance_options,
    add_verbose,
    check_request,
    non_negative_int,
    output_folder,
    positive_int,
    print_outputs,
    refuse_overwrite,
)
from keras_hpdm.models.generation_plan import DEFAULT_OVERLAP

OUTPUTS = ("samples.mp4", "samples.gif", "samples.png", "levels.png", "pyramid.png")


def add_parser(sub):
    p = sub.add_parser(
        "demo", help="generate digit videos with a bundled Moving MNIST model (offline)",
        description="Load a pretrained HPDM that ships with the package (Moving MNIST, "
        "16x64x64: class-conditional, or with --prompt the text-conditional one), generate "
        "one video per requested digit or prompt level by level and tile by tile, and write "
        "MP4 + GIF + PNG sheets of the frames and of the generated patch pyramid into the "
        "--out folder.",
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--class", dest="classes", type=non_negative_int, nargs="+",
                      metavar="DIGIT", help="digits (default: 0 3 5 7)")
    what.add_argument("--prompt", nargs="+", metavar="TEXT",
                      help="prompts for the text model (pretrained:moving_mnist_text): a "
                           "digit, a direction and a speed in words, e.g. \"the digit 7 "
                           "moving up and to the right quickly\"")
    p.add_argument("--steps", type=positive_int, nargs="+",
                   help="sampling steps, level 0 or per level (default: the model's)")
    add_guidance_options(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    add_verbose(p, "level")
    p.set_defaults(func=run)
    return p


def run(args):
    from keras_hpdm.cli.generate import generate_and_save, generate_options

    refuse_overwrite(output_folder(args.out, OUTPUTS))
    name = "moving_mnist_text" if args.prompt else "moving_mnist"
    conditions = args.prompt or args.classes or [0, 3, 5, 7]
    options = argparse.Namespace(
        steps=args.steps, sampler=None, guidance=args.guidance,
        context_sigma=args.context_sigma, num_samples=None,
        overlap=list(DEFAULT_OVERLAP), tile_batch_size=32, seed=args.seed, no_ema=False,
        verbose=args.verbose, resolution=None, fps=8, out=args.out, save_pyramid=True)
    # Seconds, not the ~20 s a model takes to load: the file's config tells what it accepts.
    check_request(f"pretrained:{name}", conditions, **generate_options(options))

    import numpy as np

    from keras_hpdm.media import pyramid_sheet, save_png
    from keras_hpdm.pretrained import load_pretrained, model_card

    model = load_pretrained(name)
    card = model_card(name)
    spec = model.pyramid
    print(f"bundled model: {card['description']}\n  trained with: {card['command']} "
          f"({card['steps']} steps, {card['minutes']:.0f} min, final loss "
          f"{card['final_loss']:.3f})")
    scores = card.get("evaluation", {}).get("scores", {})
    if "class_accuracy" in scores:
        print(f"  judged by `keras-hpdm evaluate` (digit reader): requested "
              f"digit drawn in {scores['class_accuracy']:.0%} of videos, a digit visible in "
              f"{scores['persistence']:.0%} of frames")
    if "direction_accuracy" in scores:
        print(f"  judged by `keras-hpdm evaluate` on prompts worded unlike any training "
              f"caption: the named digit drawn in {scores['digit_accuracy']:.0%} of videos, "
              f"moving the named way in {scores['direction_accuracy']:.0%}")
    videos, canvases, seconds, outputs = generate_and_save(model, options, conditions)
    sheet = pyramid_sheet(videos[0], spec, spec.sample_offsets(args.seed))
    outputs["patch pyramid (what one training step sees)"] = save_png(
        os.path.join(args.out, "pyramid.png"), np.repeat(np.repeat(sheet, 3, 0), 3, 1))
    print(f"generated {'prompts' if args.prompt else 'digits'} {conditions}: "
          f"{videos.shape[0]} videos of "
          f"{videos.shape[1]}x{videos.shape[2]}x{videos.shape[3]} in {seconds:.1f} s")
    print_outputs(outputs)
    return 0
