"""Text encoder from any local keras-hub preset (T5, CLIP, BERT-like, ...)."""

import os

import keras
import numpy as np

from keras_hpdm.conditioning.text_encoder import TextEncoder

_ID_INPUTS = ("token_ids", "encoder_token_ids")
_MASK_INPUTS = ("padding_mask", "encoder_padding_mask")
_SEQUENCE_OUTPUTS = ("encoder_sequence_output", "sequence_output")

# Off by default: a `.keras` file names its text encoder, and loading a file must not make
# the process download whatever the file names.
_allow_download = False


def set_allow_download(allow):
    """Sets whether text encoders that name a remote keras-hub preset may download it.

    Applies to every `KerasHubTextEncoder` created with `allow_download=None` (the default),
    which includes those a saved diffusion model names: off by default, so a `.keras` file
    never makes the process download anything. The CLI's `--allow-download` sets it.

    Args:
        allow: bool.

    Returns:
        The previous setting (to restore it).
    """
    global _allow_download
    if not isinstance(allow, bool):
        raise TypeError(f"`allow` must be a bool, got {allow!r}.")
    previous, _allow_download = _allow_download, allow
    return previous


def _text_model(backbone):
    """The part of `backbone` that maps token ids to per-token hidden states."""
    # CLIP / SigLIP style: a dual encoder whose text tower is a sub-model.
    text_encoder = getattr(backbone, "text_encoder", None)
    if isinstance(text_encoder, keras.Model):
        backbone = text_encoder
    inputs = backbone.input if isinstance(backbone.input, dict) else {}
    outputs = backbone.output
    # Encoder-decoder (T5, BART): keep the encoder half only, so no decoder runs.
    if "encoder_token_ids" in inputs and isinstance(outputs, dict):
        keep = {k: v for k, v in inputs.items() if k.startswith("encoder_")}
        return keras.Model(keep, outputs["encoder_sequence_output"], name="text_encoder")
    return backbone


def _sequence_output(outputs):
    if isinstance(outputs, dict):
        for key in _SEQUENCE_OUTPUTS:
            if key in outputs:
                return outputs[key]
        raise ValueError(f"The backbone outputs {sorted(outputs)}, none of {_SEQUENCE_OUTPUTS}.")
    return outputs


def _backbone_and_tokenizer(keras_hub, preset):
    backbone = keras_hub.models.Backbone.from_preset(preset, dtype="float32")
    try:
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"Could not load a tokenizer from preset {preset!r}: {e}") from e
    return backbone, tokenizer


@keras.saving.register_keras_serializable(package="keras_hpdm")
class KerasHubTextEncoder(TextEncoder):
    """Token-level text embeddings from a keras-hub backbone preset.

    Loads `keras_hub.models.Backbone.from_preset(preset)` and
    `keras_hub.tokenizers.Tokenizer.from_preset(preset)` (in float32, frozen) and returns
    the per-token hidden states: the encoder output for encoder-decoder models (T5, as in
    the paper; the decoder is never run), the text tower's sequence output for CLIP-like
    dual encoders, `sequence_output` (or the single output) otherwise. Tokens are packed as
    `[start] prompt [end]`, where the start token is added only when the tokenizer's start
    and end tokens differ (T5 uses `prompt </s>`). The weights stay in the preset: a
    diffusion model records only `preset` and `sequence_length`.

    Downloads are opt-in: a preset that is not a local directory (a built-in preset name or
    a `kaggle://` / `hf://` handle) is fetched only with `allow_download=True`, or with
    `allow_download=None` after `keras_hpdm.conditioning.set_allow_download(True)` (CLI:
    `--allow-download`). An encoder a saved model names gets `None`: loading a file never
    downloads by itself.

    Args:
        preset: a keras-hub preset: a local directory (as written by `save_to_preset`), a
            built-in preset name or a `kaggle://` / `hf://` handle (those download).
        sequence_length: tokens per prompt (at most the backbone's `max_sequence_length`
            when it has one, e.g. 77 for CLIP).
        cache_size: prompts kept in the embedding cache; 0 disables it.
        allow_download: whether a remote preset may be downloaded; None (default) follows
            `set_allow_download` (off unless set). Not saved with a model.

    Example:
    ```python
    encoder = KerasHubTextEncoder("/models/t5_1.1_xl", sequence_length=64)
    encoder.encode(["a timelapse of clouds"])["embeddings"].shape  # (1, 64, 2048)
    KerasHubTextEncoder("t5_base_multi", allow_download=True)  # fetched from Kaggle
    ```

    References:
        - [Raffel et al., T5, JMLR 2020](https://arxiv.org/abs/1910.10683)
        - [Radford et al., CLIP, ICML 2021](https://arxiv.org/abs/2103.00020)
    """

    def __init__(self, preset, sequence_length=64, cache_size=512, allow_download=None):
        super().__init__(sequence_length=sequence_length, cache_size=cache_size)
        if allow_download is not None and not isinstance(allow_download, bool):
            raise TypeError(f"`allow_download` must be None or a bool, got {allow_download!r}.")
        if not isinstance(preset, str | os.PathLike) or not str(preset):
            raise ValueError(f"`preset` must be a keras-hub preset path or name, got {preset!r}.")
        preset = os.fspath(preset)
        is_handle = "://" in preset
        looks_local = os.path.exists(preset) or os.sep in preset or preset.startswith(".")
        has_config = os.path.isfile(os.path.join(preset, "config.json"))
        if not is_handle and looks_local and not has_config:
            raise ValueError(
                f"`preset` {preset!r} is not a keras-hub preset directory (no config.json); "
                "write one with `backbone.save_to_preset(dir)` and `tokenizer.save_to_preset(dir)`."
            )
        self._preset = preset
        self.allow_download = allow_download
        self._model = self._tokenizer = None
        self._download_error = None

    @property
    def preset(self):
        return self._preset

    @property
    def embedding_dim(self):
        self._load()
        return int(_sequence_output(self._model.output).shape[-1])

    @property
    def _pad_id(self):
        self._load()
        return getattr(self._tokenizer, "pad_token_id", None) or 0

    @property
    def is_local(self):
        """Whether the preset is a local directory (loading it needs no network)."""
        return os.path.isdir(self._preset)

    def _check_download_allowed(self):
        allowed = _allow_download if self.allow_download is None else self.allow_download
        if not allowed:
            raise ValueError(
                f"Text encoder preset {self._preset!r} is not a local directory, and "
                "downloads are off (a model file must not decide what is downloaded): pass "
                "`allow_download=True` (CLI: --allow-download) to download it, or give a "
                "local keras-hub preset directory."
            )

    def _from_preset(self):
        """(backbone, tokenizer) from the preset; for a remote one, a clear download error."""
        import keras_hub

        if self.is_local:
            return _backbone_and_tokenizer(keras_hub, self._preset)
        self._check_download_allowed()
        # Not retried: keras-hub's own retries already take up to a minute per attempt.
        if self._download_error is not None:
            raise self._download_error
        try:
            return _backbone_and_tokenizer(keras_hub, self._preset)
        except (OSError, ValueError) as e:  # requests' errors are OSErrors
            self._download_error = ValueError(
                f"Text encoder preset {self._preset!r} could not be downloaded ({e}). Offline, "
                "download it once elsewhere, write it with `save_to_preset(dir)` (backbone "
                "and tokenizer) and give that local directory instead."
            )
            raise self._download_error from e

    def _load(self):
        if self._model is not None:
            return
        backbone, tokenizer = self._from_preset()
        model = _text_model(backbone)
        model.trainable = False
        names = set(model.input) if isinstance(model.input, dict) else set()
        if not names & set(_ID_INPUTS):
            raise ValueError(
                f"Preset {self._preset!r} holds a {type(backbone).__name__} whose inputs "
                f"{sorted(names)} include none of {_ID_INPUTS}: not a text encoder."
            )
        limit = getattr(model, "max_sequence_length", None)
        if limit is not None and self.sequence_length > limit:
            raise ValueError(
                f"`sequence_length` must be at most {limit} for preset {self._preset!r}, "
                f"got {self.sequence_length}."
            )
        self._model, self._tokenizer = model, tokenizer

    def _token_ids(self, prompt):
        self._load()
        tokenizer = self._tokenizer
        body = np.asarray(keras.ops.convert_to_numpy(tokenizer(prompt))).reshape(-1)
        start = getattr(tokenizer, "start_token_id", None)
        end = getattr(tokenizer, "end_token_id", None)
        return self._pack(body, start if start != end else None, end)

    def _forward(self, token_ids, mask):
        self._load()
        inputs = {}
        for name in self._model.input:
            if name in _ID_INPUTS:
                inputs[name] = token_ids
            elif name in _MASK_INPUTS:
                inputs[name] = mask.astype(np.int32)
            elif name == "segment_ids":
                inputs[name] = np.zeros_like(token_ids)
            else:
                raise ValueError(f"Unsupported text-encoder input {name!r} in {self._preset!r}.")
        # predict_on_batch compiles once per batch shape (jit / tf.function / no_grad).
        return _sequence_output(self._model.predict_on_batch(inputs))

    def get_config(self):
        return {"preset": self._preset, **super().get_config()}
