"""The `keras-hpdm` command line end to end: train, resume, generate, export, prepare, demo,
and clear failures for bad arguments."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import av
import keras
import numpy as np
import pytest
from PIL import Image

from keras_hpdm.cli import main
from tests.markers import one_pass_only

DATA = "builtin:moving_mnist?num_videos=16&num_frames=8&size=32"
TRAIN = ["train", DATA, "--labels", "auto", "--channels", "1", "--patch-size", "2", "8", "8",
         "--levels", "2", "--batch-size", "2", "--log-every", "2", "--save-every", "2",
         "--backbone-option", "num_latents=4", "--verbose", "0"]
FAST = ["--steps", "2", "2", "--tile-batch-size", "64", "--verbose", "0"]


def run_cli(*argv):
    """Runs the CLI in-process; returns its exit status (0 when it returns normally)."""
    try:
        return main([str(a) for a in argv]) or 0
    except SystemExit as e:
        return e.code


def mp4_frames(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def error_line(capsys):
    """The CLI's stderr, checked to be the one-line error a user error gives."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def rewrite_archive(path, edit):
    """Rewrites the zip at `path` after `edit(entries)` changed its {name: bytes} in place."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    edit(entries)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def as_torch_checkpoint(path):
    """Rewrites a .keras file's optimizer as the torch backend recorded it before the fix:
    a torch-only class that JAX and TensorFlow cannot train with."""
    def edit(entries):
        config = json.loads(entries["config.json"])
        config["compile_config"]["optimizer"].update(
            module="keras.src.backend.torch.optimizers.torch_adamw", registered_name="AdamW")
        entries["config.json"] = json.dumps(config).encode()

    rewrite_archive(path, edit)


def gif_frames(path):
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert run_cli(*TRAIN, "--steps", 4, "--sample-every", 4, "--sample-steps", 2,
                   "--p-mean", -0.8, "--p-std", 1.4, "--level-loss-weights", 2, 1,
                   "--out", out) == 0
    return out


def test_train_writes_checkpoint_state_and_samples(run_dir):
    state = json.loads((run_dir / "training_state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 2
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in state["history"])
    assert state["args"]["patch_size"] == [2, 8, 8] and state["backend"] == keras.config.backend()
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.backbone.num_classes == 10 and model.backbone.channels == 1
    assert model.backbone.num_latents == 4  # --backbone-option over the preset's 8
    assert model.loss_fn.level_weights == (2.0, 1.0)  # --level-loss-weights
    # Samples: the first 4 digit classes side by side, every frame of the 4x16x16 target.
    frames, size = gif_frames(run_dir / "samples" / "step_0000004.gif")
    assert frames == 4
    scale = 128 // 16
    assert size == (scale * (4 * 18 - 2), scale * 16)


def test_checkpoint_records_the_public_optimizer_class(run_dir):
    """Under torch, Keras swaps in a torch-only optimizer subclass: the file must name the
    public class, or JAX/TensorFlow cannot resume it."""
    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        optimizer = json.loads(archive.read("config.json"))["compile_config"]["optimizer"]
    assert (optimizer["module"], optimizer["class_name"]) == ("keras.optimizers", "AdamW")


@pytest.mark.parametrize("optimizer, warmup, rates", [
    ("adam", None, [1e-3, 1e-3, 1e-3]),    # constant, as before
    ("adam", 100, [0.0, 5e-4, 1e-3]),      # ramped in, then constant
    ("lamb", None, [0.0, 2.5e-4, 5e-4]),   # lamb's default warm-up: 200 steps
    ("lamb", 100, [0.0, 5e-4, 1e-3]),
])
def test_warmup_ramps_the_learning_rate_of_either_optimizer(optimizer, warmup, rates):
    """`--warmup` used to be read by lamb alone: adam trained at its full rate from step 0."""
    from keras_hpdm.cli.train import compile_model

    compiled = {}
    model = argparse.Namespace(compile=lambda optimizer: compiled.update(optimizer=optimizer))
    compile_model(model, argparse.Namespace(optimizer=optimizer, lr=1e-3, steps=10_000,
                                            warmup=warmup))
    rate = compiled["optimizer"]._learning_rate
    got = [float(keras.ops.convert_to_numpy(rate(step) if callable(rate) else rate))
           for step in (0, 50, 100)]
    np.testing.assert_allclose(got, rates, rtol=1e-3, atol=1e-9)

def test_resume_continues_and_refuses_to_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = keras.saving.load_model(out / "model.keras")
    assert int(before.optimizer.iterations) == 4
    # As the torch backend saved runs: every backend resumes them.
    as_torch_checkpoint(out / "model.keras")
    # A new run into a folder with a checkpoint is refused: nothing is overwritten.
    mtime = os.path.getmtime(out / "model.keras")
    assert run_cli(*TRAIN, "--steps", 2, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert os.path.getmtime(out / "model.keras") == mtime
    # --resume takes the saved settings and trains exactly up to the new total (7: the last
    # epoch of --log-every 2 steps is cut short).
    assert run_cli("train", "--resume", "--out", out, "--steps", 7, "--verbose", "0") == 0
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 7 and [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    # Settings not given again are the run's own (not the parser's defaults: a resumed run
    # once checkpointed every 500 steps instead of the run's 2).
    assert state["args"]["save_every"] == 2 and state["args"]["sample_every"] == 4
    after = keras.saving.load_model(out / "model.keras")
    assert int(after.optimizer.iterations) == 7
    changed = [not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(before.backbone.weights, after.backbone.weights, strict=True)]
    assert any(changed)
    # Already at the total: nothing to do, checkpoint untouched.
    mtime = os.path.getmtime(out / "model.keras")
    assert run_cli("train", "--resume", "--out", out, "--steps", 7) == 0
    assert os.path.getmtime(out / "model.keras") == mtime


def test_state_travels_inside_the_checkpoint(run_dir, tmp_path):
    """The step a resume starts from is the one stored in the weights' own archive: a kill
    after the model's rename but before the readable JSON copy leaves a stale JSON, which
    must not pair new weights with an old step (that would replay data and lose history)."""
    from keras_hpdm.callbacks import read_training_state

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    stale = json.loads((out / "training_state.json").read_text())
    stale.update(step=2, epoch=1, history=stale["history"][:1])
    (out / "training_state.json").write_text(json.dumps(stale))
    state = read_training_state(out)
    assert (state["step"], state["epoch"], len(state["history"])) == (4, 2, 2)
    with zipfile.ZipFile(out / "model.keras") as archive:
        assert json.loads(archive.read("training_state.json"))["step"] == 4


@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="bit-exact replay is claimed under JAX (deterministic XLA on CPU)")
def test_resumed_run_equals_an_uninterrupted_one(run_dir, tmp_path):
    """The resumed run continues the data stream (same seed, trained examples skipped), the
    noise seeds, the optimizer and the EMA: its weights and losses are the uninterrupted
    run's (`run_dir`, 4 steps), bit for bit."""
    halves = tmp_path / "halves"
    assert run_cli(*TRAIN, "--steps", 2, "--p-mean", -0.8, "--p-std", 1.4,
                   "--level-loss-weights", 2, 1, "--out", halves) == 0
    assert run_cli("train", "--resume", "--out", halves, "--steps", 4, "--verbose", "0") == 0
    losses = [[h["loss"] for h in json.loads((run / "training_state.json").read_text())[
        "history"]] for run in (run_dir, halves)]
    assert losses[0] == losses[1]
    a, b = (keras.saving.load_model(run / "model.keras") for run in (run_dir, halves))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x),
                                      keras.ops.convert_to_numpy(y), err_msg=x.path)


def test_generate_from_checkpoint(run_dir, tmp_path, capsys):
    """`--out` is a folder (as for demo, pyramid and train), and every file written is
    printed with its path."""
    out = tmp_path / "gen" / "digits"
    assert run_cli("generate", run_dir, "--class", 1, 7, "--seed", 3, "--out", out,
                   "--save-pyramid", *FAST) == 0
    files = ("samples.mp4", "samples.gif", "samples.png", "levels.png")
    assert sorted(os.listdir(out)) == sorted(files)
    printed = capsys.readouterr().out
    assert all(f": {out / name}\n" in printed for name in files), printed
    video = mp4_frames(out / "samples.mp4")
    scale = 128 // 16
    assert video.shape == (4, scale * 16, scale * (2 * 18 - 2), 3)
    assert gif_frames(out / "samples.gif") == (4, (scale * 34, scale * 16))
    with Image.open(out / "samples.png") as sheet:
        assert sheet.size[1] == scale * (2 * 18 + 2)  # two rows, one per class
    # A coarser level on request; guidance 0 (unconditional) is accepted, as by the library.
    assert run_cli("generate", run_dir, "--class", 2, "--resolution", "2x8x8", "--out",
                   tmp_path / "coarse", "--guidance", 0, *FAST[:2], "--verbose", "0") == 0
    assert mp4_frames(tmp_path / "coarse" / "samples.mp4").shape == (2, 128, 128, 3)
    # The context cache capped (here: nothing cached) and stored in bfloat16, contexts cut
    # on the coarser tile grid: the same sampling runs, into its own folder.
    assert run_cli("generate", run_dir, "--class", 2, "--out", tmp_path / "capped",
                   "--context-cache-mb", 0, "--context-cache-dtype", "bfloat16",
                   "--context-parents", "grid", *FAST) == 0
    assert (tmp_path / "capped" / "samples.mp4").is_file()
    # A file is not an output folder: refused before anything is loaded.
    assert run_cli("generate", run_dir, "--class", 2, "--out", out / "samples.png") == 2
    assert "is a file: give a folder" in error_line(capsys)


def test_generate_obeys_class_and_seed(run_dir, tmp_path):
    """`--class` and `--seed` reach the model: the same pair gives the same video, another
    class (same seed) or another seed (same class) a different one. The new `--p-mean`
    training option is in the checkpoint."""
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.noise_distribution.p_mean == -0.8 and model.noise_distribution.p_std == 1.4

    def video(digit, seed, name):
        out = tmp_path / name
        assert run_cli("generate", run_dir, "--class", digit, "--seed", seed, "--out", out,
                       "--resolution", "2x8x8", *FAST[:2], "--verbose", "0") == 0
        return mp4_frames(out / "samples.mp4").astype(np.float32)

    base = video(1, 3, "a")
    np.testing.assert_array_equal(video(1, 3, "again"), base)
    assert np.abs(video(7, 3, "class") - base).mean() > 1.0
    assert np.abs(video(1, 4, "seed") - base).mean() > 1.0


def test_evaluate_scores_a_digit_model_and_updates_its_card(run_dir, tmp_path, capsys):
    # The reader needs digit-sized frames (28x28 and up): the 16x16 model is refused.
    assert run_cli("evaluate", run_dir, "--per-class", 1) == 2
    assert "at least 28x28" in capsys.readouterr().err
    digits_run = tmp_path / "digits_run"
    train = [a if a != "8" else "16" for a in TRAIN]  # patches 2x16x16: 4x32x32 videos
    assert run_cli(*train, "--steps", 2, "--out", digits_run) == 0
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"description": "test"}))
    assert run_cli("evaluate", digits_run, "--per-class", 2, "--steps", 2, 2, "--json",
                   tmp_path / "scores.json", "--card", card) == 0
    printed = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())["scores"]
    assert scores["num_videos"] == 20 and len(scores["per_class_accuracy"]) == 10
    for name in ("class_accuracy", "frame_accuracy", "persistence"):
        assert 0.0 <= scores[name] <= 1.0 and f"{name:<16} {scores[name]:.4f}" in printed
    assert scores["class_effect"] > 0 and scores["noise_effect"] > 0  # an untrained model
    updated = json.loads(card.read_text())
    assert updated["description"] == "test"
    assert updated["evaluation"]["scores"]["num_videos"] == 20
    assert updated["evaluation"]["command"].startswith("keras-hpdm evaluate")
    # Tiles that do not overlap (Table 4's ablation): other tiles, other videos.
    assert run_cli("evaluate", digits_run, "--per-class", 2, "--steps", 2, 2, "--overlap",
                   0, 0, 0, "--json", tmp_path / "no_overlap.json") == 0
    assert "overlap 0 0 0)" in capsys.readouterr().out
    no_overlap = json.loads((tmp_path / "no_overlap.json").read_text())
    assert no_overlap["settings"]["overlap"] == [0.0, 0.0, 0.0]
    assert "overlap" not in json.loads((tmp_path / "scores.json").read_text())["settings"]
    assert no_overlap["scores"]["noise_effect"] != scores["noise_effect"]
    assert run_cli("evaluate", digits_run, "--fvd", 1) == 2
    assert run_cli("evaluate", digits_run, "--sensitivity", 2) == 2
    assert "--sensitivity scores text-conditional models" in capsys.readouterr().err


@one_pass_only
def test_a_text_model_trains_on_builtin_captions_and_is_scored_on_them(tmp_path, capsys):
    """Captioned Moving MNIST end to end: `train` reads the built-in captions (MiniLM
    encodes them), `evaluate` generates from held-out phrasings and reads the digit and
    the direction each caption names. (Text training and generation on every backend:
    tests/test_text_conditioning.py.)"""
    run = tmp_path / "text_run"
    data = "builtin:moving_mnist_captions?num_videos=8&num_frames=4&size=32"
    train = [data if a == DATA else ("16" if a == "8" else a) for a in TRAIN]
    assert run_cli(*train, "--steps", 2, "--out", run) == 0
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert model.backbone.text_dim and not model.backbone.num_classes
    capsys.readouterr()
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"description": "test"}))
    assert run_cli("evaluate", run, "--videos", 2, "--steps", 1, "--sensitivity", 3,
                   "--json", tmp_path / "scores.json", "--card", card) == 0
    printed = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["settings"]["phrasings"] == "held_out"
    scores = scores["scores"]
    assert scores["num_videos"] == 2 and len(scores["examples"]) == 2
    for name in ("digit_accuracy", "direction_accuracy", "still_fraction", "persistence"):
        assert 0.0 <= scores[name] <= 1.0 and f"{name:<16} {scores[name]:.4f}" in printed
    assert repr(scores["examples"][0]["caption"]) in printed
    gaps = scores["caption_sensitivity"]
    assert gaps["num_videos"] == 3 and "caption sensitivity (3 videos)" in printed
    for name in ("digit", "direction", "speed", "wording"):
        assert len(gaps["increase"][name]) == len(gaps["sigmas"]) == 4
        assert all(np.isfinite(gaps["increase_level_0"][name]))
        assert f"    {name:<10} " in printed
    # The card keeps one record per wording set; the held-out one is its headline.
    assert run_cli("evaluate", run, "--videos", 2, "--steps", 1, "--phrasings", "train",
                   "--card", card) == 0
    updated = json.loads(card.read_text())
    assert set(updated["evaluations"]) == {"held_out", "train"}
    assert updated["evaluation"] == updated["evaluations"]["held_out"]
    assert updated["evaluations"]["train"]["settings"]["phrasings"] == "train"


def test_export_keeps_the_ema_samples(run_dir, tmp_path):
    out = tmp_path / "sampler.keras"
    assert run_cli("export", run_dir, out, "--description", "test") == 0
    card = json.loads((tmp_path / "sampler.json").read_text())
    assert card["steps"] == 4 and card["description"] == "test"
    assert card["command"].startswith("keras-hpdm train")
    full = keras.saving.load_model(run_dir / "model.keras", compile=False)
    small = keras.saving.load_model(out, compile=False)
    assert not small.ema_weights and len(small.backbone.weights) == len(full.backbone.weights)
    assert os.path.getsize(out) < 0.5 * os.path.getsize(run_dir / "model.keras")
    kwargs = dict(num_steps=(2, 2), seed=5, verbose=0, return_pyramid=True)
    _, ema_levels = full.generate([4], **kwargs)
    _, export_levels = small.generate([4], **kwargs)
    for a, b in zip(ema_levels, export_levels, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # `--steps` / `--guidance`: the exported model's sampling defaults, checked before load.
    stepped = tmp_path / "stepped.keras"
    assert run_cli("export", run_dir, stepped, "--steps", 3, 2, "--guidance", 2) == 0
    sampling = keras.saving.load_model(stepped, compile=False).sampling
    assert sampling["num_steps"] == [3, 2] and sampling["guidance_scale"] == 2.0
    per_level = tmp_path / "per_level.keras"
    assert run_cli("export", run_dir, per_level, "--guidance", 3, 1.5, "--context-sigma",
                   0.5) == 0
    sampling = keras.saving.load_model(per_level, compile=False).sampling
    assert sampling["guidance_scale"] == [3.0, 1.5] and sampling["context_sigma"] == 0.5
    for bad in (["--steps", 3, 2, 1], ["--guidance", 3, 2, 1], ["--context-sigma", -1]):
        assert run_cli("export", run_dir, tmp_path / "bad.keras", *bad) == 2
        assert not (tmp_path / "bad.keras").exists()


@one_pass_only
def test_writers_refuse_to_replace_a_checkpoint_or_their_input(run_dir, tmp_path, capsys):
    """`export RUN RUN/model.keras` replaced the run's checkpoint with a sampling-only copy
    (no optimizer, no EMA): `--resume` then failed. Every writer refuses, before writing."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    names = ("model.keras", "training_state.json")
    before = {n: (run / n).read_bytes() for n in names}
    standalone = tmp_path / "model.keras"
    shutil.copy(run / "model.keras", standalone)
    for argv in (["export", run, run / "model.keras"],  # the run's checkpoint, its input
                 ["export", standalone, standalone],  # its own input
                 ["export", run, run / "training_state.keras"],  # its card: the run's state
                 ["export", standalone, run / "model.keras"],  # another run's checkpoint
                 ["evaluate", run, "--json", run / "training_state.json"],
                 ["evaluate", run, "--card", run / "training_state.json"]):
        assert run_cli(*argv) == 2, argv
        assert "choose another output path" in error_line(capsys), argv
    assert {n: (run / n).read_bytes() for n in names} == before


def without_embedded_state(path):
    """Rewrites a checkpoint as written before its state moved into the archive."""
    rewrite_archive(path, lambda entries: entries.pop("training_state.json"))


def damage(path, how):
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes({
        "empty": b"",
        "truncated": data[:middle],
        "flipped": data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
        + data[middle + 64:],
    }[how])


@one_pass_only
@pytest.mark.parametrize("name, how", [("model.keras", "empty"), ("model.keras", "truncated"),
                                       ("model.keras", "flipped"),
                                       ("training_state.json", "truncated")])
def test_a_damaged_checkpoint_gives_one_error_naming_the_file(run_dir, tmp_path, capsys, name,
                                                              how):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    if name == "training_state.json":  # read only for checkpoints written before the state
        without_embedded_state(run / "model.keras")  # moved into model.keras
    damage(run / name, how)
    path = str(run / name)
    exported = tmp_path / "sampler.keras"
    commands = [["export", run, exported], ["train", "--resume", "--out", run, "--steps", 8]]
    if name == "model.keras":
        commands.append(["generate", run, "--class", 1, "--out", tmp_path / "v", *FAST])
    for argv in commands:
        assert run_cli(*argv) == 2, argv
        err = error_line(capsys)
        what = err.replace(path, "FILE")  # the tmp folder's name holds "damaged" too
        assert "FILE" in what and re.search("empty|truncated|corrupt|damaged", what), err
    assert not exported.exists()  # checked before anything is written
    # The loaders raise a ValueError naming the file.
    from keras_hpdm.callbacks import load_training_checkpoint, read_training_state

    load = read_training_state if name == "training_state.json" else load_training_checkpoint
    with pytest.raises(ValueError, match=re.escape(path)):
        load(run)


@one_pass_only
def test_diverging_training_stops_and_keeps_no_nan_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*TRAIN, "--steps", 4, "--lr", "1e30", "--out", out) == 2
    err = error_line(capsys)
    assert "training diverged" in err and "try a lower --lr" in err
    if (out / "model.keras").exists():  # only a checkpoint from before the divergence
        model = keras.saving.load_model(out / "model.keras")
        assert all(np.isfinite(w).all() for w in model.get_weights())
        assert "is kept" in err
    else:
        assert "no checkpoint was written" in err


@one_pass_only
def test_a_model_file_never_makes_generate_download(tmp_path, capsys, monkeypatch):
    """A checkpoint naming an `hf://` text encoder made `generate` try the network for a
    minute: downloads need --allow-download, and failing ones say what to do instead."""
    import keras_hub
    import requests

    import keras_hpdm
    from keras_hpdm.backbones import RINBackbone
    from keras_hpdm.conditioning import KerasHubTextEncoder

    calls = []

    def offline(cls, preset, **kwargs):
        calls.append(preset)
        raise requests.exceptions.ProxyError("Unable to connect to proxy")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", classmethod(offline))
    backbone = RINBackbone.from_preset("tiny", pyramid=keras_hpdm.PyramidSpec((2, 8, 8), 2),
                                       text_dim=8)
    model = keras_hpdm.PatchDiffusionModel(
        backbone, text_encoder=KerasHubTextEncoder("hf://someone/t5", sequence_length=4))
    path = tmp_path / "t2v.keras"
    model.save(path)
    generate = ["generate", path, "--prompt", "a cat", "--out", tmp_path / "v", *FAST]
    assert run_cli(*generate) == 2
    err = error_line(capsys)
    assert "downloads are off" in err and "--allow-download" in err and calls == []
    assert run_cli(*generate, "--allow-download") == 2
    err = error_line(capsys)
    assert calls == ["hf://someone/t5"]
    assert "could not be downloaded" in err and "local directory" in err


def test_prepare_then_train_on_shards(tmp_path):
    shards = tmp_path / "shards"
    assert run_cli("prepare", DATA, shards, "--shards", 2, "--labels", "auto") == 0
    meta = json.loads((shards / "hpdm_shards.json").read_text())
    assert meta["num_records"] == 16 and len(meta["files"]) == 2
    assert run_cli("prepare", DATA, shards) == 2  # refuses to overwrite
    out = tmp_path / "run"
    argv = TRAIN[:]
    argv[1] = str(shards)
    # 3 steps in epochs of --log-every 2: exactly 3 (the last epoch is shorter), not 4.
    assert run_cli(*argv, "--steps", 3, "--out", out) == 0
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2]


def test_demo_generates_digits_with_the_bundled_model(tmp_path):
    out = tmp_path / "demo"
    assert run_cli("demo", "--class", 3, "--steps", 4, 2, 2, "--out", out,
                   "--verbose", "0") == 0
    video = mp4_frames(out / "samples.mp4")
    assert video.shape[0] == 16
    frames = video.astype(np.float32)
    assert frames.std() > 10.0  # not a constant picture
    assert np.abs(np.diff(frames, axis=0)).mean() > 0.5  # the frames change over time
    # Moving MNIST's look: a dark background with bright content (uniform noise has a
    # median of ~128 and fails), and `--class` reaches the model (same seed, another digit).
    assert np.median(frames) < 30 and np.percentile(frames, 99.5) > 100
    other = tmp_path / "other"
    assert run_cli("demo", "--class", 5, "--steps", 4, 2, 2, "--out", other,
                   "--verbose", "0") == 0
    assert np.abs(mp4_frames(other / "samples.mp4").astype(np.float32) - frames).mean() > 0.2
    for name in ("samples.gif", "samples.png", "levels.png", "pyramid.png"):
        assert (out / name).stat().st_size > 1000


def test_demo_prompt_generates_with_the_bundled_text_model(tmp_path, capsys):
    """`demo --prompt` loads `pretrained:moving_mnist_text` (MiniLM from the installed
    package, no download), prints the card's held-out scores and writes the same outputs as
    the class demo; `generate` takes the preset too, and the prompt reaches the model (same
    seed, another prompt, another video); `--class` with `--prompt` is refused."""
    out = tmp_path / "demo"
    prompt = "the digit 7 moving up and to the right quickly"
    assert run_cli("demo", "--prompt", prompt, "--steps", 4, 2, 2, "--out", out,
                   "--verbose", "0") == 0
    printed = capsys.readouterr().out
    assert "Text-conditional Moving MNIST" in printed and prompt in printed
    assert "moving the named way in" in printed  # the card's held-out direction score
    frames = mp4_frames(out / "samples.mp4").astype(np.float32)
    assert frames.shape[0] == 16 and frames.std() > 10.0
    assert np.median(frames) < 30 and np.percentile(frames, 99.5) > 100
    # `generate pretrained:moving_mnist_text --prompt`: the same model and seed (0), another
    # prompt, another video.
    other = tmp_path / "other"
    assert run_cli("generate", "pretrained:moving_mnist_text", "--prompt",
                   "a handwritten 2 drifting to the left slowly", "--steps", 4, 2, 2,
                   "--seed", 0, "--out", other, "--verbose", "0") == 0
    assert np.abs(mp4_frames(other / "samples.mp4").astype(np.float32) - frames).mean() > 0.2
    for name in ("samples.gif", "samples.png", "levels.png", "pyramid.png"):
        assert (out / name).stat().st_size > 1000
    assert run_cli("demo", "--class", 3, "--prompt", "a 3", "--out", tmp_path / "x") == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "x"], "give the training data"),
    (["train", DATA, "--out", "x", "--steps", "10", "--log-every", "4", "--save-every", "6"],
     "--save-every (6) must be a multiple of --log-every (4)"),
    (["train", "--resume", "--out", "/nonexistent/run"], "holds no checkpoint"),
    (["train", DATA, "--out", "x", "--levels", "2", "--level-loss-weights", "1"],
     "one weight per level (2), got 1"),
    (["train", DATA, "--out", "x", "--levels", "2", "--level-loss-weights", "0", "0"],
     "must not all be 0"),
    # No cluster in the environment (torch: no distribution backend at all).
    (["train", DATA, "--out", "x", "--distributed", "--steps", "2"], "--distributed: "),
    (["generate", "/nonexistent/model.keras"], "does not exist"),
    (["generate", "pretrained:nope"], "Unknown pretrained model"),
    (["generate", "pretrained:moving_mnist", "--resolution", "3x3x3"],
     "--resolution must be one of this model's level sizes (4x16x16, 8x32x32, 16x64x64)"),
    (["generate", "pretrained:moving_mnist", "--prompt", "a seven"], "not text-conditional"),
    (["generate", "pretrained:moving_mnist", "--class", "12"], "12"),
    (["generate", "pretrained:moving_mnist", "--class", "1", "--guidance", "8", "4"],
     "`guidance_scale` must be a finite number >= 0 or 3 of them (one per level)"),
    (["export", "pretrained:moving_mnist", "model.h5"], "must end in .keras"),
    (["prepare", DATA, "x", "--resize", "1", "2", "3"], "--resize takes SIZE or H W"),
    ([*TRAIN, "--out", "x", "--steps", "2", "--backbone-option", "latents=3"],
     "RINBackbone has no argument latents; allowed: tokenizer_patch,"),
    ([*TRAIN, "--out", "x", "--steps", "2", "--backbone-option", "num_heads=x"],
     "--backbone-option: `num_heads` must be an integer >= 1, got 'x'"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert run_cli(*argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", DATA, "--out", "x", "--steps", "0"],
    ["train", DATA, "--out", "x", "--backbone", "vit"],
    ["train", DATA, "--out", "x", "--backbone-option", "num_latents"],
    ["generate", "ckpt", "--guidance", "-1"],
    ["generate", "ckpt", "--overlap", "0.5", "1.0", "0"],
    ["--backend", "numpy", "demo"],
    ["generate", "ckpt", "--guid", "2"],  # a prefix of a real option is not that option
    ["generate", "ckpt", "--context-cache-dtype", "float16"],
    ["generate", "ckpt", "--context-cache-mb", "-1"],
    ["generate", "ckpt", "--context-parents", "centre"],
    ["generate", "ckpt", "--context-sigma", "-0.5"],
    ["evaluate", "ckpt", "--guidance", "4", "nan"],
    [],
])
def test_parse_errors_exit_2(argv, capsys):
    assert run_cli(*argv) == 2
    assert "usage: keras-hpdm" in capsys.readouterr().err


@pytest.mark.skipif(keras.config.backend() != "torch", reason="one process per other backend")
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_backend_flag_reruns_under_that_backend(backend):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_hpdm.cli", "--backend", backend, "info"],
        capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, KERAS_BACKEND="torch"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"backend: {backend}\n" in proc.stdout


def test_help_lists_every_command(capsys):
    assert run_cli("--help") == 0
    text = capsys.readouterr().out
    for command in ("demo", "train", "generate", "prepare", "export", "pyramid", "info"):
        assert command in text


@one_pass_only
def test_the_parser_imports_no_backend_and_the_backend_is_set_without_reexec():
    """`keras-hpdm --help` took 5-7 s: building the parser imported Keras (and with it
    TensorFlow or JAX). A fresh interpreter must build it, print help and choose the
    backend with none of them imported; `import keras_hpdm` sets TF's log level."""
    code = """
import os, sys
from keras_hpdm.cli import main
from keras_hpdm.cli.common import set_backend
try:
    main(["generate", "--help"])
except SystemExit as e:
    assert e.code == 0, e.code
set_backend("torch", ["info"])  # Keras not imported yet: the variable is enough
heavy = {"keras", "tensorflow", "jax", "torch", "numpy"} & {m.split(".")[0] for m in sys.modules}
print(sorted(heavy), os.environ["KERAS_BACKEND"], os.environ["TF_CPP_MIN_LOG_LEVEL"])
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: keras-hpdm generate" in proc.stdout
    assert proc.stdout.splitlines()[-1] in ("[] torch 2", "[] torch 3"), proc.stdout[-300:]
    assert proc.stderr == ""


@one_pass_only
@pytest.mark.parametrize("argv, message", [
    (["generate", "pretrained:moving_mnist", "--class", "12"], "Class ids must be in [0, 9]"),
    (["generate", "pretrained:moving_mnist", "--prompt", "a seven"], "not text-conditional"),
    (["generate", "pretrained:moving_mnist", "--num-samples", "3", "--class", "1", "2"],
     "Got 2 conditions but `num_samples=3`"),
    (["generate", "pretrained:moving_mnist", "--resolution", "4x4x4"], "level sizes"),
    (["generate", "RUN", "--class", "10"], "Class ids must be in [0, 9]"),
    (["demo", "--class", "10"], "Class ids must be in [0, 9]"),
    (["generate", "pretrained:moving_mnist_text", "--class", "3"],
     "the model is not class-conditional (it takes prompt strings)"),
    (["demo", "--prompt", "a 3 moving left", "--steps", "8", "4"],
     "`num_steps` must be a positive int or 3 positive ints"),
    # The whole `GenerationPlan`: one step count or sampler per level (bundled: 3, RUN: 2).
    (["generate", "pretrained:moving_mnist", "--steps", "8", "4"],
     "`num_steps` must be a positive int or 3 positive ints"),
    (["generate", "RUN", "--sampler", "euler", "heun", "euler"], "`sampler` must be one of"),
    (["demo", "--steps", "8", "4"], "`num_steps` must be a positive int or 3 positive ints"),
    (["evaluate", "pretrained:moving_mnist", "--steps", "8", "4"],
     "`num_steps` must be a positive int or 3 positive ints"),
])
def test_requests_are_checked_against_the_model_file_before_loading_it(
        argv, message, run_dir, monkeypatch, capsys, tmp_path):
    """A wrong --class or a prompt for a class model was reported after the ~20 s a model
    takes to load: the file's config (read with zipfile + json) is checked first."""
    from keras_hpdm import pretrained
    from keras_hpdm.cli import generate

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(generate, "load_checkpoint", load)
    monkeypatch.setattr(pretrained, "load_pretrained", load)
    monkeypatch.chdir(tmp_path)
    assert run_cli(*[str(run_dir) if a == "RUN" else a for a in argv]) == 2
    assert message in error_line(capsys)


@one_pass_only
def test_guidance_0_is_accepted_as_by_the_library(capsys):
    """`model.generate` takes any finite guidance >= 0 (0: unconditional): so does every
    command, with the library's own check."""
    from keras_hpdm.checks import check_guidance_scale
    from keras_hpdm.cli import build_parser

    parser = build_parser()
    for command in (["generate", "ckpt"], ["demo"], ["evaluate", "ckpt"]):
        assert parser.parse_args([*command, "--guidance", "0"]).guidance == [0.0]
        assert parser.parse_args([*command, "--guidance", "8", "4"]).guidance == [8.0, 4.0]
        assert check_guidance_scale(0.0) == 0.0
        for bad in ("-0.5", "nan", "inf", "x"):
            assert run_cli(*command, "--guidance", bad) == 2
            assert "--guidance: must be a finite number >= 0" in capsys.readouterr().err


@one_pass_only
def test_progress_is_plain_lines_off_a_terminal():
    """Progress bars written to a file were ~36 KB of ANSI text: off a terminal (as here,
    under pytest's capture) `--verbose` defaults to 2, one line per epoch or level."""
    from keras_hpdm.cli import build_parser

    parser = build_parser()
    assert not sys.stdout.isatty()
    for argv in (["train", "data", "--out", "run"], ["generate", "ckpt"], ["demo"]):
        assert parser.parse_args(argv).verbose == 2
        assert parser.parse_args([*argv, "--verbose", "1"]).verbose == 1


@one_pass_only
def test_presets_in_help_and_the_bundled_models_preset(capsys):
    """`--preset`'s help lists every preset, `mini` included; `mini` is the bundled model's
    architecture, with the parameter count the README gives."""
    from keras_hpdm.backbones import BACKBONES, RINBackbone, UNet3DBackbone
    from keras_hpdm.cli import train
    from keras_hpdm.models.patch_diffusion_model import PatchDiffusionModel
    from keras_hpdm.pretrained import pretrained_path

    # The parser's --backbone choices (it imports no Keras) name the registry's classes.
    assert set(train.BACKBONES) == set(BACKBONES)
    assert BACKBONES == {"rin": RINBackbone, "unet": UNet3DBackbone}
    assert run_cli("train", "--help") == 0
    words = set(re.findall(r"[a-z0-9_]+", capsys.readouterr().out))
    assert set(RINBackbone.presets) | set(UNet3DBackbone.presets) <= words
    with zipfile.ZipFile(pretrained_path("moving_mnist")) as archive:
        bundled = json.loads(archive.read("config.json"))["config"]["backbone"]
    # As the file loads: options it predates take their `from_config` values.
    bundled = keras.saving.deserialize_keras_object(bundled).get_config()
    mini = RINBackbone.presets["mini"]
    assert {k: bundled[k] for k in mini["config"]} == mini["config"]
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    readme = " ".join(readme.split())
    assert "RIN preset `mini` (1,352,784 parameters)" in readme
    assert "for 8 minutes on one H200 GPU" in readme
    assert mini["metadata"]["params"] == 1_352_784 == PatchDiffusionModel.presets[
        "moving_mnist"]["params"]
    assert "8 minutes on one H200 GPU" in mini["metadata"]["description"]


@one_pass_only
def test_a_data_error_during_training_is_one_line(monkeypatch, capsys):
    """The data pipeline's failure budget fires inside TensorFlow mid-run: the CLI prints
    its message on one line (exit 2), while any other error keeps its traceback."""
    import tensorflow as tf

    from keras_hpdm.cli import info

    message = ("keras_hpdm.data: 50 clips in a row failed to decode (FAILURE_BUDGET=50) in "
               "a/b. Fix or remove these files: a/b/c.mp4: too short")

    def fail(args):
        raise tf.errors.InvalidArgumentError(None, None, f"assertion failed: [{message}]\n\t "
                                             "[[{{node Assert}}]] [Op:IteratorGetNext]")

    monkeypatch.setattr(info, "run", fail)
    assert run_cli("info") == 2
    assert error_line(capsys).strip() == f"keras-hpdm info: error: {message}"

    def crash(args):
        raise RuntimeError("a library bug")

    monkeypatch.setattr(info, "run", crash)
    with pytest.raises(RuntimeError, match="a library bug"):
        run_cli("info")


# ------------------------------------------------------------------ quiet start
NOISE = (b"WARNING: All log messages before absl::InitializeLog() is called are written to "
         b"STDERR\n"
         b"I0000 00:00:1796032037.152305   27373 cudart_stub.cc:31] Could not find cuda "
         b"drivers on your machine, GPU will not be used.\n"
         b"W0000 00:00:1796032037.2   27373 gpu_device.cc:2342] Cannot dlopen some GPU "
         b"libraries.\n")
CUINIT = (b"E0000 00:00:1796032094.740737   27466 cuda_platform.cc:52] failed call to cuInit: "
          b"INTERNAL: CUDA error\n")


@one_pass_only
def test_tensorflows_start_up_lines_are_filtered_by_the_log_level(tmp_path, capfd,
                                                                   monkeypatch):
    """TensorFlow prints absl's banner and INFO lines while it loads, before it reads
    TF_CPP_MIN_LOG_LEVEL: its first import runs with stderr filtered by that level."""
    from keras_hpdm import _startup

    def stderr_at(level):
        with _startup.filtered_stderr(level):
            os.write(2, NOISE + CUINIT + b"a real message\n")
        return capfd.readouterr().err.encode()

    assert stderr_at(3) == b"a real message\n"
    assert stderr_at(2) == CUINIT + b"a real message\n"
    assert stderr_at(0) == NOISE + CUINIT + b"a real message\n"
    # The hook wraps the first import of the module, wherever it comes from, then goes.
    (tmp_path / "fake_tensorflow_for_test.py").write_text(
        f"import os\nos.write(2, {NOISE + b'kept' + bytes([10])!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _startup.FirstImport.install("fake_tensorflow_for_test",
                                 lambda: _startup.filtered_stderr(2))
    import fake_tensorflow_for_test  # noqa: F401

    assert capfd.readouterr().err == "kept\n"
    assert not [f for f in sys.meta_path if getattr(f, "name", "") == "fake_tensorflow_for_test"]
    # The user's level is kept (JAX's default "1", set on import, is not the user's).
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    _startup.quiet_start()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    _startup.quiet_start()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("2", "3")


@one_pass_only
def test_keras_imported_after_keras_hpdm_gets_its_classes(tmp_path, monkeypatch):
    """`import keras_hpdm` is light (no Keras): a later top-level `import keras` loads its
    modules (registering their classes for `keras.saving.load_model`), but not an import of
    Keras from inside another module's import (that could go in a circle)."""
    from keras_hpdm import _startup

    calls = []
    for name, body in (("fake_keras_for_test", ""),
                       ("fake_importer_for_test", "import fake_keras_for_test_2\n"),
                       ("fake_keras_for_test_2", "")):
        (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fake_keras_for_test", "fake_keras_for_test_2"):
        _startup.register_on_keras_import(lambda name=name: calls.append(name), name=name)
    import fake_importer_for_test  # noqa: F401  (imports fake_keras_for_test_2: nested)
    import fake_keras_for_test  # noqa: F401  (top level)

    assert calls == ["fake_keras_for_test"]


@one_pass_only
def test_a_short_run_keeps_the_default_intervals():
    """`--steps 3` alone: --log-every (100) is cut to 3, and the default --save-every (500),
    never due in this run, is rounded up to a multiple instead of refused; an interval that
    would be due mid-run and is not a multiple is still refused."""
    from keras_hpdm.cli import train
    from keras_hpdm.cli.common import CommandError

    args = argparse.Namespace(resume=False, data="d", log_every=100, steps=3, save_every=500,
                              sample_every=0)
    assert train._check_args(args) == 3
    assert args.save_every == 501 and args.sample_every == 0
    args = argparse.Namespace(resume=False, data="d", log_every=4, steps=20, save_every=6,
                              sample_every=0)
    with pytest.raises(CommandError, match=r"--save-every \(6\) must be a multiple"):
        train._check_args(args)


def test_train_init_from_grows_a_run(run_dir, tmp_path, capsys):
    """`--init-from RUN --levels N`: a new run from the run's model grown to N levels (its
    patch size, channels and classes kept, every old level on its old blocks)."""
    common = ["train", DATA, "--labels", "auto", "--init-from", str(run_dir), "--batch-size",
              "2", "--steps", "2", "--log-every", "2", "--save-every", "2", "--verbose", "0"]
    out = tmp_path / "grown"
    assert run_cli(*common, "--levels", 3, "--out", out) == 0
    old = keras.saving.load_model(run_dir / "model.keras", compile=False)
    grown = keras.saving.load_model(out / "model.keras", compile=False)
    assert grown.pyramid.num_levels == 3 and grown.pyramid.patch_size == old.pyramid.patch_size
    assert grown.backbone.num_latents == old.backbone.num_latents == 4
    assert grown.backbone.channels == 1 and grown.backbone.num_classes == 10
    assert [min(n, 2) for n in grown.backbone.levels_per_block] == list(
        old.backbone.levels_per_block)
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 2 and state["args"]["init_from"] == str(run_dir)
    assert "loss_level_2" in state["history"][-1]
    assert run_cli(*common, "--levels", 1, "--out", tmp_path / "fewer") == 2
    assert "--levels (1) must be at least" in error_line(capsys)
    common[common.index("auto")] = "none"
    assert run_cli(*common, "--levels", 2, "--out", tmp_path / "unlabelled") == 2
    assert "trained with 10 classes" in error_line(capsys)
    assert run_cli(*common, "--resume", "--out", out) == 2
    assert "give one of them" in error_line(capsys)


def test_init_from_with_level_loss_weights_keeps_the_trained_weights(run_dir):
    """New loss weights and noise levels rebuild the grown model: its backbone and EMA
    weights stay the trained ones. Objective flags not given keep the model's own."""
    from keras_hpdm.cli.train import init_model

    old = keras.saving.load_model(run_dir / "model.keras", compile=False)
    objective = ("condition_dropout", "p_mean", "p_std", "level_noise_scale")
    args = argparse.Namespace(init_from=str(run_dir), levels=2, optimizer="adam", lr=1e-3,
                              steps=2, warmup=0, **dict.fromkeys(objective))
    kept = init_model(args).get_config()
    assert {k: kept[k] for k in objective} == {k: old.get_config()[k] for k in objective}
    given = {"condition_dropout": 0.3, "p_mean": 0.7, "p_std": 0.9, "level_noise_scale": 1.5}
    assert all(old.get_config()[k] != v for k, v in given.items())
    args = argparse.Namespace(init_from=str(run_dir), levels=3, optimizer="adam", lr=1e-3,
                              steps=2, warmup=0, level_loss_weights=[1.0, 1.0, 4.0], **given)
    model = init_model(args)
    assert {k: model.get_config()[k] for k in objective} == given
    assert model.loss_fn.level_weights == (1.0, 1.0, 4.0) and model.pyramid.num_levels == 3
    assert args.patch_size == list(old.pyramid.patch_size) and args.channels == 1
    for got, want in ((model.backbone.weights, old.backbone.weights),
                      (model.ema_weights, old.ema_weights)):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b), err_msg=a.path)


def test_init_from_a_sampling_copy_starts_an_ema(run_dir, tmp_path):
    """An exported or bundled model keeps no EMA: `--init-from` it gives the new run one of
    `--ema-half-life`, starting at the trained weights (else it sampled from the live,
    noisy weights). A run's own checkpoint keeps its EMA as it was."""
    from keras_hpdm.cli.export import sampling_copy
    from keras_hpdm.cli.train import init_model

    old = keras.saving.load_model(run_dir / "model.keras", compile=False)
    path = tmp_path / "exported.keras"
    sampling_copy(old).save(path)
    args = argparse.Namespace(init_from=str(path), levels=3, optimizer="adam", lr=1e-3,
                              steps=2, warmup=0, ema_half_life=123.0)
    model = init_model(args)
    assert model.ema_half_life == 123.0 and model.pyramid.num_levels == 3
    exported = sampling_copy(old).backbone.trainable_weights  # the run's EMA weights
    for got in (model.backbone.trainable_weights, model.ema_weights):
        for a, b in zip(got, exported, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))
    args.init_from = str(run_dir)
    kept = init_model(args)
    assert kept.ema_half_life == old.ema_half_life != 123.0
    for a, b in zip(kept.ema_weights, old.ema_weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


def test_clips_per_file_is_refused_where_nothing_is_decoded(tmp_path, capsys):
    # DATA is an array source: several clips per decode would not save anything.
    assert run_cli(*TRAIN, "--clips-per-file", 2, "--steps", 1, "--out", tmp_path / "r") == 2
    assert "`clips_per_file` (2) applies to media files" in error_line(capsys)
