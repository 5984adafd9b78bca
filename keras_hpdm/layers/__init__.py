"""Backend-agnostic Keras layers of HPDM (one public class per module)."""

from keras_hpdm.layers.attention import Attention
from keras_hpdm.layers.class_embedding import ClassEmbedding
from keras_hpdm.layers.crop_resample import CropResample
from keras_hpdm.layers.deep_context_fusion import DeepContextFusion
from keras_hpdm.layers.downsample3d import Downsample3D
from keras_hpdm.layers.factorized_attention import FactorizedAttention
from keras_hpdm.layers.mlp import MLP
from keras_hpdm.layers.patch_tokenizer import PatchDetokenizer, PatchTokenizer
from keras_hpdm.layers.rin_block import RINBlock
from keras_hpdm.layers.sigma_embedding import SigmaEmbedding
from keras_hpdm.layers.text_attention_pooling import TextAttentionPooling
from keras_hpdm.layers.token_grid_mixing import TokenGridMixing
from keras_hpdm.layers.unet_res_block import UNetResBlock
from keras_hpdm.layers.upsample3d import Upsample3D

__all__ = [
    "MLP",
    "Attention",
    "ClassEmbedding",
    "CropResample",
    "DeepContextFusion",
    "Downsample3D",
    "FactorizedAttention",
    "PatchDetokenizer",
    "PatchTokenizer",
    "RINBlock",
    "SigmaEmbedding",
    "TextAttentionPooling",
    "TokenGridMixing",
    "UNetResBlock",
    "Upsample3D",
]
