"""`PatchDiffusionModel.grow`: more pyramid levels, the trained levels unchanged."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_hpdm
from keras_hpdm.backbones import RINBackbone, UNet3DBackbone
from keras_hpdm.models.growth import grown_levels_per_block
from tests.markers import one_pass_only

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)


def trained_looking_model(cls=RINBackbone, **kwargs):
    """A tiny model whose EMA weights differ from its live ones (as after training), so a
    grow that lost the EMA copy would sample differently."""
    keras.utils.set_random_seed(0)
    backbone = cls.from_preset("tiny", pyramid=SPEC, num_classes=3)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=0, **kwargs)
    rng = np.random.default_rng(0)
    for ema in model.ema_weights:
        ema.assign(ops.convert_to_numpy(ema.value) + rng.normal(0, 0.05, ema.shape))
    model.ema_step.assign(7.0)
    return model


def state(variables):
    return [np.asarray(ops.convert_to_numpy(v.value)) for v in variables]


def test_grown_model_generates_the_old_levels_exactly():
    """Right after growing, the old level count gives the old model's videos (same seed);
    the 2-block tiny schedule (1, 2) becomes (1, 3), where "linear" would give (2, 3)."""
    model = trained_looking_model()
    grown = model.grow(3)
    assert grown.pyramid.num_levels == 3 and grown.pyramid.target_size == (8, 32, 32)
    assert grown.pyramid.patch_size == SPEC.patch_size
    assert model.backbone.levels_per_block == (1, 2)
    assert grown.backbone.levels_per_block == (1, 3)
    kwargs = dict(num_steps=3, seed=1, verbose=0)
    old = model.generate([0, 2], **kwargs)
    np.testing.assert_array_equal(grown.generate([0, 2], num_levels=2, **kwargs), old)
    assert grown.generate([0, 2], **kwargs).shape == (2, 8, 32, 32, 3)
    for got, want in ((grown.backbone.weights, model.backbone.weights),
                      (grown.ema_weights, model.ema_weights)):
        for a, b in zip(state(got), state(want), strict=True):
            np.testing.assert_array_equal(a, b)
    assert float(ops.convert_to_numpy(grown.ema_step)) == 7.0
    assert grown is not model and model.pyramid.num_levels == 2  # the original is untouched


def test_grown_model_fits_saves_and_loads(tmp_path):
    model = trained_looking_model(sampling={"num_steps": [12, 6]}, level_loss_weights=[1, 3])
    grown = model.grow(3)
    assert grown.sampling["num_steps"] == [12, 6, 4]  # halved for the new level (min 4)
    assert grown.loss_fn.level_weights == (1.0, 3.0, 3.0)  # as the finest level's
    spec = grown.pyramid
    videos = np.random.default_rng(0).uniform(-1, 1, (4,) + spec.target_size + (3,))
    pyramids = [spec.sample(v.astype("float32"), seed=i) for i, v in enumerate(videos)]
    batch = {"patches": np.stack([p["patches"] for p in pyramids]),
             "coords": np.stack([p["coords"] for p in pyramids]),
             "label": np.array([0, 1, 2, 0], "int32")}
    grown.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = grown.fit(batch, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert "loss_level_2" in history.history
    path = str(tmp_path / "grown.keras")
    grown.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == grown.get_config()
    for a, b in zip(state(loaded.weights), state(grown.weights), strict=True):
        np.testing.assert_array_equal(a, b)


def test_grown_unet_keeps_its_weights_and_levels():
    """The UNet grows the same way (weights shared by every level, schedule kept)."""
    model = trained_looking_model(UNet3DBackbone)
    grown = model.grow(3)
    assert [min(n, 2) for n in grown.backbone.levels_per_block] == list(
        model.backbone.levels_per_block)
    for a, b in zip(state(grown.backbone.weights), state(model.backbone.weights), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_growth_is_a_clear_error():
    model = trained_looking_model()
    with pytest.raises(ValueError, match="more than the model's 2 levels"):
        model.grow(2)
    with pytest.raises(ValueError, match="`num_levels` must be an integer >= 1"):
        model.grow(2.5)
    with pytest.raises(ValueError, match=r"moves existing levels to other blocks \(blocks \[0\]"):
        model.grow(3, levels_per_block=[2, 3])  # level 1 would join block 0
    with pytest.raises(ValueError, match="one entry per block"):
        model.grow(3, levels_per_block=[3])
    with pytest.raises(ValueError, match="last block must run all 3 levels"):
        model.grow(3, levels_per_block=[1, 2])  # the new level would run in no block


def test_grown_schedule_rule():
    """Blocks that ran every old level may take new ones; the others keep their count."""
    assert grown_levels_per_block((1, 1, 2, 2, 3, 3), 3, 4) == (1, 1, 2, 2, 4, 4)
    assert grown_levels_per_block((1, 2, 3), 3, 4, [1, 2, 4]) == (1, 2, 4)
    with pytest.raises(ValueError, match="blocks \\[1\\]"):
        grown_levels_per_block((1, 2, 3), 3, 4, [1, 3, 4])


@one_pass_only
def test_moving_mnist_at_twice_the_resolution_is_the_same_videos():
    """`moving_mnist` at 2x size, digit size and frames and half the speed draws the same
    videos (a grown model's fine-tuning data): box-averaged by 2 in space, every other
    frame, they match the 1x videos of the same seed far closer than another seed's."""
    from keras_hpdm.data.moving_mnist import mnist_digits, moving_mnist, resize_glyphs

    small, labels = moving_mnist(48, num_frames=16, size=64, seed=3)
    large, large_labels = moving_mnist(48, num_frames=32, size=128, seed=3, digit_size=56,
                                       speed=0.05)
    assert large.shape == (48, 32, 128, 128, 1) and large.dtype == np.uint8
    np.testing.assert_array_equal(large_labels, labels)
    down = large[:, ::2].astype(np.float32).reshape(48, 16, 64, 2, 64, 2, 1).mean((3, 5))
    same = np.abs(down - small).mean()
    other = np.abs(down - moving_mnist(48, num_frames=16, size=64, seed=4)[0]).mean()
    assert same < 0.25 * other, (same, other)  # measured: 1.8 against 11.8
    # The enlarged glyphs, box-averaged back, are the digits (rounding and edge smoothing).
    digits = mnist_digits()[0][:100]
    back = resize_glyphs(digits, 56).astype(np.float32).reshape(100, 28, 2, 28, 2).mean((2, 4))
    error = np.abs(back - digits).mean()
    assert error < 0.2 * np.abs(back - np.roll(digits, 1, axis=0)).mean(), error
    assert resize_glyphs(digits, 28) is digits
    for bad, name in (({"digit_size": 20}, "digit_size"), ({"digit_size": 70}, "size"),
                      ({"speed": 0.0}, "speed"), ({"speed": 1.5}, "speed")):
        with pytest.raises(ValueError, match=f"`{name}` must be"):
            moving_mnist(2, size=64, **bad)
