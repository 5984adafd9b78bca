"""Backend-agnostic Keras layers of HPDM (one public class per module)."""

from keras_hpdm.layers.attention import Attention
from keras_hpdm.layers.class_embedding import ClassEmbedding
from keras_hpdm.layers.crop_resample import CropResample
from keras_hpdm.layers.deep_context_fusion import DeepContextFusion
from keras_hpdm.layers.mlp import MLP
from keras_hpdm.layers.patch_tokenizer import PatchDetokenizer, PatchTokenizer
from keras_hpdm.layers.rin_block import RINBlock
from keras_hpdm.layers.sigma_embedding import SigmaEmbedding

__all__ = [
    "MLP",
    "Attention",
    "ClassEmbedding",
    "CropResample",
    "DeepContextFusion",
    "PatchDetokenizer",
    "PatchTokenizer",
    "RINBlock",
    "SigmaEmbedding",
]
