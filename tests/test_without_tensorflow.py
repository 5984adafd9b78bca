"""Training and sampling under JAX and torch never import TensorFlow.

The GPU machines our users (and we) train on often have JAX or torch but no TensorFlow; only
the `tf.data` pipeline and the TensorFlow backend may import it (`../shared/GPU.md`).
"""

import keras
import pytest

from keras_hpdm.testing import run_in_backends

CODE = """
import keras
import keras_hpdm

spec = keras_hpdm.PyramidSpec((2, 8, 8), 2)
backbone = keras_hpdm.backbones.RINBackbone.from_preset("tiny", pyramid=spec, channels=1,
                                              num_classes=3)
model = keras_hpdm.PatchDiffusionModel(backbone, seed=0)
model.compile(optimizer=keras.optimizers.Adam(1e-3))


class Pyramids(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        videos = rng.uniform(-1, 1, (4,) + spec.target_size + (1,)).astype("float32")
        pyramids = [spec.sample(v, seed=i) for i, v in enumerate(videos)]
        return {"patches": np.stack([p["patches"] for p in pyramids]),
                "coords": np.stack([p["coords"] for p in pyramids]),
                "label": rng.integers(0, 3, 4).astype("int32")}


history = model.fit(Pyramids(), epochs=1, verbose=0)
video = model.generate([1], num_steps=2, seed=0, verbose=0)
OUTPUTS = {"loss": np.array(history.history["loss"]), "video": video,
           "tensorflow_loaded": np.array("tensorflow" in sys.modules)}
"""


@pytest.mark.skipif(keras.config.backend() == "tensorflow",
                    reason="the TensorFlow backend imports TensorFlow by definition")
def test_fit_from_a_py_dataset_and_generate_never_import_tensorflow():
    backend = keras.config.backend()
    out = run_in_backends(CODE, [backend])[backend]
    assert out["loss"].shape == (1,) and out["loss"][0] > 0
    assert out["video"].shape == (1, 4, 16, 16, 3)
    assert not out["tensorflow_loaded"], (
        f"fit/generate under {backend} imported TensorFlow")
