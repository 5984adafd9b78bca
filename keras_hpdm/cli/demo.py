"""`keras-hpdm demo`: generate videos with the bundled pretrained model."""

import argparse
import os

from keras_hpdm.cli.common import non_negative_int, positive_int, print_outputs


def add_parser(sub):
    p = sub.add_parser(
        "demo", help="generate digit videos with the bundled Moving MNIST model (offline)",
        description="Load the pretrained HPDM that ships with the package (class-conditional "
        "Moving MNIST, 16x64x64), generate one video per requested digit level by level and "
        "tile by tile, and write MP4 + GIF + PNG sheets of the frames and of the generated "
        "patch pyramid.",
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--class", dest="classes", type=non_negative_int, nargs="+",
                   default=[0, 3, 5, 7], metavar="DIGIT", help="digits (default: 0 3 5 7)")
    p.add_argument("--steps", type=positive_int, nargs="+",
                   help="sampling steps, level 0 or per level (default: the model's)")
    p.add_argument("--guidance", type=float, default=1.5, help="guidance scale (default: 1.5)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    p.add_argument("--verbose", type=int, choices=(0, 1), default=1, help="progress bars")
    p.set_defaults(func=run)
    return p


def run(args):
    import numpy as np

    from keras_hpdm.cli.generate import generate_and_save
    from keras_hpdm.media import levels_sheet, pyramid_sheet, save_png
    from keras_hpdm.pretrained import load_pretrained, model_card

    model = load_pretrained("moving_mnist")
    card = model_card("moving_mnist")
    spec = model.pyramid
    print(f"bundled model: {card['description']}\n  trained with: {card['command']} "
          f"({card['steps']} steps, {card['minutes']:.0f} min, final loss "
          f"{card['final_loss']:.3f})")
    if "evaluation" in card:
        scores = card["evaluation"]["scores"]
        print(f"  judged by `keras-hpdm evaluate` (digit reader): requested "
              f"digit drawn in {scores['class_accuracy']:.0%} of videos, a digit visible in "
              f"{scores['persistence']:.0%} of frames")
    options = argparse.Namespace(
        steps=args.steps, sampler=None, guidance=args.guidance, num_samples=None,
        overlap=[0.5, 0.5, 0.0], tile_batch_size=32, seed=args.seed, no_ema=False,
        verbose=args.verbose, resolution=None, fps=8, out=os.path.join(args.out, "samples"),
        save_pyramid=False)
    videos, canvases, seconds, outputs = generate_and_save(model, options, args.classes)
    outputs["generated pyramid (levels of sample 0)"] = save_png(
        os.path.join(args.out, "levels.png"), levels_sheet(canvases))
    sheet = pyramid_sheet(videos[0], spec, spec.sample_offsets(args.seed))
    outputs["patch pyramid (what one training step sees)"] = save_png(
        os.path.join(args.out, "pyramid.png"), np.repeat(np.repeat(sheet, 3, 0), 3, 1))
    print(f"generated digits {args.classes}: {videos.shape[0]} videos of "
          f"{videos.shape[1]}x{videos.shape[2]}x{videos.shape[3]} in {seconds:.1f} s")
    print_outputs(outputs)
    return 0
