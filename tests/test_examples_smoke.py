"""Smoke tests: every example runs end to end in its quick mode."""

import importlib.util
import os

import keras
import numpy as np
import pytest
from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name):
    """Imports `examples/<name>.py` as a module (in-process: shares the backend's caches)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------- train_on_clip.py
@pytest.fixture
def single_thread_torch():
    # Tiny tensors: torch's intra-op threads cost more than they save on busy shared cores.
    if keras.config.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_train_on_clip_pil_plot_without_matplotlib(tmp_path):
    example = load_example("train_on_clip")
    path = example._plot_with_pil(str(tmp_path / "plot.png"), [10, 20, 30],
                                  {"loss": [1.0, 0.6, 0.4], "level 0": [1.2, 0.8, 0.5]}, "t")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    # The total-loss curve (first colour) is drawn inside the axes, falling left to right.
    blue = np.all(pixels == (0x1F, 0x77, 0xB4), axis=-1)
    rows, cols = np.nonzero(blue[:, 60:560])  # left of the legend
    assert rows.size > 50
    assert rows[cols < 100].mean() < rows[cols > 400].mean()  # falling loss: y grows down
