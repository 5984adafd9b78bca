"""Conditioning: frozen text encoders for text-to-video (class labels live in layers/)."""

import os

from keras_hpdm.conditioning.keras_hub_text_encoder import (
    KerasHubTextEncoder,
    set_allow_download,
)
from keras_hpdm.conditioning.minilm_text_encoder import MiniLMTextEncoder
from keras_hpdm.conditioning.text_encoder import TextEncoder


def get_text_encoder(spec="minilm", allow_download=None, **kwargs):
    """Resolves a text-encoder spec to a `TextEncoder` (or None: no text conditioning).

    Args:
        spec: None; a `TextEncoder` (returned as is); a serialized encoder dict (from
            `keras.saving.serialize_keras_object`, as a saved diffusion model records it);
            `"minilm"` (the default offline `MiniLMTextEncoder`); or any other string, taken
            as a keras-hub preset path or name for `KerasHubTextEncoder`.
        allow_download: for a keras-hub encoder: whether a preset that is not a local
            directory may be downloaded (None: `set_allow_download`'s setting, off by
            default, so an encoder a saved model names never downloads by itself).
        **kwargs: `sequence_length` / `cache_size`, only when `spec` is a string.

    Example:
    ```python
    get_text_encoder("minilm", sequence_length=32)
    get_text_encoder("/models/t5_1.1_xl")
    ```
    """
    if isinstance(spec, str | os.PathLike) and str(spec).lower() == "minilm":
        return MiniLMTextEncoder(**kwargs)  # bundled: nothing to download
    if isinstance(spec, str | os.PathLike):
        return KerasHubTextEncoder(spec, allow_download=allow_download, **kwargs)
    if kwargs:
        raise ValueError(
            f"`sequence_length`/`cache_size` apply only to a string spec, got {sorted(kwargs)} "
            f"with spec={spec!r}."
        )
    if spec is None or isinstance(spec, TextEncoder):
        return spec
    if isinstance(spec, dict):
        import keras

        encoder = keras.saving.deserialize_keras_object(spec)
        if not isinstance(encoder, TextEncoder):
            raise TypeError(f"`spec` deserialized to {type(encoder).__name__}, not a TextEncoder.")
        if isinstance(encoder, KerasHubTextEncoder) and allow_download is not None:
            encoder.allow_download = allow_download
        return encoder
    raise TypeError(
        "`spec` must be None, a TextEncoder, a serialized encoder dict, 'minilm' or a "
        f"keras-hub preset path/name, got {type(spec).__name__}."
    )


__all__ = [
    "KerasHubTextEncoder",
    "MiniLMTextEncoder",
    "TextEncoder",
    "get_text_encoder",
    "set_allow_download",
]
