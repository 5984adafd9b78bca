"""Base class of the frozen text encoders that condition the diffusion model on prompts."""

import collections

import keras
import numpy as np

from keras_hpdm.checks import check_int

# Misses are encoded in chunks of at most this many prompts, each padded up to a power of
# two rows, so the backbone sees a handful of batch shapes (few JAX/TF re-traces).
_MAX_CHUNK = 32


def _bucket(n):
    return 1 << (n - 1).bit_length()


@keras.saving.register_keras_serializable(package="keras_hpdm")
class TextEncoder:
    """Frozen text encoder that turns prompts into a fixed number of token embeddings.

    Output contract of `encode(prompts)`: a dict with
    - `"embeddings"`: float32 numpy array `(B, sequence_length, embedding_dim)`, the
      encoder's last hidden states, **zero at padding positions**;
    - `"mask"`: bool numpy array `(B, sequence_length)`, True at real tokens (including
      the encoder's special start/end tokens).
    A consumer that appends the tokens to its latents can ignore `mask` (padding rows are
    zero, and each prompt's tokens do not depend on the other prompts of the batch) or use
    it as an attention mask. Prompts longer than `sequence_length` tokens are truncated.

    The encoder is frozen and is not a Keras layer: a model that stores it tracks none of
    its weights, so neither trains nor saves them. `get_config()` records only what is
    needed to load it again (its preset and sequence length), and the weights are
    reloaded from the preset. The backbone is loaded lazily, on first use.

    Embeddings are cached per prompt string in an LRU dict of `cache_size` entries
    (each holds `sequence_length * embedding_dim` float32 values): repeated prompts, such
    as the unconditional `""` of classifier-free guidance, are encoded once.

    Subclasses implement `embedding_dim`, `_token_ids(prompt)` (the packed ids of one
    prompt, at most `sequence_length` long), `_pad_id` and `_forward(token_ids, mask)`.

    Args:
        sequence_length: number of tokens per prompt `S` (>= 2: room for start/end tokens).
        cache_size: how many prompts the embedding cache holds; 0 disables it.

    Example:
    ```python
    encoder = keras_hpdm.conditioning.MiniLMTextEncoder(sequence_length=32)
    out = encoder.encode(["a cat on a skateboard", ""])
    out["embeddings"].shape  # (2, 32, 384)
    out["mask"].sum(axis=1)  # [8, 2]: [CLS] a cat on a skate ##board [SEP]; [CLS] [SEP]
    ```

    References:
        - [Skorokhodov et al., Hierarchical Patch Diffusion Models for High-Resolution
          Video Generation, CVPR 2024](https://arxiv.org/abs/2406.07792) (T5 text tokens)
    """

    def __init__(self, sequence_length=64, cache_size=512):
        self._sequence_length = check_int("sequence_length", sequence_length, low=2)
        self._cache_size = check_int("cache_size", cache_size, low=0)
        self._cache = collections.OrderedDict()
        self._hits = 0
        self._misses = 0

    @property
    def sequence_length(self):
        """Tokens per prompt `S`."""
        return self._sequence_length

    @property
    def cache_size(self):
        return self._cache_size

    @property
    def embedding_dim(self):
        """Width `D` of each token embedding."""
        raise NotImplementedError

    # --- subclass hooks -------------------------------------------------------------------

    @property
    def _pad_id(self):
        raise NotImplementedError

    def _token_ids(self, prompt):
        """Packed token ids of one prompt (with special tokens), at most `S` long."""
        raise NotImplementedError

    def _forward(self, token_ids, mask):
        """`(b, S)` int32 ids and bool mask -> `(b, S, D)` float32 numpy hidden states."""
        raise NotImplementedError

    def _pack(self, body, start_id=None, end_id=None):
        """`[start] + body + [end]`, with `body` truncated so the result fits in `S`."""
        head = [] if start_id is None else [int(start_id)]
        tail = [] if end_id is None else [int(end_id)]
        room = self._sequence_length - len(head) - len(tail)
        return head + [int(t) for t in list(body)[:room]] + tail

    # --- public API -----------------------------------------------------------------------

    def encode(self, prompts):
        """Embeds prompts: see the class docstring for the output contract.

        Args:
            prompts: a string or a list/tuple/1-D array of strings (bytes are decoded as
                UTF-8, as `tf.data` yields them).

        Returns:
            dict with `"embeddings"` float32 `(B, S, D)` and `"mask"` bool `(B, S)`.
        """
        prompts = _check_prompts(prompts)
        entries, todo = {}, []
        for prompt in dict.fromkeys(prompts):  # unique, in order
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                entries[prompt] = self._cache[prompt]
            else:
                todo.append(prompt)
        for i in range(0, len(todo), _MAX_CHUNK):
            chunk = todo[i : i + _MAX_CHUNK]
            for prompt, entry in zip(chunk, self._encode_uncached(chunk), strict=True):
                entries[prompt] = entry
                self._store(prompt, entry)
        self._misses += len(todo)
        self._hits += len(prompts) - len(todo)
        s, d = self._sequence_length, self.embedding_dim
        embeddings = np.zeros((len(prompts), s, d), np.float32)
        mask = np.zeros((len(prompts), s), bool)
        for b, prompt in enumerate(prompts):
            embeddings[b], mask[b] = entries[prompt]
        return {"embeddings": embeddings, "mask": mask}

    def encode_pooled(self, prompts):
        """One unit-norm vector per prompt: the mean over real tokens, L2-normalised.

        This is the sentence embedding of sentence-transformers models (all-MiniLM-L6-v2's
        pooling), also usable as a global conditioning vector.

        Returns:
            float32 numpy array `(B, D)`.
        """
        out = self.encode(prompts)
        weights = out["mask"][..., None].astype(np.float32)
        pooled = (out["embeddings"] * weights).sum(axis=1) / np.maximum(weights.sum(1), 1.0)
        norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
        return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)

    def cache_info(self):
        """`{"hits", "misses", "size", "max_size"}`: misses are prompts run through the model."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "size": len(self._cache),
            "max_size": self._cache_size,
        }

    def clear_cache(self):
        """Empties the embedding cache and resets its counters."""
        self._cache.clear()
        self._hits = self._misses = 0

    def get_config(self):
        return {"sequence_length": self._sequence_length, "cache_size": self._cache_size}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # --- internals ------------------------------------------------------------------------

    def _encode_uncached(self, prompts):
        ids = [self._token_ids(p) for p in prompts]
        rows = _bucket(len(ids))
        token_ids = np.full((rows, self._sequence_length), self._pad_id, np.int32)
        mask = np.zeros((rows, self._sequence_length), bool)
        for b in range(rows):
            row = ids[min(b, len(ids) - 1)]  # filler rows repeat a real prompt
            token_ids[b, : len(row)] = row
            mask[b, : len(row)] = True
        hidden = np.asarray(self._forward(token_ids, mask), np.float32)
        hidden = np.where(mask[..., None], hidden, np.float32(0.0))
        entries = []
        for b in range(len(ids)):
            emb, valid = hidden[b].copy(), mask[b].copy()
            emb.flags.writeable = valid.flags.writeable = False  # shared by the cache
            entries.append((emb, valid))
        return entries

    def _store(self, prompt, entry):
        if self._cache_size == 0:
            return
        self._cache[prompt] = entry
        self._cache.move_to_end(prompt)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _check_prompts(prompts):
    if isinstance(prompts, str | bytes):
        prompts = [prompts]
    elif isinstance(prompts, np.ndarray):
        if prompts.ndim > 1:
            raise ValueError(f"`prompts` must be 1-D, got an array of shape {prompts.shape}.")
        prompts = prompts.reshape(-1).tolist()
    elif not isinstance(prompts, list | tuple):
        raise TypeError(
            "`prompts` must be a string or a list/tuple/1-D array of strings, "
            f"got {type(prompts).__name__}."
        )
    out = []
    for p in prompts:
        if isinstance(p, bytes):
            p = p.decode("utf-8")
        if not isinstance(p, str):
            raise TypeError(f"`prompts` must contain only strings, got {type(p).__name__}.")
        out.append(p)
    return out
