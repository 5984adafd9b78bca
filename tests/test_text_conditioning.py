"""Text-conditional HPDM end to end: `fit` on caption strings (encoded in the pipeline by the
model's MiniLM encoder) and guided generation from prompts, on every backend."""

import functools
import types

import keras
import numpy as np
import pytest
from keras import ops

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.conditioning import MiniLMTextEncoder
from keras_hpdm.diffusion import per_sample_normal
from keras_hpdm.diffusion.seeding import derive_seed
from keras_hpdm.models import batch_checks
from keras_hpdm.models.generation import PyramidGenerator

SPEC = keras_hpdm.PyramidSpec((2, 8, 8), 2)
TOKENS = 8
DROPOUT = 0.5


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    encoder = MiniLMTextEncoder(sequence_length=TOKENS)
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1,
                                       text_dim=encoder.embedding_dim)
    model = keras_hpdm.PatchDiffusionModel(backbone, text_encoder=encoder, seed=0,
                                           condition_dropout=DROPOUT)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def encode(model, prompts):
    return np.asarray(model.text_encoder.encode(list(prompts))["embeddings"], np.float32)


def test_fit_on_caption_strings(model):
    """Each example's own caption embedding reaches the training batch. Video `i` is
    constant at a grey level that names it, so every row of a batch says which caption
    it must carry."""
    num_videos = 8
    levels = 20 * np.arange(num_videos) + 40  # uint8 grey level of video i
    videos = np.broadcast_to(levels[:, None, None, None, None].astype(np.uint8),
                             (num_videos, 4, 32, 32, 1))
    captions = np.array([f"the digit {d}" for d in (3, 8, 1, 4, 1, 5, 9, 2)])
    caption_embeddings = encode(model, captions)
    ds = keras_hpdm.data.pyramid_dataset((videos, captions), SPEC, 4, channels=1, seed=0)
    assert "text" in ds.element_spec
    # What `fit` trains on: the data set after `prepare_inputs` encoded the captions.
    seen = set()
    for batch in batch_checks.prepare_inputs(model, ds).take(2):
        assert "text" not in batch
        grey = (batch["patches"].numpy()[:, 0].mean(axis=(1, 2, 3, 4)) + 1.0) * 127.5
        ids = np.round((grey - 40) / 20).astype(int)
        np.testing.assert_allclose(grey, levels[ids], atol=0.5)
        np.testing.assert_allclose(batch["text_embeddings"].numpy(), caption_embeddings[ids],
                                   atol=1e-5)
        seen.update(ids.tolist())
    assert len(seen) == num_videos  # two batches of one shuffled epoch: every video
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_fit_on_captions_from_a_generator_and_a_py_dataset(model):
    """Python batches with raw `text` (e.g. captioned Moving MNIST made on the fly) are
    encoded as tf.data batches are: a generator and a threaded `PyDataset` train; a
    multiprocessing `PyDataset`, whose workers cannot hold the encoder, is refused with
    what to do."""
    _, captions, _ = keras_hpdm.data.captioned_moving_mnist(4, num_frames=2, size=32)
    rng = np.random.default_rng(0)
    batch = {"patches": rng.uniform(-1, 1, (4, 2, 2, 8, 8, 1)).astype("float32"),
             "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(i))
                                 for i in range(4)]).astype("float32"),
             "text": np.array(captions)}
    checked = next(batch_checks.prepare_inputs(model, (b for b in [batch])))
    np.testing.assert_allclose(numpy(checked[0]["text_embeddings"]), encode(model, captions),
                               atol=1e-5)
    assert "text" not in checked[0]
    history = model.fit((b for b in [batch, batch]), steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    class Batches(keras.utils.PyDataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return batch

    history = model.fit(Batches(workers=2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    wrapped = batch_checks.prepare_inputs(model, Batches(workers=2, use_multiprocessing=True))
    with pytest.raises(ValueError, match="text_embeddings"):
        wrapped[0]


def test_null_text_matches_training_dropout(model):
    """`_drop_conditions` (training) replaces a row's text by the guidance null (zeros of
    the encoder's length) at the configured rate and leaves the other rows alone; with
    classes and text, both conditions of a dropped row become the null ones together."""
    null = numpy(model.null_conditions(3)["text_embeddings"])
    assert null.shape == (3, TOKENS, model.backbone.text_dim) and not null.any()

    n = 1000
    rng = np.random.default_rng(0)
    text = rng.normal(size=(n, TOKENS, model.backbone.text_dim)).astype("float32")
    # Text and class conditioning together. `_drop_conditions` reads only the dropout rate,
    # the seed generator and the backbone's null label: a stand-in spares building a model.
    both = types.SimpleNamespace(
        condition_dropout=0.2, seed_generator=keras.random.SeedGenerator(1),
        backbone=types.SimpleNamespace(num_classes=3, null_label=3, text_dim=text.shape[-1]),
        null_conditions=lambda k: {"label": np.full(k, 3, "int32"),
                                   "text_embeddings": np.zeros((k,) + text.shape[1:])},
    )
    both._drop_conditions = functools.partial(keras_hpdm.PatchDiffusionModel._drop_conditions,
                                              both)
    labels = (np.arange(n) % 3).astype("int32")
    masks = []
    for m, conditions in ((model, {"text_embeddings": text}),
                          (both, {"text_embeddings": text, "label": labels})):
        out = {k: numpy(v) for k, v in m._drop_conditions(conditions, n).items()}
        nulls = m.null_conditions(n)
        is_null = np.all(out["text_embeddings"] == numpy(nulls["text_embeddings"])[0],
                         axis=(1, 2))
        # 5 standard deviations of a binomial proportion.
        p = m.condition_dropout
        assert abs(is_null.mean() - p) < 5 * np.sqrt(p * (1 - p) / n), is_null.mean()
        np.testing.assert_array_equal(out["text_embeddings"][~is_null], text[~is_null])
        masks.append(is_null)
        if "label" in conditions:
            null_label = numpy(nulls["label"])
            np.testing.assert_array_equal(out["label"][is_null], null_label[is_null])
            np.testing.assert_array_equal(out["label"][~is_null], labels[~is_null])
    # A second call draws a new mask (the seed generator advances).
    again = numpy(model._drop_conditions({"text_embeddings": text}, n)["text_embeddings"])
    assert np.any(~again.any(axis=(1, 2)) != masks[0])


def test_guided_generation_from_prompts(model):
    prompts = ["the digit 3", "the digit 8"]
    kw = dict(num_steps=(2, 2), seed=1, verbose=0, tile_batch_size=64)
    guided = model.generate(prompts, guidance_scale=2.0, **kw)
    assert guided.shape == (2,) + SPEC.target_size + (3,) and guided.dtype == np.uint8
    # Sample i depends on (seed, i, its prompt) only, not on the rest of the batch.
    alone = model.generate(prompts[:1], guidance_scale=2.0, **kw)
    np.testing.assert_allclose(alone[0].astype(int), guided[0].astype(int), atol=1)

    # Level 0 in one Euler step from sigma_max lands on the guided denoised estimate
    # u + w (c - u): the model's denoiser on the prompts' embeddings (c) and on zero text
    # of the encoder's length (u, as in training dropout), combined here.
    w, seed, sigma = 3.0, 5, model.sampling["sigma_max"]
    _, canvases = model.generate(prompts, guidance_scale=w, num_steps=1, num_levels=1,
                                 sampler="euler", seed=seed, verbose=0, use_ema=False,
                                 return_pyramid=True)
    x = per_sample_normal((2,) + SPEC.level_size(0) + (1,), derive_seed(seed, 0)) * sigma
    x = numpy(x)[:, None]
    coords = np.tile(np.array([[[1, 1, 1, 0, 0, 0]]], "float32"), (4, 1, 1))  # whole video
    text = np.concatenate([encode(model, prompts),
                           np.zeros((2, TOKENS, model.backbone.text_dim), "float32")])
    # Generation's compiled network function (these shapes reuse it).
    out = PyramidGenerator(model).network({
        "patches": np.concatenate([x, x]), "sigma": np.full((4, 1), sigma, "float32"),
        "coords": coords, "text_embeddings": text})
    c, u = np.split(np.asarray(out, np.float64)[:, 0], 2)
    assert np.abs(c - u).max() > 1e-2  # the check can see a wrong combination
    np.testing.assert_allclose(canvases[0], u + w * (c - u), atol=1e-4)
    with pytest.raises(ValueError, match="class"):
        model.generate([3], **kw)


@keras.saving.register_keras_serializable(package="tests")
class LoadCountingEncoder(keras_hpdm.conditioning.TextEncoder):
    """Like a keras-hub encoder: its width is known only once its weights are loaded."""

    loads = 0

    def __init__(self, width=16, **kwargs):
        super().__init__(**kwargs)
        self.width = width

    @property
    def embedding_dim(self):
        LoadCountingEncoder.loads += 1
        return self.width

    _pad_id = 0

    def _token_ids(self, prompt):
        return self._pack([len(prompt) % 7 + 1])

    def _forward(self, token_ids, mask):
        LoadCountingEncoder.loads += 1
        return np.ones(token_ids.shape + (self.width,), np.float32)

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def test_saving_loads_no_text_encoder_and_a_wrong_width_is_named(tmp_path):
    """Keras' saving walks every attribute of the model: the `text_encoder` property must
    not load the encoder there (a keras-hub preset would be read, or downloaded)."""
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, channels=1, text_dim=16)
    model = keras_hpdm.PatchDiffusionModel(backbone, text_encoder=LoadCountingEncoder(16))
    LoadCountingEncoder.loads = 0
    model.save(tmp_path / "text.keras")
    loaded = keras.saving.load_model(tmp_path / "text.keras")
    assert isinstance(loaded.text_encoder, LoadCountingEncoder)
    assert LoadCountingEncoder.loads == 0
    assert loaded.encode_text(["a", "bb"]).shape == (2, 64, 16)
    narrow = keras_hpdm.PatchDiffusionModel(backbone, text_encoder=LoadCountingEncoder(8))
    with pytest.raises(ValueError, match=r"embedding width \(8\).*`text_dim` \(16\)"):
        narrow.generate(["a prompt"], num_steps=1, verbose=0)
