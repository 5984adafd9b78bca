"""`scripts/gpu_train_moving_mnist.py` cuts its batches (vectorised over the batch, for speed)
into exactly the pyramids `PyramidSpec` cuts; the README runs the script itself
(tests/test_docs.py)."""

import importlib.util
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_hpdm
from keras_hpdm.data.moving_mnist import moving_mnist
from tests.markers import one_pass_only

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train_moving_mnist.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_train_moving_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@one_pass_only
@pytest.mark.parametrize("patch_size, levels", [((4, 16, 16), 3), ((2, 16, 16), 2)])
def test_script_batches_are_the_pyramids_pyramid_spec_cuts(patch_size, levels):
    script = load_script()
    spec = keras_hpdm.PyramidSpec(patch_size, levels)
    seed, index, n = 3, 5, 6
    batch = script.pyramid_batch(spec, n, seed, index)
    videos, labels = moving_mnist(n, num_frames=spec.target_size[0], size=spec.target_size[1],
                                  seed=(seed * 1_000_003 + index) % 2**62)
    rng = np.random.default_rng((seed, index))
    for i in range(n):
        offsets = spec.offsets_from_uniform(rng.random((levels, 3)))
        expected = spec.extract(videos[i].astype(np.float32) / 127.5 - 1.0, offsets)
        np.testing.assert_allclose(batch["patches"][i], expected, atol=1e-5)
        np.testing.assert_allclose(batch["coords"][i], spec.coords_from_offsets(offsets))
    np.testing.assert_array_equal(batch["label"], labels)
    # Batches differ by index; the stream yields them in order.
    assert np.abs(script.pyramid_batch(spec, n, seed, index + 1)["patches"]
                  - batch["patches"]).max() > 0.1
    stream = script.pyramid_batches(spec, n, seed, processes=0)
    next(stream)
    np.testing.assert_array_equal(next(stream)["patches"],
                                  script.pyramid_batch(spec, n, seed, 1)["patches"])


def load_module(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@one_pass_only
def test_text_training_from_a_caption_table(tmp_path):
    """The caption table holds every fact's captions as `fit` would encode them; a text
    batch gives each video one of its own facts' captions; the script trains a text model
    from the table alone and the saved model encodes new prompts with the recorded
    encoder."""
    from keras_hpdm.data.moving_mnist_captions import captioned_moving_mnist

    table = load_module("caption_table").caption_table(per_fact=1, sequence_length=8)
    assert len(table["captions"]) == 160
    script = load_script()
    keys = script.fact_keys(table["facts"])
    np.testing.assert_array_equal(np.sort(keys), np.arange(160))
    model_spec = json.loads(table["encoder"])
    encoder = keras_hpdm.conditioning.get_text_encoder(model_spec)
    want = encoder.encode([str(table["captions"][7])])["embeddings"][0]
    np.testing.assert_allclose(table["embeddings"][7].astype(np.float32), want, atol=2e-3,
                               rtol=2e-3)
    path = str(tmp_path / "table.npz")
    np.savez(path, **table)

    spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)
    seed, index, n = 2, 3, 5
    batch = script.text_pyramid_batch(spec, n, seed, index, path)
    videos, _, facts = captioned_moving_mnist(n, num_frames=4, size=32,
                                              seed=(seed * 1_000_003 + index) % 2**62)
    cut = script.cut_pyramids(spec, videos, seed, index)
    np.testing.assert_array_equal(batch["patches"], cut["patches"])
    video_keys = script.fact_keys(np.stack([facts["digit"], facts["direction"],
                                            facts["speed"]], 1))
    # One caption per fact here: each video's embeddings are its facts' row.
    rows = [int(np.flatnonzero(keys == k)[0]) for k in video_keys]
    np.testing.assert_array_equal(batch["text_embeddings"],
                                  table["embeddings"][rows].astype(np.float32))

    out = tmp_path / "out"
    assert script.main(["--minutes", "10", "--max-steps", "2", "--out-dir", str(out),
                        "--name", "text", "--workers", "0", "--text-table", path,
                        "--channels", "1", "--preset", "tiny", "--patch-size", "2", "16", "16",
                        "--levels", "2", "--batch-size", "2", "--log-every", "1"]) == 0
    card = json.loads((out / "text.json").read_text())
    assert card["steps"] == 2 and card["captions"]["captions"] == 160
    assert card["description"].startswith("Text-conditional")
    model = keras.saving.load_model(out / "text.keras")
    assert model.backbone.text_dim == 384 and not model.backbone.num_classes
    assert model.text_encoder.sequence_length == 8
    video = model.generate("the digit 3 travelling north", num_steps=1, seed=0, verbose=0)
    assert video.shape == (1, 4, 32, 32, 3)


@one_pass_only
def test_text_model_starts_from_a_trained_class_model(tmp_path):
    """`--init-backbone-from`: the new text model's backbone and EMA take the class model's
    shared weights; its text layers stay as built."""
    from keras_hpdm.backbones import RINBackbone
    from keras_hpdm.conditioning import MiniLMTextEncoder

    spec = keras_hpdm.PyramidSpec((2, 16, 16), 2)
    keras.utils.set_random_seed(0)
    trained = keras_hpdm.PatchDiffusionModel(
        RINBackbone.from_preset("tiny", pyramid=spec, channels=1, num_classes=10), seed=0)
    path = str(tmp_path / "class.keras")
    trained.save(path)
    keras.utils.set_random_seed(1)
    encoder = MiniLMTextEncoder(sequence_length=8)
    model = keras_hpdm.PatchDiffusionModel(
        RINBackbone.from_preset("tiny", pyramid=spec, channels=1,
                                text_dim=encoder.embedding_dim),
        text_encoder=encoder, seed=0)
    fresh = {w.path.split("/", 1)[1]: np.array(w.numpy()) for w in model.backbone.weights}

    load_script().warm_start(model, path)
    source = {w.path.split("/", 1)[1]: w.numpy() for w in trained.backbone.weights}
    for weight, ema in zip(model.backbone.trainable_weights, model.ema_weights, strict=True):
        np.testing.assert_array_equal(ema.numpy(), weight.numpy())
    for weight in model.backbone.weights:
        name = weight.path.split("/", 1)[1]
        expected = fresh[name] if name.startswith("text_") else source[name]
        np.testing.assert_array_equal(weight.numpy(), expected, err_msg=name)


def test_data_workers_run_a_bounded_window_ahead():
    """The worker pool never holds more than `window` batches nobody has consumed (an
    unbounded `imap` filled a CPU run's memory until it was killed)."""
    from types import SimpleNamespace

    submitted = []

    class Pool:
        def apply_async(self, fn, args):
            submitted.append(args[0])
            return SimpleNamespace(get=lambda: fn(*args))

    import itertools

    stream = load_script().bounded_imap(Pool(), lambda i: i * i, itertools.count(), window=3)
    assert submitted == []  # nothing before the first batch is asked for
    assert [next(stream) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(submitted) == 5 + 3  # consumed + the window, never the endless rest
    assert list(load_script().bounded_imap(Pool(), str, iter(range(4)), window=8)) == [
        "0", "1", "2", "3"]


@one_pass_only
def test_text_pooling_probe_reads_facts_from_new_wordings(tmp_path):
    """`scripts/text_pooling_probe.py` end to end, small: the digit is named by the same
    token in every wording ("7", "seven"), so even a short read-out finds it in held-out
    captions; the frozen pooling is the plain mean (its queries stay zero)."""
    probe = load_module("text_pooling_probe")
    out = tmp_path / "probe.json"
    probe.main(["--fact", "digit", "--train", "400", "--test", "100", "--steps", "150",
                "--seeds", "0", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["pooling"].split()[0] for r in rows] == ["mean", "attention"]
    for row in rows:
        assert row["train"] > 0.9 and row["held_out"] > 0.6, row
    texts, facts = probe.captions("train", 64, seed=0)
    tokens = keras_hpdm.conditioning.MiniLMTextEncoder(sequence_length=24).encode(
        texts)["embeddings"]
    frozen = probe.probe(tokens, facts[:, 0], 10, attention=False, seed=0, steps=5,
                         batch_size=16)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen.layers[1].queries), 0.0)


@one_pass_only
def test_level0_mean_probe_reads_the_bundled_text_models_layout(tmp_path, capsys):
    """`scripts/level0_mean_probe.py` on the bundled text model: the data's level-0 videos
    (and their means per fact) travel in the named sector, fast ones about twice as far as
    slow ones (a wrong angle convention or axis fails); the model's mean at sigma 20 moves
    the way training wordings name in most prompts (measured: 97% of 32); a class model is
    refused."""
    probe = load_module("level0_mean_probe")
    out = tmp_path / "probe.json"
    assert probe.main(["pretrained:moving_mnist_text", "--phrasings", "train", "--videos",
                       "24", "--sigmas", "20", "--draws", "1", "--by-wording", "--json",
                       str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["source"]: r for r in result["rows"]}
    # Per wording: every prompt counted once under a training wording of its direction,
    # and the shares add up to the overall one.
    counts = result["by_wording"]["train"]
    assert sum(total for _, total in counts.values()) == 24
    assert set(counts) <= {w for ws in probe._DIRECTION_PHRASES["train"].values() for w in ws}
    assert sum(hits for hits, _ in counts.values()) / 24 == rows["model, sigma 20"][
        "named_sector"]
    assert set(rows) == {"data", "data mean", "model, sigma 20"}
    for source in ("data", "data mean"):
        assert rows[source]["named_sector"] == 1.0, rows[source]
        assert 1.6 < rows[source]["travel_fast"] / rows[source]["travel_slow"] < 2.4
    assert rows["model, sigma 20"]["named_sector"] > 0.6, rows["model, sigma 20"]
    assert "model, sigma 20" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["pretrained:moving_mnist", "--videos", "2"])
    assert exit_info.value.code == 2 and "not text-conditional" in capsys.readouterr().err


@one_pass_only
def test_guidance_sweep_scores_level0_and_pyramids(tmp_path, capsys):
    """`scripts/guidance_sweep.py`: at level 0, guidance 16 moves the bundled text model's
    digits the way training wordings name far more often than no guidance (measured on 400
    prompts: 81.5% against ~30%), and full-pyramid settings reach `generate` (a per-level
    scale and a context sigma: the JSON keeps them, the scores are in range); a bad
    setting is a usage error."""
    sweep = load_module("guidance_sweep")
    out = tmp_path / "level0.json"
    assert sweep.main(["pretrained:moving_mnist_text", "--level0", "--phrasings", "train",
                       "--videos", "24", "--settings", "1", "16", "--json", str(out)]) is None
    plain, guided = json.loads(out.read_text())["rows"]
    assert guided["direction_accuracy"] > plain["direction_accuracy"] + 0.2, (plain, guided)
    assert guided["travel_fast"] > guided["travel_slow"]
    out = tmp_path / "pyramid.json"
    assert sweep.main(["pretrained:moving_mnist_text", "--videos", "2", "--settings",
                       "16,4,4@0.7", "--json", str(out)]) is None
    (row,) = json.loads(out.read_text())["rows"]
    assert row["setting"] == {"guidance_scale": [16.0, 4.0, 4.0], "context_sigma": 0.7}
    assert row["num_videos"] == 2 and 0 <= row["direction_accuracy"] <= 1
    assert "direction_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["pretrained:moving_mnist_text", "--settings", "4@x"])
    assert exit_info.value.code == 2 and "@SIGMA" in capsys.readouterr().err
