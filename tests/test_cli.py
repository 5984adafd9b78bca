"""The `keras-hpdm` command line end to end: train, resume, generate, export, prepare, demo,
and clear failures for bad arguments."""

import json
import os
import subprocess
import sys

import av
import keras
import numpy as np
import pytest
from PIL import Image

from keras_hpdm.cli import main

DATA = "builtin:moving_mnist?num_videos=16&num_frames=8&size=32"
TRAIN = ["train", DATA, "--labels", "auto", "--channels", "1", "--patch-size", "2", "8", "8",
         "--levels", "2", "--batch-size", "2", "--log-every", "2", "--save-every", "2",
         "--verbose", "0"]
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


def gif_frames(path):
    with Image.open(path) as gif:
        return gif.n_frames, gif.size


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert run_cli(*TRAIN, "--steps", 4, "--sample-every", 4, "--sample-steps", 2,
                   "--p-mean", -0.8, "--p-std", 1.4, "--out", out) == 0
    return out


def test_train_writes_checkpoint_state_and_samples(run_dir):
    state = json.loads((run_dir / "training_state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 2
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in state["history"])
    assert state["args"]["patch_size"] == [2, 8, 8] and state["backend"] == keras.config.backend()
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.backbone.num_classes == 10 and model.backbone.channels == 1
    # Samples: the first 4 digit classes side by side, every frame of the 4x16x16 target.
    frames, size = gif_frames(run_dir / "samples" / "step_0000004.gif")
    assert frames == 4
    scale = 128 // 16
    assert size == (scale * (4 * 18 - 2), scale * 16)


def test_resume_continues_and_refuses_to_overwrite(run_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = keras.saving.load_model(out / "model.keras")
    assert int(before.optimizer.iterations) == 4
    # A new run into a folder with a checkpoint is refused: nothing is overwritten.
    mtime = os.path.getmtime(out / "model.keras")
    assert run_cli(*TRAIN, "--steps", 2, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert os.path.getmtime(out / "model.keras") == mtime
    # --resume takes the saved settings and trains up to the new total.
    assert run_cli("train", "--resume", "--out", out, "--steps", 8, "--verbose", "0") == 0
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 8 and [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    after = keras.saving.load_model(out / "model.keras")
    assert int(after.optimizer.iterations) == 8
    changed = [not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(before.backbone.weights, after.backbone.weights, strict=True)]
    assert any(changed)
    # Already at the total: nothing to do, checkpoint untouched.
    mtime = os.path.getmtime(out / "model.keras")
    assert run_cli("train", "--resume", "--out", out, "--steps", 8) == 0
    assert os.path.getmtime(out / "model.keras") == mtime


def test_generate_from_checkpoint(run_dir, tmp_path):
    stem = tmp_path / "gen" / "digits"
    assert run_cli("generate", run_dir, "--class", 1, 7, "--seed", 3, "--out", stem,
                   "--save-pyramid", *FAST) == 0
    video = mp4_frames(f"{stem}.mp4")
    scale = 128 // 16
    assert video.shape == (4, scale * 16, scale * (2 * 18 - 2), 3)
    assert gif_frames(f"{stem}.gif") == (4, (scale * 34, scale * 16))
    with Image.open(f"{stem}.png") as sheet:
        assert sheet.size[1] == scale * (2 * 18 + 2)  # two rows, one per class
    assert os.path.isfile(f"{stem}_levels.png")
    # A coarser level on request.
    assert run_cli("generate", run_dir, "--class", 2, "--resolution", "2x8x8", "--out",
                   tmp_path / "coarse", *FAST[:2], "--verbose", "0") == 0
    assert mp4_frames(tmp_path / "coarse.mp4").shape == (2, 128, 128, 3)


def test_generate_obeys_class_and_seed(run_dir, tmp_path):
    """`--class` and `--seed` reach the model: the same pair gives the same video, another
    class (same seed) or another seed (same class) a different one. The new `--p-mean`
    training option is in the checkpoint."""
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.noise_distribution.p_mean == -0.8 and model.noise_distribution.p_std == 1.4

    def video(digit, seed, name):
        stem = tmp_path / name
        assert run_cli("generate", run_dir, "--class", digit, "--seed", seed, "--out", stem,
                       "--resolution", "2x8x8", *FAST[:2], "--verbose", "0") == 0
        return mp4_frames(f"{stem}.mp4").astype(np.float32)

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
    assert run_cli("evaluate", digits_run, "--fvd", 1) == 2


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


def test_prepare_then_train_on_shards(tmp_path):
    shards = tmp_path / "shards"
    assert run_cli("prepare", DATA, shards, "--shards", 2, "--labels", "auto") == 0
    meta = json.loads((shards / "hpdm_shards.json").read_text())
    assert meta["num_records"] == 16 and len(meta["files"]) == 2
    assert run_cli("prepare", DATA, shards) == 2  # refuses to overwrite
    out = tmp_path / "run"
    argv = TRAIN[:]
    argv[1] = str(shards)
    assert run_cli(*argv, "--steps", 2, "--out", out) == 0
    assert json.loads((out / "training_state.json").read_text())["step"] == 2


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


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "x"], "give the training data"),
    (["train", DATA, "--out", "x", "--steps", "10", "--log-every", "4", "--save-every", "6"],
     "--save-every (6) must be a multiple of --log-every (4)"),
    (["train", "--resume", "--out", "/nonexistent/run"], "holds no checkpoint"),
    (["generate", "/nonexistent/model.keras"], "does not exist"),
    (["generate", "pretrained:nope"], "Unknown pretrained model"),
    (["generate", "pretrained:moving_mnist", "--resolution", "3x3x3"],
     "--resolution must be one of this model's level sizes (4x16x16, 8x32x32, 16x64x64)"),
    (["generate", "pretrained:moving_mnist", "--prompt", "a seven"], "not text-conditional"),
    (["generate", "pretrained:moving_mnist", "--class", "12"], "12"),
    (["export", "pretrained:moving_mnist", "model.h5"], "must end in .keras"),
    (["prepare", DATA, "x", "--resize", "1", "2", "3"], "--resize takes SIZE or H W"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", DATA, "--out", "x", "--steps", "0"],
    ["train", DATA, "--out", "x", "--backbone", "vit"],
    ["generate", "ckpt", "--guidance", "-1"],
    ["generate", "ckpt", "--overlap", "0.5", "1.0", "0"],
    ["--backend", "numpy", "demo"],
    [],
])
def test_parse_errors_exit_2(argv, capsys):
    assert run_cli(*argv) == 2
    assert "usage: keras-hpdm" in capsys.readouterr().err


@pytest.mark.skipif(keras.config.backend() != "jax", reason="one process per other backend")
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_backend_flag_reruns_under_that_backend(backend):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_hpdm.cli", "--backend", backend, "info"],
        capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, KERAS_BACKEND="jax"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"backend: {backend}\n" in proc.stdout


def test_help_lists_every_command(capsys):
    assert run_cli("--help") == 0
    text = capsys.readouterr().out
    for command in ("demo", "train", "generate", "prepare", "export", "pyramid", "info"):
        assert command in text
