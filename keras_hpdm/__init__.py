"""keras_hpdm: Hierarchical Patch Diffusion Models for high-resolution video in Keras 3.

Runs under JAX, TensorFlow and PyTorch: set `KERAS_BACKEND` before importing.
"""

import os as _os

# Quiet TensorFlow's C++ start-up banner (CUDA probing on CPU machines) unless asked for.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_hpdm import (  # noqa: E402
    backbones,
    callbacks,
    conditioning,
    data,
    diffusion,
    layers,
    metrics,
    pretrained,
)
from keras_hpdm.models import PatchDiffusionModel  # noqa: E402
from keras_hpdm.optimizers import hpdm_optimizer  # noqa: E402
from keras_hpdm.pyramid import PyramidSpec  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PatchDiffusionModel",
    "PyramidSpec",
    "__version__",
    "backbones",
    "callbacks",
    "conditioning",
    "data",
    "diffusion",
    "hpdm_optimizer",
    "layers",
    "metrics",
    "pretrained",
]
