"""`keras-hpdm train`: train an HPDM on a folder of videos or built-in data, with
checkpoints, resume and sample videos."""

import argparse
import contextlib
import inspect
import json
import math
import os
import shlex
import time

from keras_hpdm.cli.common import (
    RUN_FILES,
    CommandError,
    add_allow_download,
    add_verbose,
    download_setting,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_interval,
)

BACKBONES = ("rin", "unet")  # `keras_hpdm.backbones.BACKBONES`' keys, without importing Keras
OPTIMIZERS = ("adam", "lamb")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Settings a resumed run takes from the command line when given there (the others, and
# these when not given, come from the checkpoint).
RESUME_OVERRIDES = ("steps", "save_every", "sample_every", "sample_steps")
# Their defaults for a new run: parsed as None, so a resume can tell "not given" apart.
OVERRIDE_DEFAULTS = {"steps": 2000, "save_every": 500, "sample_every": 0, "sample_steps": 16}
# Taken from every command line: how to print, the download opt-in and whether this process
# is one of a multi-process run (never remembered).
PER_INVOCATION = ("verbose", "allow_download", "distributed")


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train a model on videos, images, shards or built-in data",
        description=__doc__.split("\n\n")[0].replace("\n", " ") + ". Every --save-every "
        "steps the whole model (weights, EMA, optimizer state) is written atomically to "
        "OUT/model.keras with OUT/training_state.json; --resume continues from there.",
        epilog="examples:\n"
        "  keras-hpdm train builtin:moving_mnist --labels auto --channels 1 --out runs/mnist\n"
        "  keras-hpdm train videos/ --patch-size 4 32 32 --levels 3 --preset small "
        "--out runs/mine\n"
        "  keras-hpdm train videos/ --labels captions.csv --out runs/t2v   # text-conditional\n"
        "  keras-hpdm train videos/ --images photos/ --image-fraction 0.5 --labels "
        "captions.csv \\\n      --out runs/t2v   # joint image + video training (paper: 1:1)\n"
        "  keras-hpdm train --resume --out runs/mine --steps 20000\n"
        "  KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:1234,host1:1234 "
        "KERAS_DISTRIBUTION_NUM_PROCESSES=2 \\\n"
        "      KERAS_DISTRIBUTION_PROCESS_ID=0 keras-hpdm train videos/ --distributed "
        "--batch-size 64 --out runs/big   # on every host, its own id\n"
        "  keras-hpdm train 'builtin:moving_mnist?num_frames=32&size=128&digit_size=56&"
        "speed=0.05' \\\n      --labels auto --init-from pretrained:moving_mnist --levels 4 "
        "--out runs/grown   # grown to twice the resolution",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="?",
                   help="video/image folder, media file, shard folder (`keras-hpdm prepare`) "
                        "or builtin:NAME (moving_mnist, moving_mnist_captions, mnist, bikes, "
                        "bigbuckbunny, carphone, "
                        "clips, images; options as a query: builtin:moving_mnist?num_digits=2)")
    p.add_argument("--out", required=True, help="checkpoint / run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its saved settings are reused; --steps "
                        "is the new total)")
    p.add_argument("--init-from", metavar="RUN_OR_KERAS",
                   help="start from this model (a run folder, a .keras file or "
                        "pretrained:NAME), grown to --levels when that is more than its "
                        "levels (`PatchDiffusionModel.grow`): its architecture, patch size, "
                        "channels and conditioning are kept (--preset, --backbone, "
                        "--backbone-option and --patch-size do not apply), and so is its "
                        "training objective unless --p-mean, --p-std, --level-noise-scale, "
                        "--level-loss-weights or --condition-dropout is given; the optimizer "
                        "starts fresh, and so does the EMA (--ema-half-life) for a model "
                        "that keeps none (exported, pretrained)")
    g = p.add_argument_group("pyramid and model")
    g.add_argument("--patch-size", type=positive_int, nargs=3, default=[4, 16, 16],
                   metavar=("F", "H", "W"), help="patch size (default: 4 16 16)")
    g.add_argument("--levels", type=positive_int, default=3,
                   help="pyramid levels; target = patch * 2**(levels-1) (default: 3)")
    g.add_argument("--no-pyramid-time", action="store_true",
                   help="pyramid over space only (the time axis stays at the patch length)")
    g.add_argument("--backbone", choices=BACKBONES, default="rin", help="default: rin")
    g.add_argument("--preset", default="tiny",
                   help="architecture preset: tiny, mini (rin only: the bundled Moving MNIST "
                        "model's), small, hpdm_s, hpdm_m, hpdm_l, t2v (default: tiny)")
    g.add_argument("--backbone-option", action="append", type=backbone_option,
                   metavar="KEY=VALUE",
                   help="override one argument of the preset's backbone config (repeatable; "
                        "VALUE is JSON, else text), e.g. --backbone-option num_latents=32")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="1 = grayscale, 3 = RGB (default: 3)")
    g.add_argument("--labels", default="none",
                   help="none, auto (the data's own: sub-folders, digit classes, labels in "
                        "shards) or a CSV/JSON file of class labels or captions (default: none)")
    g.add_argument("--text-encoder", default="minilm",
                   help="for captions: minilm (bundled), a local keras-hub preset directory, "
                        "or a keras-hub preset name or handle (downloads: needs "
                        "--allow-download; default: minilm)")
    g.add_argument("--condition-dropout", type=fraction, default=None,
                   help="condition dropout for classifier-free guidance (default: 0.1)")
    g.add_argument("--ema-half-life", type=positive_float, default=500.0,
                   help="EMA half-life in steps (default: 500)")
    g.add_argument("--p-mean", type=float, default=None,
                   help="mean of log(sigma) at level 0 in training (EDM: -1.2; higher trains "
                        "more at the high noise that decides the layout; default: -1.2)")
    g.add_argument("--p-std", type=positive_float, default=None,
                   help="std of log(sigma) in training (default: 1.2)")
    g.add_argument("--level-noise-scale", type=positive_float, default=None,
                   help="sigma multiplier per finer level (default: 2)")
    g.add_argument("--level-loss-weights", type=non_negative_float, nargs="+", metavar="W",
                   help="one loss weight per level, coarsest first (the loss is their "
                        "weighted mean; default: equal)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int,
                   help="total steps (default: 2000; with --resume: the run's)")
    g.add_argument("--batch-size", type=positive_int, default=8, help="default: 8")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="adam (AdamW, constant LR after --warmup) or lamb (the paper's LAMB "
                        "+ warm-up + cosine; default: adam)")
    g.add_argument("--lr", type=positive_float, default=2e-3,
                   help="(peak) learning rate (default: 2e-3)")
    g.add_argument("--warmup", type=non_negative_int, default=None,
                   help="linear learning-rate warm-up steps (default: 200 for lamb, "
                        "none for adam)")
    g.add_argument("--precision", choices=PRECISIONS, default="float32", help="default: float32")
    g.add_argument("--seed", type=non_negative_int, default=0, help="default: 0")
    g.add_argument("--distributed", action="store_true",
                   help="this process is one of a multi-process run (JAX or TensorFlow; "
                        "`keras_hpdm.distribute.initialize`): the cluster comes from "
                        "KERAS_DISTRIBUTION_JOB_ADDRESSES (host:port of every process, "
                        "process 0 first), KERAS_DISTRIBUTION_NUM_PROCESSES and "
                        "KERAS_DISTRIBUTION_PROCESS_ID, or TensorFlow's TF_CONFIG; "
                        "--batch-size is the global batch, each process reads its own "
                        "shard of the data, process 0 writes the checkpoints")
    g = p.add_argument_group("data")
    g.add_argument("--frame-stride", type=positive_int, default=1,
                   help="take every n-th source frame (default: 1)")
    g.add_argument("--flip", action="store_true", help="random horizontal flips")
    g.add_argument("--cache", action="store_true",
                   help="decode every video once and keep it in memory")
    g.add_argument("--clips-per-file", type=positive_int, default=1,
                   help="video files: cut this many clips from one decode of a file (decoding "
                        "is the cost of reading video files; 4 gives 2-3x the pyramids/s), "
                        "mixed with other files' clips (default: 1)")
    g.add_argument("--images", metavar="PATH_OR_BUILTIN",
                   help="images to train on alongside the videos, each as a still video (the "
                        "paper's joint image + video training): a folder or file of images, "
                        "shards prepared from images, or builtin:images / builtin:mnist")
    g.add_argument("--image-fraction", type=unit_interval,
                   help="with --images: the share of images in every batch, in [0, 1] "
                        "(default: 0.5, the paper's 1:1 for text-to-video)")
    g.add_argument("--image-labels",
                   help="with --images: their labels, as --labels (default: as --labels: "
                        "auto reads the images' own, a file may list both)")
    g = p.add_argument_group("checkpoints and samples")
    g.add_argument("--log-every", type=positive_int, default=100,
                   help="steps per progress bar / history entry (default: 100)")
    g.add_argument("--save-every", type=positive_int,
                   help="checkpoint every N steps, a multiple of --log-every (default: 500; "
                        "with --resume: the run's)")
    g.add_argument("--sample-every", type=non_negative_int,
                   help="write sample videos to OUT/samples every N steps (0: never; "
                        "default: 0; with --resume: the run's)")
    g.add_argument("--sample-steps", type=positive_int,
                   help="sampling steps at level 0 for those samples (default: 16; with "
                        "--resume: the run's)")
    add_verbose(g, "--log-every steps")
    add_allow_download(p)
    p.set_defaults(func=run)
    return p


def _check_args(args):
    if not args.resume and not args.data:
        raise CommandError("give the training data (a folder, file or builtin:NAME), or "
                           "--resume a run.")
    if not getattr(args, "images", None):
        given = [f"--{n.replace('_', '-')}" for n in ("image_fraction", "image_labels")
                 if getattr(args, n, None) is not None]
        if given:
            raise CommandError(f"{' and '.join(given)} only "
                               f"appl{'y' if len(given) > 1 else 'ies'} with --images.")
    weights = getattr(args, "level_loss_weights", None)
    if weights is not None and len(weights) != args.levels:
        raise CommandError(f"--level-loss-weights needs one weight per level ({args.levels}), "
                           f"got {len(weights)}.")
    if weights is not None and sum(weights) <= 0:
        raise CommandError("--level-loss-weights must not all be 0.")
    log_every = min(args.log_every, args.steps)
    for name in ("save_every", "sample_every"):
        value = getattr(args, name)
        if value and value % log_every and value >= args.steps:
            # Never due in this run (a short run clamps --log-every to --steps): round it
            # up rather than refuse; the last step is saved anyway.
            setattr(args, name, math.ceil(value / log_every) * log_every)
        elif value and value % log_every:
            raise CommandError(f"--{name.replace('_', '-')} ({value}) must be a multiple of "
                               f"--log-every ({log_every}).")
    return log_every


def _restore_args(args):
    """`--resume`: the checkpoint's saved settings, with `RESUME_OVERRIDES` from `args`."""
    from keras_hpdm.callbacks.training_checkpoint import read_training_state

    state = read_training_state(args.out)
    if state is None:
        raise CommandError(f"--resume: {args.out} holds no checkpoint (model.keras + "
                           "training_state.json).")
    saved = dict(state["args"])
    if args.data and args.data != saved["data"]:
        raise CommandError(f"--resume: the run was trained on {saved['data']!r}, not "
                           f"{args.data!r}.")
    if args.images and args.images != saved.get("images"):
        raise CommandError(f"--resume: the run was trained with --images "
                           f"{saved.get('images')!r}, not {args.images!r}.")
    for name in RESUME_OVERRIDES:
        if getattr(args, name) is not None:  # given on this command line
            saved[name] = getattr(args, name)
    for name in PER_INVOCATION:
        saved[name] = getattr(args, name)
    saved.update(out=args.out, resume=True, func=args.func, argv=args.argv)
    return type(args)(**saved), state


def backbone_option(text):
    """`KEY=VALUE` -> `(KEY, VALUE)`, VALUE parsed as JSON (numbers, lists, true/false,
    null), else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY an argument name, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def backbone_overrides(cls, options):
    """Checks `--backbone-option` keys against `cls`'s constructor arguments."""
    allowed = [n for n in inspect.signature(cls.__init__).parameters
               if n not in ("self", "pyramid", "kwargs", "channels", "num_classes",
                            "text_dim")]
    overrides = dict(options or [])
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise CommandError(f"--backbone-option: {cls.__name__} has no argument "
                           f"{', '.join(unknown)}; allowed: {', '.join(allowed)} (channels, "
                           "classes and text come from --channels / --labels).")
    return overrides


def build_model(args, num_classes, captions, text=None):
    """The model `args` describe. `text`: a `(encoder_spec, text_dim)` pair for training on
    text embeddings computed elsewhere (`scripts/gpu_train_moving_mnist.py --text-table`):
    the encoder is recorded in the model but built only when it encodes a prompt."""
    import keras_hpdm
    from keras_hpdm.backbones import BACKBONES as BACKBONE_CLASSES

    spec = keras_hpdm.PyramidSpec(tuple(args.patch_size), args.levels,
                                  pyramid_time=not args.no_pyramid_time)
    cls = BACKBONE_CLASSES[args.backbone]
    overrides = backbone_overrides(cls, getattr(args, "backbone_option", None))
    text_encoder = None
    overrides["channels"] = args.channels
    if num_classes:
        overrides["num_classes"] = num_classes
    if captions:
        text_encoder = keras_hpdm.conditioning.get_text_encoder(args.text_encoder)
        overrides["text_dim"] = text_encoder.embedding_dim
    if text is not None:
        text_encoder, overrides["text_dim"] = text
    try:
        backbone = cls.from_preset(args.preset, pyramid=spec, **overrides)
    except (TypeError, ValueError) as e:
        if not getattr(args, "backbone_option", None):
            raise
        raise CommandError(f"--backbone-option: {e}") from None
    model = keras_hpdm.PatchDiffusionModel(
        backbone, text_encoder=text_encoder, ema_half_life=args.ema_half_life,
        seed=args.seed, **objective_overrides(args))
    compile_model(model, args)
    return model


# The training objective's flags (parsed as None when not given): a new model takes
# `PatchDiffusionModel`'s defaults for those not given, a model continued with --init-from
# its own.
OBJECTIVE_FLAGS = ("condition_dropout", "p_mean", "p_std", "level_noise_scale",
                   "level_loss_weights")


def objective_overrides(args):
    """The objective flags given on the command line, as `PatchDiffusionModel` config."""
    given = {name: getattr(args, name, None) for name in OBJECTIVE_FLAGS}
    return {name: list(value) if isinstance(value, (list, tuple)) else value
            for name, value in given.items() if value is not None}


def compile_model(model, args):
    """Compiles with a fresh optimizer of `--optimizer`/`--lr`/`--warmup`."""
    import keras

    import keras_hpdm

    warmup = getattr(args, "warmup", None)
    if args.optimizer == "lamb":
        optimizer = keras_hpdm.hpdm_optimizer(
            args.steps, learning_rate=args.lr, warmup_steps=200 if warmup is None else warmup)
    elif warmup:
        # Keras' cosine with alpha=1 is flat after its warm-up: a constant rate, ramped in,
        # as a schedule that checkpoints save and load.
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0, warmup_target=args.lr, warmup_steps=warmup)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.01)
    else:
        optimizer = keras.optimizers.AdamW(args.lr, weight_decay=0.01)
    model.compile(optimizer=optimizer)


def init_model(args):
    """`--init-from`: the model, grown to `--levels`, compiled afresh; `args` take its
    pyramid's patch size and time axis and its channels (the data must match them)."""
    from keras_hpdm.cli.generate import load_checkpoint

    model = load_checkpoint(args.init_from)
    levels = model.pyramid.num_levels
    if args.levels < levels:
        raise CommandError(f"--init-from: the model has {levels} levels; --levels "
                           f"({args.levels}) must be at least that (more grows it).")
    if args.levels > levels:
        model = model.grow(args.levels)
    args.patch_size = list(model.pyramid.patch_size)
    args.no_pyramid_time = not model.pyramid.pyramid_time
    args.channels = model.backbone.channels
    overrides = objective_overrides(args)
    fresh_ema = not model.ema_weights and getattr(args, "ema_half_life", None) is not None
    if fresh_ema:  # a sampling copy (exported, pretrained) keeps none: averaging restarts
        overrides.update(ema_decay=None, ema_half_life=args.ema_half_life)
    if overrides:  # a model built with them, the trained weights copied over
        from keras_hpdm.models.growth import copy_weights

        trained = model
        model = type(model).from_config({**model.get_config(), **overrides})
        if fresh_ema:
            copy_weights(model.backbone.weights, trained.backbone.weights)
            copy_weights(model.ema_weights, model.backbone.trainable_weights)
        else:
            copy_weights(model.weights, trained.weights)
    compile_model(model, args)
    return model


def _labels(value):
    return {"none": None, "auto": True}.get(value, value)


def training_data(args, spec, done, batch_size=None, shard=None):
    """The run's batches: `pyramid_dataset`, or `mixed_pyramid_dataset` with `--images`;
    in a multi-process run, this process's `shard` at its share of the batch.

    A resumed run continues the data stream where the checkpoint left it (same seed, the
    examples already trained on skipped), so it sees what an uninterrupted run would.
    """
    import keras_hpdm

    batch_size = args.batch_size if batch_size is None else batch_size
    common = dict(frame_stride=args.frame_stride, flip=args.flip, labels=_labels(args.labels),
                  seed=args.seed, cache=args.cache, channels=args.channels,
                  start_example=done * batch_size, shard=shard,
                  clips_per_file=getattr(args, "clips_per_file", 1))  # older runs lack it
    images = getattr(args, "images", None)  # runs saved before --images lack it
    if not images:
        return keras_hpdm.data.pyramid_dataset(args.data, spec, batch_size, **common)
    image_labels = getattr(args, "image_labels", None)
    return keras_hpdm.data.mixed_pyramid_dataset(
        args.data, images, spec, batch_size,
        image_fraction=0.5 if args.image_fraction is None else args.image_fraction,
        image_labels=None if image_labels is None else _labels(image_labels), **common)


def _check_init_conditions(model, num_classes, captions, args):
    backbone = model.backbone
    if (backbone.num_classes or 0) != num_classes or bool(backbone.text_dim) != captions:
        has = (f"{num_classes} classes" if num_classes else "captions" if captions
               else "no labels")
        wants = (f"{backbone.num_classes} classes" if backbone.num_classes else
                 "captions" if backbone.text_dim else "no labels (unconditional)")
        raise CommandError(f"--init-from: the model was trained with {wants}; the data "
                           f"({args.data}, --labels {args.labels}) has {has}.")


def _sample_conditions(ds, captions, model):
    if model.backbone.num_classes:
        return list(range(min(4, model.backbone.num_classes))), None
    if captions:
        batch = next(iter(ds.take(1)))
        prompts = [t.decode() for t in batch["text"].numpy()[:2]]
        return prompts, None
    return None, 2


def _check_out(args):
    """A new run must not write over another run's checkpoint, nor a model it did not write."""
    from keras_hpdm.callbacks.training_checkpoint import read_training_state

    state = read_training_state(args.out)
    if state is not None:
        raise CommandError(f"{args.out} already holds a checkpoint (step {state['step']}): "
                           "pass --resume to continue it, or choose another --out.")
    existing = [n for n in RUN_FILES if os.path.exists(os.path.join(args.out, n))]
    if existing:
        raise CommandError(f"{args.out} already holds {', '.join(existing)} (not a complete "
                           "training checkpoint): choose another --out.")


def _join_run(args):
    """`--distributed`: joins the multi-process run (`keras_hpdm.distribute.initialize`);
    returns TensorFlow's strategy (else None) and (this process, processes)."""
    if not getattr(args, "distributed", False):
        return None, (0, 1)
    from keras_hpdm import distribute

    try:
        strategy = distribute.initialize()
    except ValueError as e:
        raise CommandError(f"--distributed: {e}") from None
    processes = distribute.process_count()
    if args.batch_size % processes:
        raise CommandError(f"--batch-size ({args.batch_size}) is the global batch: it must be "
                           f"a multiple of the number of processes ({processes}).")
    print(f"process {distribute.process_index()} of {processes}, global batch "
          f"{args.batch_size} ({args.batch_size // processes} per process)")
    return strategy, (distribute.process_index(), processes)


def run(args):
    with download_setting(args):
        return _train(args)


def _train(args):
    import keras

    import keras_hpdm
    from keras_hpdm.callbacks import (
        SampleVideos,
        StopAtStep,
        TrainingCheckpoint,
        load_training_checkpoint,
        read_training_state,
    )

    state = None
    if args.resume and args.init_from:
        raise CommandError("--resume continues a run from its own checkpoint; --init-from "
                           "starts a new one: give one of them.")
    if args.resume:
        args, state = _restore_args(args)
    else:
        _check_out(args)
        for name, default in OVERRIDE_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    log_every = _check_args(args)
    strategy, (process, processes) = _join_run(args)  # first: before any array is made
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)

    done = state["step"] if state else 0
    if done >= args.steps:
        print(f"{args.out} is at step {done} >= --steps {args.steps}: nothing to do.")
        return 0
    initial_epoch = state["epoch"] if state else 0
    # TensorFlow's multi-worker strategy owns the variables made in its scope.
    def scope():
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    with scope():
        model = load_training_checkpoint(args.out) if state else None  # before the data
        if model is None and getattr(args, "init_from", None):
            model = init_model(args)
    # Whole epochs of --log-every steps; StopAtStep cuts the last one short at --steps.
    epochs = initial_epoch + math.ceil((args.steps - done) / log_every)
    spec = keras_hpdm.PyramidSpec(tuple(args.patch_size), args.levels,
                                  pyramid_time=not args.no_pyramid_time)
    # This process's shard at its share of the batch (`distribute.distributed_dataset`).
    shard = (process, processes) if processes > 1 else None
    ds = training_data(args, spec, done, args.batch_size // processes, shard)
    captions = "text" in ds.element_spec
    num_classes = len(ds.class_names) if "label" in ds.element_spec else 0
    with scope():
        if model is None:
            model = build_model(args, num_classes, captions)
    train_ds = ds
    if strategy is not None:  # one pipeline per worker, split over its replicas
        train_ds = keras_hpdm.distribute.distributed_dataset(
            model, lambda batch_size, shard: training_data(args, spec, done, batch_size, shard),
            args.batch_size)
    elif not state:  # --init-from
        _check_init_conditions(model, num_classes, captions, args)
    backbone = model.backbone
    origin = (f"from {args.init_from}" if getattr(args, "init_from", None)
              else f"'{args.preset}'")
    print(f"{type(backbone).__name__} {origin}, {backbone.count_params():,} parameters, "
          f"{spec}, backend {keras.config.backend()}")
    images = getattr(args, "images", None)
    counts = (f"{ds.num_video_examples} videos + {ds.num_image_examples} images, images "
              f"{ds.image_fraction:g} of each batch" if images
              else f"{ds.num_examples} examples")
    print(f"data: {args.data}" + (f" + {images}" if images else "") + f" ({counts}"
          + (f", {num_classes} classes" if num_classes else "")
          + (", captions" if captions else "") + ")")

    command = "keras-hpdm " + shlex.join(args.argv)
    metadata = {"args": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
                "command": state["command"] if state else command,
                "resumed": (state.get("resumed", []) + [command]) if state else [],
                "backend": keras.config.backend(), "version": keras_hpdm.__version__,
                "seconds": state["seconds"] if state else 0.0}
    checkpoint = TrainingCheckpoint(args.out, every_n_epochs=args.save_every // log_every,
                                    metadata=metadata, verbose=0,
                                    history=state["history"] if state else None)
    callbacks = [StopAtStep(args.steps, initial_step=done), checkpoint]
    if args.sample_every:
        conditions, num_samples = _sample_conditions(ds, captions, model)
        callbacks.append(SampleVideos(os.path.join(args.out, "samples"),
                                      every_n_epochs=args.sample_every // log_every,
                                      conditions=conditions, num_samples=num_samples,
                                      num_steps=args.sample_steps, seed=args.seed))
    start = time.time()
    history = model.fit(train_ds, steps_per_epoch=log_every, epochs=epochs,
                        initial_epoch=initial_epoch, callbacks=callbacks,
                        verbose=args.verbose, shuffle=False)  # the dataset shuffles
    if checkpoint.stopped_reason:
        raise CommandError(f"{checkpoint.stopped_reason} (in {args.out}); try a lower --lr.")
    if process:
        print(f"process {process} of {processes}: trained to step {args.steps} in "
              f"{time.time() - start:.0f} s (process 0 writes {args.out})")
        return 0
    losses = history.history.get("loss", [])
    final = read_training_state(args.out)
    print(f"trained steps {done}..{final['step']} in "
          f"{time.time() - start:.0f} s" + (f", final loss {losses[-1]:.4f}" if losses else ""))
    print(f"checkpoint: {os.path.abspath(checkpoint.model_path)}")
    if args.sample_every:
        print(f"samples: {os.path.abspath(os.path.join(args.out, 'samples'))}")
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(final["history"], f, indent=1)
    return 0
