"""The Keras tools people reach for: `summary()` and learning-rate schedules with
`hpdm_optimizer` (TensorBoard: tests/test_model_training.py, on a fit it runs anyway)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.optimizers import LinearWarmup

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)  # target size (4, 16, 16)
WARMUP = 2
DECAY = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=1, decay_rate=0.5)


def expected_rate(step):
    return min(1.0, step / WARMUP) * 1e-2 * 0.5**step


def capture_summary(model):
    """The summary's text, its whitespace (table borders aside) collapsed: wrapping-proof."""
    lines = []
    model.summary(print_fn=lines.append)
    return " ".join("\n".join(lines).split())


@pytest.fixture(scope="module")
def tiny():
    """A fresh backbone's summary (which builds it), and a compiled model around it."""
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC)
    assert not backbone.built  # from_preset builds nothing: summary() does
    backbone_summary = capture_summary(backbone)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=0)
    model.compile(optimizer=keras_hpdm.hpdm_optimizer(100, learning_rate=DECAY,
                                                      warmup_steps=WARMUP))
    return model, backbone_summary


def test_user_schedule_reaches_the_optimizer():
    optimizer = keras_hpdm.hpdm_optimizer(100, learning_rate=DECAY, warmup_steps=WARMUP,
                                          weight_decay=0.0)
    variable = keras.Variable(np.ones(3, "float32"))
    gradient = ops.convert_to_tensor(np.array([1.0, -1.0, 0.5], "float32"))
    optimizer.build([variable])
    rates, values = [], []
    for step in range(3):
        assert int(ops.convert_to_numpy(optimizer.iterations)) == step
        rates.append(float(ops.convert_to_numpy(optimizer.learning_rate)))
        optimizer.apply_gradients([(gradient, variable)])
        values.append(np.array(ops.convert_to_numpy(variable.value)))
    np.testing.assert_allclose(rates, [expected_rate(k) for k in range(3)], rtol=1e-6)
    # The update used those rates: the warm-up's 0 at step 0 moved nothing, step 1 did.
    np.testing.assert_array_equal(values[0], np.ones(3))
    assert not np.array_equal(values[1], values[0])


def test_rate_setting_callback_fails_up_front_naming_the_fix(tiny):
    model, _ = tiny
    batch = {"patches": np.zeros((2, 2) + SPEC.patch_size + (3,), "float32"),
             "coords": np.tile(np.array([0, 0, 0, 1, 1, 1], "float32"), (2, 2, 1))}
    for callback in (keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate),
                     keras.callbacks.ReduceLROnPlateau()):
        name = type(callback).__name__
        with pytest.raises(ValueError, match=rf"`{name}`.*learning_rate=schedule"):
            model.fit(batch, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 0  # nothing ran


def test_schedule_options_and_saving():
    optimizer = keras_hpdm.hpdm_optimizer(100, learning_rate=DECAY, warmup_steps=WARMUP)
    restored = keras.optimizers.Lamb.from_config(optimizer.get_config())
    schedule = restored._learning_rate
    assert isinstance(schedule, LinearWarmup)
    for step in (0, 1, 5):
        np.testing.assert_allclose(float(ops.convert_to_numpy(schedule(step))),
                                   expected_rate(step), rtol=1e-6)
    # No warm-up: the user's schedule as it is; a function of the step works too.
    assert keras_hpdm.hpdm_optimizer(100, learning_rate=DECAY, warmup_steps=0)._learning_rate \
        is DECAY
    function = keras_hpdm.hpdm_optimizer(100, learning_rate=lambda step: 1e-3 + 0 * step,
                                         warmup_steps=4)._learning_rate
    np.testing.assert_allclose(float(ops.convert_to_numpy(function(2))), 5e-4, rtol=1e-6)
    with pytest.raises(ValueError, match="final_learning_rate_fraction"):
        keras_hpdm.hpdm_optimizer(100, learning_rate=DECAY, final_learning_rate_fraction=0.1)
    with pytest.raises(TypeError, match="schedule"):
        LinearWarmup(0.1, 10)


def test_backbone_summary_shows_built_shapes_and_parameters(tiny):
    model, text = tiny
    backbone = model.backbone
    assert "unbuilt" not in text and "?" not in text, text
    assert f"Total params: {backbone.count_params():,}" in text
    assert f"{backbone.tokenizer.count_params():,}" in text
    assert "(2, 2, 2, 2, 32)" in text  # the tokens of one pyramid's 2 levels (batch 1)
    assert "Output shapes: for one pyramid (batch 1)" in text


def test_model_summary_names_the_ema_copy(tiny):
    model, _ = tiny
    text = capture_summary(model)
    ema = sum(int(np.prod(w.shape)) for w in model.ema_weights)
    assert ema == model.backbone.count_params()
    assert f"Non-trainable params: {ema + 1:,}" in text
    assert (f"EMA copy of the backbone's trainable weights (`ema_weights`, decay 0.999; "
            f"`generate` samples with it): {ema:,}") in text
    assert "EMA step counter (`ema_step`): 1" in text
    assert "patches (B, 2, 2, 8, 8, 3)" in text
