"""Growing a trained model to more pyramid levels (the paper's recipe for its large models:
train at low resolution, then add levels).

A backbone's weights do not depend on the number of levels (every level shares them), so a
grown model is the same network over a longer pyramid. What must be kept is *which blocks
run each existing level*: the `"linear"` schedule would move existing levels to other
blocks when levels are added, so the grown model gets an explicit schedule instead.
"""

import keras
import numpy as np
from keras import ops

from keras_hpdm.checks import check_int, is_integer, sequence_length
from keras_hpdm.pyramid import PyramidSpec


def grown_levels_per_block(schedule, old_levels, num_levels, levels_per_block=None):
    """The schedule of a model grown from `old_levels` to `num_levels` levels.

    Block b runs the first `schedule[b]` levels. Every existing level keeps exactly its
    blocks, so a block that ran fewer than all old levels runs the same levels; a block that
    ran all of them may also run new ones. By default the new levels join every block that
    ran all old levels (the last blocks); `levels_per_block` chooses otherwise and is
    checked against that rule.
    """
    if levels_per_block is None:
        return tuple(num_levels if n == old_levels else n for n in schedule)
    if sequence_length(levels_per_block) != len(schedule):
        raise ValueError(f"`levels_per_block` must have one entry per block ({len(schedule)}),"
                         f" got {levels_per_block!r}.")
    new = tuple(check_int(f"levels_per_block[{b}]", n, low=1, high=num_levels)
                for b, n in enumerate(levels_per_block))
    moved = [b for b, (n, m) in enumerate(zip(schedule, new, strict=True))
             if min(m, old_levels) != n]
    if moved:
        raise ValueError(
            f"`levels_per_block` {list(new)} moves existing levels to other blocks (blocks "
            f"{moved}); the trained schedule is {list(schedule)}: a block that ran fewer than "
            f"all {old_levels} levels must keep its count, one that ran all of them may run "
            f"{old_levels}..{num_levels}.")
    return new


def _extended(values, num_levels, new_value):
    values = list(values)
    while len(values) < num_levels:
        values.append(new_value(values[-1]))
    return values


def grow(model, num_levels, levels_per_block=None):
    """A new `PatchDiffusionModel` with `num_levels` pyramid levels (see
    `PatchDiffusionModel.grow`): same patch size, target size doubled per added level on
    the pyramided axes, every existing level on the blocks it ran before, backbone and EMA
    weights and the sampling settings copied (not compiled: compile it to train)."""
    spec = model.pyramid
    old_levels = spec.num_levels
    num_levels = check_int("num_levels", num_levels, low=1)
    if num_levels <= old_levels:
        raise ValueError(f"`num_levels` must be more than the model's {old_levels} levels to "
                         f"grow it, got {num_levels}.")
    new_spec = PyramidSpec(spec.patch_size, num_levels, pyramid_time=spec.pyramid_time)
    backbone = model.backbone
    schedule = grown_levels_per_block(backbone.levels_per_block, old_levels, num_levels,
                                      levels_per_block)
    config = model.get_config()
    config["backbone"] = keras.saving.serialize_keras_object(backbone)
    config["backbone"]["config"].update(pyramid=keras.saving.serialize_keras_object(new_spec),
                                        levels_per_block=list(schedule))
    sampling = dict(config["sampling"])
    if not is_integer(sampling["num_steps"]):  # one per level: halve for new levels
        sampling["num_steps"] = _extended(sampling["num_steps"], num_levels,
                                          lambda last: max(min(4, last), last // 2))
    config["sampling"] = sampling
    if config.get("level_loss_weights") is not None:  # new levels weigh as the finest
        config["level_loss_weights"] = _extended(config["level_loss_weights"], num_levels,
                                                 lambda last: last)
    grown = type(model).from_config(config)

    copy_weights(grown.backbone.weights + grown.ema_weights + [grown.ema_step],
                 backbone.weights + model.ema_weights + [model.ema_step])
    return grown


def copy_weights(targets, sources):
    """Assigns each source variable's value to its target (same architecture, same order)."""
    if len(targets) != len(sources):  # the same architecture: cannot happen
        raise RuntimeError(f"{len(targets)} target weights for {len(sources)} sources.")
    for target, source in zip(targets, sources, strict=True):
        target.assign(np.asarray(ops.convert_to_numpy(source.value)))
