"""Text-conditional HPDM end to end: `fit` on caption strings (encoded in the pipeline by the
model's MiniLM encoder) and guided generation from prompts, on every backend."""

import keras
import numpy as np
import pytest

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.conditioning import MiniLMTextEncoder

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)
TOKENS = 8


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    encoder = MiniLMTextEncoder(sequence_length=TOKENS)
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1,
                                       text_dim=encoder.embedding_dim)
    model = keras_hpdm.PatchDiffusionModel(backbone, text_encoder=encoder, seed=0,
                                           condition_dropout=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_fit_on_caption_strings(model):
    videos, labels = keras_hpdm.data.moving_mnist(8, num_frames=4, size=32, seed=0)
    captions = np.array([f"the digit {int(d)}" for d in labels])
    ds = keras_hpdm.data.pyramid_dataset((videos, captions), SPEC, 4, channels=1, seed=0)
    assert "text" in ds.element_spec
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_null_text_matches_training_dropout(model):
    null = keras.ops.convert_to_numpy(model.null_conditions(3)["text_embeddings"])
    assert null.shape == (3, TOKENS, model.backbone.text_dim) and not null.any()


def test_guided_generation_from_prompts(model):
    prompts = ["the digit 3", "the digit 8"]
    kw = dict(num_steps=(2, 2), seed=1, verbose=0, tile_batch_size=64)
    guided = model.generate(prompts, guidance_scale=2.0, **kw)
    assert guided.shape == (2,) + SPEC.target_size + (3,) and guided.dtype == np.uint8
    plain = model.generate(prompts, guidance_scale=1.0, **kw)
    assert np.abs(guided.astype(int) - plain).max() > 0  # guidance changes the result
    # Sample i depends on (seed, i, its prompt) only, not on the rest of the batch.
    alone = model.generate(prompts[:1], guidance_scale=2.0, **kw)
    np.testing.assert_allclose(alone[0].astype(int), guided[0].astype(int), atol=1)
    with pytest.raises(ValueError, match="class"):
        model.generate([3], **kw)
