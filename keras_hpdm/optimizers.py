"""The paper's optimisation recipe as a helper (any Keras optimizer works too)."""

import keras
from keras import ops

from keras_hpdm.checks import check_int, check_number

_Schedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="keras_hpdm")
class LinearWarmup(_Schedule):
    """A linear warm-up in front of any schedule: `min(1, step / warmup_steps) * schedule(step)`.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule`, or a function of the
            optimizer's step (an integer tensor: use `keras.ops`) returning the rate.
        warmup_steps: steps of the linear ramp from 0 (0: none, `schedule` as it is).

    Saved with the optimizer (a `LearningRateSchedule` saves and loads as Keras' own do; a
    plain function needs its own registration, see `keras.saving`).
    """

    def __init__(self, schedule, warmup_steps):
        if not callable(schedule):
            raise TypeError(
                "`schedule` must be a keras.optimizers.schedules.LearningRateSchedule or a "
                f"function of the step, got {schedule!r}."
            )
        self.schedule = schedule
        self.warmup_steps = check_int("warmup_steps", warmup_steps, low=0)

    def __call__(self, step):
        rate = ops.cast(self.schedule(step), "float32")
        if not self.warmup_steps:
            return rate
        ramp = ops.minimum(1.0, ops.cast(step, "float32") / float(self.warmup_steps))
        return rate * ramp

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def hpdm_optimizer(total_steps, learning_rate=5e-3, warmup_steps=10_000, weight_decay=0.01,
                   final_learning_rate_fraction=0.0, beta_1=0.9, beta_2=0.999,
                   clipnorm=None):
    """LAMB with linear warm-up and cosine decay (HPDM/RIN: max LR 5e-3, wd 0.01, 10k warm-up).

    Args:
        total_steps: training steps (warm-up included) over which the schedule runs.
        learning_rate: peak learning rate after warm-up (a number), or your own schedule:
            a `keras.optimizers.schedules.LearningRateSchedule` or a function of the step
            (an integer tensor: use `keras.ops`), which then replaces the cosine; the
            warm-up still ramps it in: the rate at step `k` is
            `min(1, k / warmup_steps) * learning_rate(k)`.
        warmup_steps: linear warm-up steps (capped at `total_steps // 2`; 0 for none).
        weight_decay: decoupled weight decay.
        final_learning_rate_fraction: the cosine's end value as a fraction of the peak
            (the built-in cosine only).
        beta_1, beta_2: LAMB moment decays (RIN: beta_2 0.999).
        clipnorm: optional global-norm gradient clipping.

    The learning rate follows a schedule, so Keras callbacks that set it
    (`LearningRateScheduler`, `ReduceLROnPlateau`) cannot be used with this optimizer
    (`PatchDiffusionModel.fit` says so before training): pass the schedule here instead,
    or compile with a constant rate, e.g. `keras.optimizers.Lamb(5e-3, weight_decay=0.01)`.

    Example:
    ```python
    model.compile(optimizer=keras_hpdm.hpdm_optimizer(total_steps=40_000))
    # Your own schedule after the warm-up: halve the rate every 10k steps.
    decay = keras.optimizers.schedules.ExponentialDecay(5e-3, 10_000, 0.5, staircase=True)
    model.compile(optimizer=keras_hpdm.hpdm_optimizer(40_000, learning_rate=decay))
    ```

    References:
        - [You et al., Large Batch Optimization for Deep Learning (LAMB), ICLR 2020](
          https://arxiv.org/abs/1904.00962)
    """
    total_steps = check_int("total_steps", total_steps, low=1)
    warmup = min(check_int("warmup_steps", warmup_steps, low=0), total_steps // 2)
    custom = callable(learning_rate)
    if not custom:
        learning_rate = check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    check_number("weight_decay", weight_decay, low=0.0)
    fraction = check_number("final_learning_rate_fraction", final_learning_rate_fraction,
                            low=0.0, high=1.0)
    if custom and fraction:
        raise ValueError(
            "`final_learning_rate_fraction` shapes the built-in cosine; with a `learning_rate` "
            "schedule, put the end value in the schedule."
        )
    for name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
        check_number(name, beta, low=0.0, high=1.0, high_open=True)
    check_number("clipnorm", clipnorm, low=0.0, low_open=True, allow_none=True)
    if custom:
        schedule = (learning_rate if isinstance(learning_rate, _Schedule) and not warmup
                    else LinearWarmup(learning_rate, warmup))
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            alpha=final_learning_rate_fraction,
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    return keras.optimizers.Lamb(learning_rate=schedule, beta_1=beta_1, beta_2=beta_2,
                                 weight_decay=weight_decay, clipnorm=clipnorm)


_RATE_SETTING_CALLBACKS = (keras.callbacks.LearningRateScheduler,
                           keras.callbacks.ReduceLROnPlateau)


def check_learning_rate_callbacks(optimizer, callbacks):
    """Raises a `ValueError` naming the fix when a callback would set the learning rate of
    an optimizer that follows a schedule (Keras' own error, raised at the first epoch, says
    to pass a float learning rate, which `hpdm_optimizer` turns into a schedule too)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, _Schedule):
        return
    callbacks = getattr(callbacks, "callbacks", callbacks) or ()  # a list or a CallbackList
    for callback in callbacks:
        if isinstance(callback, _RATE_SETTING_CALLBACKS):
            raise ValueError(
                f"`{type(callback).__name__}` sets the optimizer's learning rate, but the "
                f"optimizer follows a schedule ({type(schedule).__name__}; `hpdm_optimizer` "
                "always builds one), so its rate cannot be set. Give the schedule to the "
                "optimizer instead: `keras_hpdm.hpdm_optimizer(total_steps, "
                "learning_rate=schedule)` takes a keras.optimizers.schedules."
                "LearningRateSchedule or a function of the step (after its warm-up; "
                "`warmup_steps=0` for none); or keep the callback and compile with a "
                "constant rate, e.g. `keras.optimizers.Lamb(5e-3, weight_decay=0.01)`."
            )
