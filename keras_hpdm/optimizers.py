"""The paper's optimisation recipe as a helper (any Keras optimizer works too)."""

import keras


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
    if total_steps < 1:
        raise ValueError(f"`total_steps` must be >= 1, got {total_steps}.")
    warmup = min(int(warmup_steps), total_steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(total_steps - warmup, 1),
        alpha=final_learning_rate_fraction,
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.Lamb(learning_rate=schedule, beta_1=beta_1, beta_2=beta_2,
                                 weight_decay=weight_decay, clipnorm=clipnorm)
