"""`keras-hpdm generate`: sample videos from a checkpoint (or the bundled model)."""

import os
import time

from keras_hpdm.checks import SAMPLERS
from keras_hpdm.cli.common import (
    CommandError,
    add_allow_download,
    add_guidance_options,
    add_verbose,
    check_request,
    checkpoint_inputs,
    download_setting,
    fraction,
    level_sizes,
    non_negative_float,
    non_negative_int,
    output_folder,
    per_level,
    positive_int,
    print_outputs,
    refuse_overwrite,
    resolve_levels,
)
from keras_hpdm.models.generation_plan import (
    CONTEXT_CACHE_DTYPES,
    CONTEXT_PARENTS,
    DEFAULT_OVERLAP,
    DEFAULT_TILE_BATCH_SIZE,
)


def add_parser(sub):
    p = sub.add_parser(
        "generate", help="generate videos from a trained model",
        description="Generate videos from a checkpoint, level by level and tile by tile, and "
        "write them into the --out folder as samples.mp4 + samples.gif (all samples side by "
        "side) and samples.png (a sheet of frames). The conditions are checked against the "
        "model file before its weights are loaded.",
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
    add_guidance_options(p)
    p.add_argument("--sampler", choices=SAMPLERS, nargs="+",
                   help="one for all levels or one per level (default: stochastic at level "
                        "0, euler above)")
    p.add_argument("--resolution", metavar="FxHxW",
                   help="output size: the model's target (default) or a coarser pyramid "
                        "level's size")
    p.add_argument("--overlap", type=fraction, nargs=3, default=list(DEFAULT_OVERLAP),
                   metavar=("F", "H", "W"), help="tile overlap per axis (default: "
                   + " ".join(f"{v:g}" for v in DEFAULT_OVERLAP) + ")")
    p.add_argument("--tile-batch-size", type=positive_int, default=DEFAULT_TILE_BATCH_SIZE,
                   help="tiles per network call: bounds memory (default: %(default)s)")
    p.add_argument("--context-cache-mb", type=non_negative_float, metavar="MB",
                   help="cap the cached coarse-level context at MB MiB per level: tiles past "
                        "it recompute theirs at every step (slower, bounded memory; default: "
                        "no cap)")
    p.add_argument("--context-cache-dtype", choices=CONTEXT_CACHE_DTYPES, default="float32",
                   help="how the context cache stores features: bfloat16 halves it "
                        "(default: float32, exact)")
    p.add_argument("--context-parents", choices=CONTEXT_PARENTS, default="center",
                   help="where tiles' contexts are cut: center (the patch centring each "
                        "tile: best samples) or grid (the coarser level's tiles: shared, so "
                        "the context cache stays small at high resolution; default: center)")
    p.add_argument("--no-ema", action="store_true", help="sample with the live weights")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    p.add_argument("--out", default="outputs/generated",
                   help="output folder (default: %(default)s)")
    p.add_argument("--fps", type=positive_int, default=8, help="default: 8")
    p.add_argument("--save-pyramid", action="store_true",
                   help="also write OUT/levels.png: every generated level of sample 0")
    add_verbose(p, "level")
    add_allow_download(p)
    p.set_defaults(func=run)
    return p


def load_checkpoint(path):
    """A `PatchDiffusionModel` from a .keras file, a run folder or `pretrained:NAME` (a
    damaged file raises a ValueError naming it)."""
    if path.startswith("pretrained:"):
        from keras_hpdm.pretrained import load_pretrained

        return load_pretrained(path.split(":", 1)[1])
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise CommandError(f"checkpoint {path!r} does not exist (give a .keras file, a run "
                           "folder with model.keras, or pretrained:moving_mnist).")
    from keras_hpdm.callbacks import load_training_checkpoint

    return load_training_checkpoint(path, compile=False)


def generate_options(args):
    """`model.generate`'s keyword arguments from the command's options (all but the
    conditions and the levels, which `--resolution` gives)."""
    return dict(num_samples=args.num_samples, num_steps=per_level(args.steps),
                guidance_scale=per_level(args.guidance), context_sigma=args.context_sigma,
                overlap=tuple(args.overlap),
                tile_batch_size=args.tile_batch_size, seed=args.seed,
                sampler=per_level(args.sampler), use_ema=not args.no_ema,
                verbose=args.verbose, **_context_cache_options(args))


def _context_cache_options(args):
    """`--context-cache-mb` / `--context-cache-dtype` / `--context-parents` (generate's only) as
    `generate`'s."""
    megabytes = getattr(args, "context_cache_mb", None)
    return dict(context_cache_budget=None if megabytes is None else int(megabytes * 2**20),
                context_cache_dtype=getattr(args, "context_cache_dtype", "float32"),
                context_parents=getattr(args, "context_parents", "center"))


def generate_and_save(model, args, conditions):
    """Generates and writes `args.out`/samples.{mp4,gif,png} (and levels.png with
    `args.save_pyramid`); returns the videos, the generated levels, the seconds taken and
    `{what: path}` of the files written."""
    from keras_hpdm.media import levels_sheet, save_png, save_videos

    start = time.time()
    videos, canvases = model.generate(
        conditions, return_pyramid=True,
        num_levels=resolve_levels(level_sizes(model.pyramid), args.resolution),
        **generate_options(args))
    seconds = time.time() - start
    outputs = {f"videos ({k})": v for k, v in save_videos(
        os.path.join(args.out, "samples"), videos, fps=args.fps).items()}
    if getattr(args, "save_pyramid", False):
        outputs["generated pyramid (levels of sample 0)"] = save_png(
            os.path.join(args.out, "levels.png"), levels_sheet(canvases))
    return videos, canvases, seconds, outputs


def output_files(args):
    names = ["samples.mp4", "samples.gif", "samples.png"]
    return output_folder(args.out, names + (["levels.png"] if args.save_pyramid else []))


def run(args):
    conditions = args.classes if args.classes is not None else args.prompt
    refuse_overwrite(output_files(args), checkpoint_inputs(args.checkpoint))
    # Seconds, not the ~20 s a model takes to load: the file's config tells what it accepts.
    check_request(args.checkpoint, conditions, args.resolution, **generate_options(args))
    with download_setting(args):
        model = load_checkpoint(args.checkpoint)
        videos, _, seconds, outputs = generate_and_save(model, args, conditions)
    print(f"generated {videos.shape[0]} video(s) of {videos.shape[1:4]} in {seconds:.1f} s")
    print_outputs(outputs)
    return 0
