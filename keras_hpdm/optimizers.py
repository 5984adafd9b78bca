"""The paper's optimisation recipe as a helper (any Keras optimizer works too)."""

import keras

from keras_hpdm.pyramid import check_int, check_number


def hpdm_optimizer(total_steps, learning_rate=5e-3, warmup_steps=10_000, weight_decay=0.01,
                   final_learning_rate_fraction=0.0, beta_1=0.9, beta_2=0.999,
                   clipnorm=None):
    """LAMB with linear warm-up and cosine decay (HPDM/RIN: max LR 5e-3, wd 0.01, 10k warm-up).

    Args:
        total_steps: training steps (warm-up included) over which the schedule runs.
        learning_rate: peak learning rate after warm-up.
        warmup_steps: linear warm-up steps (capped at `total_steps // 2`).
        weight_decay: decoupled weight decay.
        final_learning_rate_fraction: the cosine's end value as a fraction of the peak.
        beta_1, beta_2: LAMB moment decays (RIN: beta_2 0.999).
        clipnorm: optional global-norm gradient clipping.

    Example:
    ```python
    model.compile(optimizer=keras_hpdm.hpdm_optimizer(total_steps=40_000))
    ```

    References:
        - [You et al., Large Batch Optimization for Deep Learning (LAMB), ICLR 2020](
          https://arxiv.org/abs/1904.00962)
    """
    total_steps = check_int("total_steps", total_steps, low=1)
    warmup = min(check_int("warmup_steps", warmup_steps, low=0), total_steps // 2)
    learning_rate = check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    check_number("weight_decay", weight_decay, low=0.0)
    check_number("final_learning_rate_fraction", final_learning_rate_fraction, low=0.0, high=1.0)
    for name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
        check_number(name, beta, low=0.0, high=1.0, high_open=True)
    check_number("clipnorm", clipnorm, low=0.0, low_open=True, allow_none=True)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(total_steps - warmup, 1),
        alpha=final_learning_rate_fraction,
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.Lamb(learning_rate=schedule, beta_1=beta_1, beta_2=beta_2,
                                 weight_decay=weight_decay, clipnorm=clipnorm)
