"""`keras-hpdm generate`: sample videos from a checkpoint (or the bundled model)."""

import os
import time

from keras_hpdm.cli.common import (
    CommandError,
    add_allow_download,
    checkpoint_inputs,
    download_setting,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    print_outputs,
    refuse_overwrite,
)

SAMPLERS = ("euler", "heun", "stochastic")


def add_parser(sub):
    p = sub.add_parser(
        "generate", help="generate videos from a trained model",
        description="Generate videos from a checkpoint, level by level and tile by tile, and "
        "write them as MP4 + GIF (all samples side by side) and a PNG sheet of frames.",
        epilog="examples:\n"
        "  keras-hpdm generate pretrained:moving_mnist --class 3 7 --out outputs/digits\n"
        "  keras-hpdm generate runs/t2v --prompt 'a red ball' --guidance 2 --num-samples 2\n"
        "  keras-hpdm generate runs/mine/model.keras --steps 32 16 8 --seed 1",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint",
                   help="a .keras file, a `keras-hpdm train` run folder, or "
                        "pretrained:NAME (bundled: moving_mnist)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class", dest="classes", type=non_negative_int, nargs="+",
                      metavar="ID", help="class ids (class-conditional models)")
    cond.add_argument("--prompt", nargs="+", help="text prompts (text-conditional models)")
    p.add_argument("--num-samples", type=positive_int,
                   help="videos (per condition, when one condition is given; default 1)")
    p.add_argument("--steps", type=positive_int, nargs="+",
                   help="sampling steps: one number (level 0, halved per level) or one per "
                        "level (default: the model's)")
    p.add_argument("--guidance", type=positive_float, default=1.0,
                   help="classifier-free guidance scale (1 = none; default: 1)")
    p.add_argument("--sampler", choices=SAMPLERS, nargs="+",
                   help="one for all levels or one per level (default: stochastic at level "
                        "0, euler above)")
    p.add_argument("--resolution", metavar="FxHxW",
                   help="output size: the model's target (default) or a coarser pyramid "
                        "level's size")
    p.add_argument("--overlap", type=fraction, nargs=3, default=[0.5, 0.5, 0.0],
                   metavar=("F", "H", "W"), help="tile overlap per axis (default: 0.5 0.5 0)")
    p.add_argument("--tile-batch-size", type=positive_int, default=16,
                   help="tiles per network call: bounds memory (default: 16)")
    p.add_argument("--no-ema", action="store_true", help="sample with the live weights")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    p.add_argument("--out", default="outputs/generated",
                   help="output path without extension (default: %(default)s)")
    p.add_argument("--fps", type=positive_int, default=8, help="default: 8")
    p.add_argument("--save-pyramid", action="store_true",
                   help="also write OUT_levels.png: every generated level of sample 0")
    p.add_argument("--verbose", type=int, choices=(0, 1), default=1, help="progress bars")
    add_allow_download(p)
    p.set_defaults(func=run)
    return p


def load_checkpoint(path):
    """A `PatchDiffusionModel` from a .keras file, a run folder or `pretrained:NAME` (a
    damaged file raises a ValueError naming it)."""
    from keras_hpdm.callbacks import load_training_checkpoint
    from keras_hpdm.pretrained import load_pretrained

    if path.startswith("pretrained:"):
        return load_pretrained(path.split(":", 1)[1])
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise CommandError(f"checkpoint {path!r} does not exist (give a .keras file, a run "
                           "folder with model.keras, or pretrained:moving_mnist).")
    return load_training_checkpoint(path, compile=False)


def resolve_levels(spec, resolution):
    if resolution is None:
        return None
    try:
        size = tuple(int(v) for v in resolution.lower().split("x"))
    except ValueError:
        size = None
    sizes = [tuple(spec.level_size(level)) for level in range(spec.num_levels)]
    if size not in sizes:
        allowed = ", ".join("x".join(map(str, s)) for s in sizes)
        raise CommandError(f"--resolution must be one of this model's level sizes ({allowed}), "
                           f"got {resolution!r}.")
    return sizes.index(size) + 1


def generate_and_save(model, args, conditions):
    from keras_hpdm.media import levels_sheet, save_png, save_videos

    steps = args.steps[0] if args.steps and len(args.steps) == 1 else args.steps
    sampler = args.sampler[0] if args.sampler and len(args.sampler) == 1 else args.sampler
    start = time.time()
    videos, canvases = model.generate(
        conditions, num_samples=args.num_samples, num_steps=steps,
        guidance_scale=args.guidance, overlap=tuple(args.overlap),
        tile_batch_size=args.tile_batch_size, seed=args.seed, sampler=sampler,
        use_ema=not args.no_ema, verbose=args.verbose, return_pyramid=True,
        num_levels=resolve_levels(model.pyramid, args.resolution))
    seconds = time.time() - start
    outputs = {f"videos ({k})": v for k, v in
               save_videos(args.out, videos, fps=args.fps).items()}
    if getattr(args, "save_pyramid", False):
        outputs["generated pyramid"] = save_png(f"{args.out}_levels.png",
                                                levels_sheet(canvases))
    return videos, canvases, seconds, outputs


def output_files(args):
    files = [f"{args.out}.{ext}" for ext in ("mp4", "gif", "png")]
    return files + ([f"{args.out}_levels.png"] if getattr(args, "save_pyramid", False) else [])


def run(args):
    refuse_overwrite(output_files(args), checkpoint_inputs(args.checkpoint))
    with download_setting(args):
        model = load_checkpoint(args.checkpoint)
        conditions = args.classes if args.classes is not None else args.prompt
        videos, _, seconds, outputs = generate_and_save(model, args, conditions)
    print(f"generated {videos.shape[0]} video(s) of {videos.shape[1:4]} in {seconds:.1f} s")
    print_outputs(outputs)
    return 0
