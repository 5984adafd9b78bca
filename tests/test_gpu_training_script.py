"""`scripts/gpu_train_moving_mnist.py` cuts its batches (vectorised over the batch, for speed)
into exactly the pyramids `PyramidSpec` cuts; the README runs the script itself
(tests/test_docs.py)."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_hpdm
from keras_hpdm.data.moving_mnist import moving_mnist

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train_moving_mnist.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_train_moving_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(keras.config.backend() != "jax", reason="numpy only: runs in the jax pass")
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
