"""Smoke tests: every example runs end to end in its quick mode."""

import importlib.util
import json
import os
import re

import keras
import numpy as np
from PIL import Image

from tests.markers import one_pass_only

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name):
    """Imports `examples/<name>.py` as a module (in-process: shares the backend's caches)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_default_to_the_clis_backend():
    """Without KERAS_BACKEND the examples ran under TensorFlow (Keras' default) while the
    CLI runs JAX: each sets the CLI's default before anything imports Keras, and imports
    keras_hpdm first (it quiets TensorFlow's start-up)."""
    names = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".py"))
    assert len(names) >= 5
    for name in names:
        with open(os.path.join(EXAMPLES, name)) as f:
            source = f.read()
        default = source.find('os.environ.setdefault("KERAS_BACKEND", "jax")')
        first = source.find("\nimport keras_hpdm")
        assert 0 < default < first < source.find("\nimport keras\n"), name


# ----------------------------------------------------------- train_on_clip.py
def test_train_on_clip_quick(tmp_path, single_thread_torch):
    example = load_example("train_on_clip")
    result = example.main(["--quick", "--output", str(tmp_path)])
    assert result["steps"] == [1, 2, 3]
    losses = result["history"]["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses)), losses
    assert set(result["history"]) >= {"loss", "loss_level_0", "loss_level_1"}
    with Image.open(tmp_path / "loss.png") as plot:
        assert plot.format == "PNG" and min(plot.size) >= 200
        pixels = np.asarray(plot.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2  # something was drawn
    assert (tmp_path / "model.keras").stat().st_size > 100_000


def test_loss_plot_without_matplotlib(tmp_path):
    """`keras_hpdm.media.plot_curves`' fallback (the examples' loss plots)."""
    from keras_hpdm.media import _plot_curves_with_pil

    path = _plot_curves_with_pil(str(tmp_path / "plot.png"), [10, 20, 30],
                                 {"loss": [1.0, 0.6, 0.4], "level 0": [1.2, 0.8, 0.5]}, "t")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    # The total-loss curve (first colour) is drawn inside the axes, falling left to right.
    blue = np.all(pixels == (0x1F, 0x77, 0xB4), axis=-1)
    rows, cols = np.nonzero(blue[:, 60:560])  # left of the legend
    assert rows.size > 50
    assert rows[cols < 100].mean() < rows[cols > 400].mean()  # falling loss: y grows down


# --------------------------------------------------------- train_on_folder.py
def test_train_on_folder_quick(tmp_path, single_thread_torch):
    example = load_example("train_on_folder")
    result = example.main(["--quick", "--output", str(tmp_path)])
    losses = result["history"]["loss"]
    assert len(losses) == 2 and np.all(np.isfinite(losses)), losses
    # The default folder: the three built-in clips plus one corrupt file, skipped.
    assert result["num_examples"] == 3
    assert [os.path.basename(p) for p in result["skipped"]] == ["broken.mp4"]
    state = json.loads((tmp_path / "training_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 2 and len(state["history"]) == 2
    assert (tmp_path / "model.keras").stat().st_size > 100_000
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic save left no temporary file
    assert result["sample"] is None  # quick mode samples nothing (the other examples do)


# ------------------------------------------------ moving_mnist_class_conditional.py
def test_moving_mnist_class_conditional_quick(tmp_path, single_thread_torch):
    example = load_example("moving_mnist_class_conditional")
    result = example.main(["--quick", "--output", str(tmp_path)])
    losses = result["history"]["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses)), losses
    assert result["class_names"] == [str(d) for d in range(10)]
    assert result["model"].backbone.num_classes == 10 and result["model"].backbone.channels == 1
    videos = result["videos"]  # one per digit, grayscale shown as RGB
    assert videos.shape == (10, 4, 32, 32, 3) and videos.dtype == np.uint8
    assert np.array_equal(videos[..., 0], videos[..., 2])
    with Image.open(result["sheet"]) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    # One row per digit: 10 rows of 32x32 frames, scaled 2x, below a title line.
    assert pixels.shape[0] >= 10 * 64 and pixels.shape[0] < 10 * 80
    with Image.open(tmp_path / "digits.gif") as gif:
        assert gif.n_frames == 4
    assert (tmp_path / "digits.mp4").stat().st_size > 0
    assert (tmp_path / "model.keras").stat().st_size > 100_000


# ------------------------------------------------ text_conditional_captions.py
def test_text_conditional_captions_quick(tmp_path, single_thread_torch):
    example = load_example("text_conditional_captions")
    result = example.main(["--quick", "--output", str(tmp_path)])
    losses = result["history"]["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses)), losses
    captions = result["captions"]
    assert len(captions) == 16
    assert all(re.fullmatch(r"the digit \d moving (horizontally|vertically|diagonally|still)", c)
               for c in captions), captions[:4]
    # Every caption was encoded once up front: training and sampling hit the cache.
    assert result["cache"]["misses"] == len(set(captions) | set(result["prompts"]))
    videos = result["videos"]
    assert videos.shape == (len(result["prompts"]), 4, 32, 32, 3) and videos.dtype == np.uint8
    assert len(result["measured_motion"]) == len(result["prompts"])
    with Image.open(result["sheet"]) as sheet:
        assert sheet.size[1] >= len(result["prompts"]) * 64
    counts = (tmp_path / "captions.txt").read_text().splitlines()
    assert sum(int(line.split("\t")[0]) for line in counts) == 16
    assert (tmp_path / "model.keras").stat().st_size > 100_000


def test_text_conditional_motion_axis():
    example = load_example("text_conditional_captions")
    frames = np.zeros((6, 40, 40, 1), np.uint8)

    def square(dy, dx):
        video = frames.copy()
        for t in range(len(video)):
            y, x = 4 + dy * t, 4 + dx * t
            video[t, y:y + 8, x:x + 8] = 255
        return video

    assert example.motion_axis(square(0, 3)) == "horizontally"
    assert example.motion_axis(square(-3, 0)[::-1]) == "vertically"
    assert example.motion_axis(square(3, 3)) == "diagonally"
    assert example.motion_axis(square(0, 0)) == "still"
    assert example.caption(7, square(3, 0)) == "the digit 7 moving vertically"


# ------------------------------------------------ generate_high_resolution.py
def test_generate_high_resolution_quick(tmp_path, single_thread_torch):
    from keras_hpdm import pretrained

    example = load_example("generate_high_resolution")
    bundled = os.path.isfile(os.path.join(os.path.dirname(pretrained.__file__),
                                          "moving_mnist.keras"))
    result = example.main(["--quick", "--output", str(tmp_path)])
    assert result["untrained"] is (not bundled)
    spec = result["model"].pyramid
    assert result["num_levels"] == 2
    # Level l's canvas is the patch size times 2**l on every axis.
    for level, canvas in enumerate(result["canvases"]):
        expected = tuple(r * 2**level for r in spec.patch_size)
        assert canvas.shape == (1,) + expected + (1,)
        assert result["levels"][level]["size"] == list(expected)
        with Image.open(tmp_path / f"level_{level}.gif") as gif:
            assert gif.n_frames == expected[0]
    videos = result["videos"]
    assert videos.shape == (1,) + spec.level_size(1) + (3,) and videos.dtype == np.uint8
    assert [lv["tiles"] for lv in result["levels"]] == [1, 18]  # 2x3x3 tiles at 50% overlap
    assert result["levels"][1]["area_ratio"] == 4
    assert result["early_stop"] == [{"num_levels": 1, "shape": [1, *spec.patch_size, 3],
                                      "max_abs_diff": 0}]
    # No overlap: 2x2x2 tiles; another tile batch size: the same videos.
    assert result["comparison"]["overlap"]["0.0"]["tiles"] == 8
    assert result["no_overlap"].shape == videos.shape
    assert result["comparison"]["tile_batch_size"]["max_abs_diff"] <= 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["levels"] == result["levels"]
    with Image.open(tmp_path / "levels.png") as sheet:
        assert sheet.size[0] > 2 * sheet.size[1]  # two canvases side by side


# ----------------------------------------------------- grow_to_high_resolution.py
@one_pass_only  # grow, fit, generate: tests/test_growth.py runs them on every backend
def test_grow_to_high_resolution_quick(tmp_path):
    example = load_example("grow_to_high_resolution")
    result = example.main(["--quick", "--output", str(tmp_path)])
    assert result["old_levels_identical"] is True
    assert result["target_size"] == {"before": [4, 32, 32], "after": [8, 64, 64]}
    assert result["levels_per_block"] == {"before": [1, 2], "after": [1, 3]}
    rows = result["held_out_loss"]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(len(r["levels"]) == 3 for r in rows)
    assert np.isfinite([r["levels"] for r in rows]).all()
    assert rows[2]["levels"] != rows[0]["levels"]  # the EMA weights moved
    # Fixed noise: the same weights give the same held-out loss, call after call.
    model = result["model"]
    batch = example.held_out_pyramids(
        model.pyramid, *example.twice_the_resolution(model.pyramid, 3, seed=5), seed=0)
    assert example.level_losses(model, batch) == example.level_losses(model, batch)
    assert result["samples"].shape == (10, 8, 64, 64, 3)
    scores = result["digit_scores"]
    assert list(scores) == ["before growing", "grown, not fine-tuned", "grown and fine-tuned"]
    assert [row["size"] for row in scores.values()] == [[4, 32, 32], [8, 64, 64], [8, 64, 64]]
    assert all(0 <= row["class_accuracy"] <= 1 and "videos" not in row
               for row in scores.values())
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["held_out_loss"] == rows and report["steps"] == 2
    assert report["ema_half_life"] == 500.0  # the model kept none: fine-tuning started one
    loaded = keras.saving.load_model(tmp_path / "grown.keras")
    assert loaded.pyramid.num_levels == 3 and not loaded.ema_weights
    with Image.open(tmp_path / "loss.png") as plot:
        pixels = np.asarray(plot.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2  # something was drawn
    assert {os.path.basename(p) for p in report["files"].values()} == {
        "samples.mp4", "samples.gif", "samples.png", "loss.png"}
