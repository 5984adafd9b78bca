"""Learned attention pooling of text tokens into one prompt vector (float32 island)."""

import keras
from keras import ops

from keras_hpdm.checks import check_int


@keras.saving.register_keras_serializable(package="keras_hpdm")
class TextAttentionPooling(keras.layers.Layer):
    """Pools `(B, S, D)` text-token embeddings into one RMS-normalised `(B, D)` vector.

    Each of `num_heads` heads has a learned query; it scores every real token (a token row
    that is not all zero: the text encoders zero their padding), softmaxes the scores
    over the tokens and averages its own `D / num_heads` channels of the tokens with those
    weights. The heads' averages are joined and RMS-normalised.

    Why not the mean of the tokens: a sentence embedding is dominated by what captions share
    (template, digit and speed words), and a new wording of a direction moves it in ways a
    linear read-out trained on other wordings does not follow. A query learns to look at
    the tokens that carry a fact, whose contextual embeddings transfer better. Measured on
    captioned Moving MNIST with all-MiniLM-L6-v2 (`python scripts/text_pooling_probe.py`),
    the direction read by a linear layer trained on training wordings: 79-82% of
    held-out paraphrases from the mean, 100% from 8 heads (compass words: 14-20%, both).

    The queries start at zero: every head then weighs the real tokens equally, which is
    the mean of the tokens, so a model trained with mean pooling keeps its function when
    it gains this layer. All-zero text (the null condition of classifier-free guidance)
    pools to zero. Always float32 (softmax over a few tokens, and the output feeds the
    float32 condition path).

    Args:
        num_heads: number of queries; must divide the embedding width.

    Call arguments:
        tokens: `(B, S, D)` token embeddings, zero at padding.

    Returns:
        `(B, D)` float32, RMS-normalised (zero for all-zero text).

    Example:
    ```python
    pooled = TextAttentionPooling(num_heads=8)(encoder.encode(prompts)["embeddings"])
    ```

    References:
        - [Saharia et al., Photorealistic Text-to-Image Diffusion Models with Deep
          Language Understanding (Imagen), 2022](https://arxiv.org/abs/2205.11487)
          (attention pooling of the text tokens into the conditioning vector)
    """

    float32_island = True

    def __init__(self, num_heads=8, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads, low=1)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"`num_heads` ({self.num_heads}) must divide the text "
                             f"embedding width, got {dim}.")
        self.queries = self.add_weight(shape=(self.num_heads, dim), initializer="zeros",
                                       name="queries")
        self.built = True

    def call(self, tokens):
        tokens = ops.cast(tokens, "float32")
        dim = tokens.shape[-1]
        energy = ops.mean(ops.square(tokens), -1)  # (B, S)
        real = energy > 0
        # Keys at unit scale per token, so a query's size alone sets how sharp it looks.
        keys = tokens * ops.rsqrt(energy + 1e-12)[..., None]
        scores = ops.einsum("bsd,hd->bhs", keys, self.queries)
        scores = ops.where(real[:, None, :], scores, -1e9)
        weights = ops.softmax(scores, axis=-1)  # all-padding rows: uniform over zeros
        heads = ops.reshape(tokens, tuple(ops.shape(tokens)[:2])
                            + (self.num_heads, dim // self.num_heads))
        pooled = ops.reshape(ops.einsum("bhs,bshc->bhc", weights, heads), (-1, dim))
        return pooled * ops.rsqrt(ops.mean(ops.square(pooled), -1, keepdims=True) + 1e-12)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}
