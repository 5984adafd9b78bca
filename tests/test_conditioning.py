"""Conditions reach the network at a useful scale, and a trained model obeys its class."""

import keras
import numpy as np
import pytest

import keras_hpdm
from keras_hpdm.backbones import RINBackbone, UNet3DBackbone
from keras_hpdm.models import generation

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)


def relative_spread(vectors):
    """Mean distance of per-condition vectors `(n, d)` to their mean, over the mean norm."""
    centred = vectors - vectors.mean(0)
    return np.linalg.norm(centred, axis=-1).mean() / np.linalg.norm(vectors, axis=-1).mean()


@pytest.mark.parametrize("backbone_cls", [RINBackbone, UNet3DBackbone])
def test_class_and_text_move_the_condition_like_the_noise_level(backbone_cls):
    """At initialisation, changing the class (or the text) moves the conditioning vector
    by a large fraction of its norm: at least half as much as changing the noise level
    over its training range. (Added after the sigma MLP, a class moved it by ~1%.)"""
    backbone = backbone_cls.from_preset("tiny", pyramid=SPEC, num_classes=10, text_dim=12)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(1, 5, 12)).astype("float32")

    def cond(sigma, label, text):
        sigma = np.full((len(label), SPEC.num_levels), sigma, "float32")
        out = backbone.condition_vectors(sigma, np.asarray(label, "int32"), text)
        return keras.ops.convert_to_numpy(out)[:, 0]

    by_class = cond(0.5, np.arange(10), np.repeat(text, 10, 0))
    by_sigma = np.concatenate([cond(s, [0], text) for s in np.exp(np.linspace(-3, 1.5, 10))])
    by_text = cond(0.5, np.zeros(10), rng.normal(size=(10, 5, 12)).astype("float32"))
    noise_spread = relative_spread(by_sigma)
    assert relative_spread(by_class) > 0.5 * noise_spread, (by_class, noise_spread)
    assert relative_spread(by_text) > 0.2 * noise_spread
    # The null label (condition dropout) is a condition of its own.
    null = cond(0.5, [backbone.null_label], text)
    assert np.linalg.norm(null - by_class[0]) > 0.2 * np.linalg.norm(by_class[0])


def test_rin_gives_the_class_a_latent_token_of_its_own():
    """The class also enters RIN as its own (layer-normalised) latent token, so it keeps
    its weight whatever scale the noise embedding grows to."""
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=4)
    backbone.build()
    embeddings = keras.ops.convert_to_numpy(backbone.class_token.embedding.embeddings)
    assert embeddings.shape == (5, backbone.latent_dim)
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 8, 8, 3)).astype("float32")
    coords = np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(0))])
    inputs = {"patches": x, "sigma": np.full((1, 2), 0.5, "float32"), "coords": coords}
    outs = [keras.ops.convert_to_numpy(backbone({**inputs, "label": np.array([c])}))
            for c in (0, 1)]
    # Zeroing the class token's embeddings removes part of the class's effect.
    backbone.class_token.embedding.embeddings.assign(np.zeros_like(embeddings))
    without = [keras.ops.convert_to_numpy(backbone({**inputs, "label": np.array([c])}))
               for c in (0, 1)]
    assert np.abs(outs[0] - outs[1]).mean() > np.abs(without[0] - without[1]).mean() > 0


def two_class_toy(num, seed):
    """Class 0: bright top half, dark bottom half; class 1: the reverse (+ a little noise)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, num)
    f, h, w = SPEC.target_size
    top = np.where(labels[:, None, None, None] == 0, 0.8, -0.8)
    videos = np.concatenate([np.broadcast_to(top, (num, f, h // 2, w)),
                             np.broadcast_to(-top, (num, f, h // 2, w))], axis=2)
    videos = videos + 0.05 * rng.normal(size=videos.shape)
    pyramids = [SPEC.sample(v[..., None].astype("float32"), seed=seed * 1000 + i)
                for i, v in enumerate(videos)]
    return {
        "patches": np.stack([p["patches"] for p in pyramids]).astype("float32"),
        "coords": np.stack([p["coords"] for p in pyramids]),
        "label": labels.astype("int32"),
    }


def test_trained_model_draws_what_its_class_asks(single_thread_torch):
    """A tiny model trained a few hundred steps on a toy whose class decides the content
    (bright top vs bright bottom) generates the right content for each class, on every
    backend. The class only matters where noise hides the content, so training noise is
    centred higher than EDM's default (`p_mean=0.5`). Measured: at the default noise the
    classes separated only after 550-650 steps (later on torch), with or without adaptive
    norms; at `p_mean=0.5`, by 256 steps on every backend."""
    keras.utils.set_random_seed(0)
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=2, channels=1)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=0, ema_half_life=50, p_mean=0.5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(two_class_toy(512, seed=1), batch_size=32, epochs=20, verbose=0)  # 320 steps
    videos = model.generate([0, 0, 0, 1, 1, 1], num_steps=16, seed=0, verbose=0)
    gray = videos[..., 0].astype(np.float32)
    half = SPEC.target_size[1] // 2
    top_minus_bottom = gray[:, :, :half].mean((1, 2, 3)) - gray[:, :, half:].mean((1, 2, 3))
    assert np.all(top_minus_bottom[:3] > 60), top_minus_bottom  # class 0: bright top
    assert np.all(top_minus_bottom[3:] < -60), top_minus_bottom  # class 1: bright bottom


def test_default_churn_scales_with_the_step_count(monkeypatch):
    """`S_churn="auto"` keeps EDM's churn per step (40 over 256 steps) at any step count,
    instead of saturating it at low step counts."""
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=0)
    assert model.sampling["S_churn"] == "auto"
    seen = []

    def recording_sample(denoise_fn, x, sigmas, method="euler", **kwargs):
        seen.append((len(sigmas) - 1, method, kwargs.get("S_churn")))
        return x

    monkeypatch.setattr(generation, "sample", recording_sample)
    model.generate(num_steps=(24, 8), sampler="stochastic", seed=0, verbose=0)
    assert seen == [(24, "stochastic", 24 * 40 / 256), (8, "stochastic", 8 * 40 / 256)]
    fixed = keras_hpdm.PatchDiffusionModel(backbone, sampling={"S_churn": 5.0})
    seen.clear()
    fixed.generate(num_steps=(24, 8), sampler="stochastic", seed=0, verbose=0)
    assert [churn for _, _, churn in seen] == [5.0, 5.0]
    with pytest.raises(ValueError, match="S_churn"):
        keras_hpdm.PatchDiffusionModel(backbone, sampling={"S_churn": "lots"})
