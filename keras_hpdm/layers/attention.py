"""Multi-head (cross-)attention with a float32 softmax island."""

import keras
from keras import ops

from keras_hpdm.checks import check_int


@keras.saving.register_keras_serializable(package="keras_hpdm")
class Attention(keras.layers.Layer):
    """Multi-head attention whose logits and softmax always run in float32.

    Keras' `MultiHeadAttention` runs its softmax in the policy's compute dtype, which
    overflows in float16 for long token sequences; here only the projections follow the
    mixed-precision policy.

    Args:
        num_heads: number of heads; must divide the query dimension.
        output_dim: output channels (defaults to the query's channels).
        zero_init_output: zero-initialise the output projection (a fresh residual
            branch is then the identity).

    Call arguments:
        query: `(B, Nq, Dq)`; context: `(B, Nk, Dk)` (defaults to `query`: self-attention).

    Example:
    ```python
    attn = Attention(num_heads=4)
    y = attn(latents, tokens)  # cross-attention: latents read tokens
    ```

    References:
        - [Vaswani et al., Attention Is All You Need, 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(self, num_heads, output_dim=None, zero_init_output=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.output_dim = check_int("output_dim", output_dim, low=1, allow_none=True)
        self.zero_init_output = zero_init_output

    def build(self, query_shape, context_shape=None):
        dim = query_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"The query dimension ({dim}) must be divisible by `num_heads` "
                f"({self.num_heads})."
            )
        context_dim = (context_shape or query_shape)[-1]
        self.head_dim = dim // self.num_heads
        dense = lambda name, **kw: keras.layers.EinsumDense(  # noqa: E731
            "btd,dhk->bthk", (None, self.num_heads, self.head_dim),
            dtype=self.dtype_policy, name=name, **kw,
        )
        self.query_proj = dense("query")
        self.key_proj = dense("key")
        self.value_proj = dense("value")
        self.query_proj.build(query_shape)
        self.key_proj.build((None, None, context_dim))
        self.value_proj.build((None, None, context_dim))
        self.output_proj = keras.layers.EinsumDense(
            "bthk,hkd->btd", (None, self.output_dim or dim), bias_axes="d",
            kernel_initializer="zeros" if self.zero_init_output else "glorot_uniform",
            dtype=self.dtype_policy, name="output",
        )
        self.output_proj.build((None, None, self.num_heads, self.head_dim))

    def call(self, query, context=None):
        context = query if context is None else context
        q, k, v = self.query_proj(query), self.key_proj(context), self.value_proj(context)
        logits = ops.einsum("bqhd,bkhd->bhqk", q, k)
        logits = ops.cast(logits, "float32") * (self.head_dim**-0.5)
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        return self.output_proj(ops.einsum("bhqk,bkhd->bqhd", weights, v))

    def compute_output_shape(self, query_shape, context_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "output_dim": self.output_dim,
            "zero_init_output": self.zero_init_output,
        }
