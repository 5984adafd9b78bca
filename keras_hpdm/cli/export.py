"""`keras-hpdm export`: a small sampling-only copy of a checkpoint, with a model card."""

import datetime
import json
import os
import platform

from keras_hpdm.checks import check_guidance_scales
from keras_hpdm.cli.common import (
    CommandError,
    add_guidance_options,
    check_plan,
    checkpoint_inputs,
    model_config,
    per_level,
    positive_int,
    print_outputs,
    refuse_overwrite,
)


def add_parser(sub):
    p = sub.add_parser(
        "export", help="write a sampling-only model (EMA weights, no optimizer state)",
        description="Write a sampling-only copy of a checkpoint: the EMA weights become the "
        "model's weights and the optimizer state and EMA copy are dropped (about a quarter "
        "of a training checkpoint's size). Beside it, OUT.json records how the run was "
        "trained (command, steps, time, final loss) when the checkpoint folder has a "
        "training_state.json.",
        epilog="example:\n  keras-hpdm export runs/mnist mnist_sampler.keras "
        "--description 'Moving MNIST, class-conditional'",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .keras file or a `keras-hpdm train` run folder")
    p.add_argument("output", help="output .keras file")
    p.add_argument("--live-weights", action="store_true",
                   help="export the live weights instead of the EMA weights")
    p.add_argument("--description", default="", help="one line for the model card")
    add_guidance_options(p, saved=True)
    p.add_argument("--steps", type=positive_int, nargs="+", metavar="N",
                   help="the sampling steps the exported model uses by default: level 0's "
                        "(halved per finer level) or one per level (saved as its "
                        "sampling[\"num_steps\"]; default: the checkpoint's)")
    p.set_defaults(func=run)
    return p


def sampling_copy(model, use_ema=True, guidance_scale=None, num_steps=None,
                  context_sigma=None):
    """A new `PatchDiffusionModel` with `model`'s (EMA) weights and no EMA of its own
    (sampling with `guidance_scale`, `num_steps` and `context_sigma` by default when
    given)."""
    from keras_hpdm.models import PatchDiffusionModel

    config = {**model.get_config(), "ema_decay": None, "ema_half_life": None}
    defaults = {"guidance_scale": guidance_scale, "num_steps": num_steps,
                "context_sigma": context_sigma}
    config["sampling"] = {**config["sampling"],
                          **{k: v for k, v in defaults.items() if v is not None}}
    copy = PatchDiffusionModel.from_config(config)
    swap = use_ema and bool(model.ema_weights)
    if swap:
        model.swap_ema_weights()
    try:
        for target, source in zip(copy.backbone.weights, model.backbone.weights, strict=True):
            target.assign(source)
    finally:
        if swap:
            model.swap_ema_weights()
    return copy


def model_card(checkpoint, description):
    from keras_hpdm.callbacks.training_checkpoint import read_training_state

    if checkpoint.startswith("pretrained:"):
        return None
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    state = read_training_state(folder or ".")
    beside = os.path.splitext(checkpoint)[0] + ".json"
    if state is None and checkpoint.endswith(".keras") and os.path.isfile(beside):
        # A card written beside the file (`scripts/gpu_train_moving_mnist.py`'s): kept.
        with open(beside) as f:
            card = json.load(f)
        return {**card, "description": description or card.get("description", ""),
                "exported": datetime.date.today().isoformat()}
    if state is None:
        return None
    history = state.get("history") or [{}]
    return {
        "description": description,
        "command": state.get("command"),
        "steps": state.get("step"),
        "minutes": round(state.get("seconds", 0.0) / 60, 1),
        "final_loss": history[-1].get("loss"),
        "backend": state.get("backend"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "exported": datetime.date.today().isoformat(),
        "history": [{k: round(v, 4) for k, v in h.items()} for h in history],
    }


def _write_atomically(path, write):
    """`write(tmp)` then a rename: a reader never sees a half-written file."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp{os.path.splitext(name)[1]}")
    write(tmp)
    os.replace(tmp, path)


def _write_card(path, card):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(card, f, indent=1)

    _write_atomically(path, write)


def run(args):
    from keras_hpdm.cli.generate import load_checkpoint

    if not args.output.endswith(".keras"):
        raise CommandError(f"output must end in .keras, got {args.output!r}.")
    card_path = os.path.splitext(args.output)[0] + ".json"
    refuse_overwrite([args.output, card_path], checkpoint_inputs(args.checkpoint))
    # Everything is read and checked before anything is written.
    card = model_card(args.checkpoint, args.description)
    steps, guidance_scale = per_level(args.steps), per_level(args.guidance)
    config = model_config(args.checkpoint)
    if config is not None:  # before the weights load
        check_plan(config, None, num_steps=steps)
        if guidance_scale is not None:
            check_guidance_scales(guidance_scale, config["backbone"]["pyramid"]["num_levels"],
                                  "--guidance")
    model = load_checkpoint(args.checkpoint)
    copy = sampling_copy(model, use_ema=not args.live_weights, guidance_scale=guidance_scale,
                         num_steps=steps, context_sigma=args.context_sigma)
    _write_atomically(args.output, copy.save)
    outputs = {"model": args.output}
    if card is not None:
        outputs["model card"] = card_path
        _write_card(card_path, card)
    size = os.path.getsize(args.output) / 1e6
    print(f"{copy.backbone.count_params():,} parameters, {size:.1f} MB")
    print_outputs(outputs)
    return 0
