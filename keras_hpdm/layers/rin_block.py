"""Recurrent Interface Network block: read -> latent self-attention -> write."""

import keras

from keras_hpdm.checks import check_int, check_number
from keras_hpdm.layers.attention import Attention
from keras_hpdm.layers.mlp import MLP
from keras_hpdm.layers.token_grid_mixing import TokenGridMixing


def _norm(name):
    # Float32 island: normalisation statistics stay in float32 under mixed precision.
    return keras.layers.LayerNormalization(epsilon=1e-6, dtype="float32", name=name)


@keras.saving.register_keras_serializable(package="keras_hpdm")
class RINBlock(keras.layers.Layer):
    """One RIN block (pre-LN residual form, as in the official `TapeDenoiser`).

    ```
    read:    z += Attn(LN(z), LN(x));  z += MLP(LN(z))       latents read data tokens
    compute: K x { z += Attn(LN(z));   z += MLP(LN(z)) }     latent self-attention
    write:   x += Attn(LN(x), LN(z));  x += MLP(LN(x))       data tokens read latents
    ```
    There is no attention among data tokens: cost is linear in their number. With a
    `grid_size`, the write step also mixes neighbouring tokens, `x += Mix(LN(x))` after
    its attention (`TokenGridMixing`, a depthwise convolution over the token grid).

    With a conditioning vector `cond` (noise level, class, text), every `LN(.)` above
    becomes `LN(.) * (1 + scale) + shift`, `scale, shift = Dense(SiLU(RMSNorm(cond)))`
    (adaptive layer norm, as the UNet's AdaGN). The Dense starts at zero, so a new block computes
    exactly the unconditioned one. RIN itself only appends conditioning tokens to the
    latents; DiT found that "in-context" form far weaker than adaptive norms, and ours
    ignored its class for 11k steps (issue 13).

    Args:
        num_latent_layers: K, latent self-attention layers per block.
        num_heads: heads of every attention; must divide both widths.
        mlp_ratio: MLP hidden width multiple in the latent (read/compute) MLPs.
        data_mlp_ratio: MLP hidden width multiple of the data tokens' (write) MLP;
            defaults to `mlp_ratio`.
        grid_size: `(f, h, w)` grid the data tokens form, to mix neighbours; None (RIN's
            original block): no mixing among data tokens.

    Call arguments:
        tokens: `(B, N, d)` data (interface) tokens.
        latents: `(B, M, d_latent)` latent tokens (conditioning tokens included).
        cond: optional `(B, D)` conditioning vector for the adaptive norms (the block
            builds them when first called with one).

    Returns:
        `(tokens, latents)` updated.

    Example:
    ```python
    tokens, latents = RINBlock(num_latent_layers=2, num_heads=4)(tokens, latents)
    ```

    References:
        - [Jabri, Fleet, Chen, Scalable Adaptive Computation for Iterative Generation,
          ICML 2023](https://arxiv.org/abs/2212.11972)
        - [Peebles, Xie, Scalable Diffusion Models with Transformers (DiT), ICCV 2023](
          https://arxiv.org/abs/2212.09748)
    """

    def __init__(self, num_latent_layers=4, num_heads=8, mlp_ratio=4, data_mlp_ratio=None,
                 grid_size=None, **kwargs):
        super().__init__(**kwargs)
        self.num_latent_layers = check_int("num_latent_layers", num_latent_layers, low=0)
        self.num_heads = check_int("num_heads", num_heads, low=1)
        positive = dict(low=0.0, low_open=True)
        check_number("mlp_ratio", mlp_ratio, **positive)
        check_number("data_mlp_ratio", data_mlp_ratio, allow_none=True, **positive)
        self.mlp_ratio = mlp_ratio
        self.data_mlp_ratio = data_mlp_ratio or mlp_ratio
        self.grid_size = None if grid_size is None else tuple(grid_size)
        self.token_mixing = None
        if grid_size is not None:
            self.token_mixing = TokenGridMixing(grid_size, dtype=self.dtype_policy,
                                                name="token_mixing")

    def build(self, tokens_shape, latents_shape, cond_shape=None):
        d, dz = tokens_shape[-1], latents_shape[-1]
        for name, dim in (("data", d), ("latent", dz)):
            if dim % self.num_heads:
                raise ValueError(
                    f"The {name} width ({dim}) must be divisible by `num_heads` "
                    f"({self.num_heads})."
                )
        policy = self.dtype_policy
        tok, lat = tuple(tokens_shape), tuple(latents_shape)
        self.read_norm_z, self.read_norm_x = _norm("read_norm_z"), _norm("read_norm_x")
        self.read_attn = Attention(self.num_heads, dtype=policy, name="read_attn")
        self.read_mlp_norm = _norm("read_mlp_norm")
        self.read_mlp = MLP(self.mlp_ratio, dtype=policy, name="read_mlp")
        k = range(self.num_latent_layers)
        # Separate lists (not tuples) so Keras tracks every sub-layer's weights.
        self.latent_attn_norms = [_norm(f"latent_{i}_attn_norm") for i in k]
        self.latent_attns = [Attention(self.num_heads, dtype=policy, name=f"latent_{i}_attn")
                             for i in k]
        self.latent_mlp_norms = [_norm(f"latent_{i}_mlp_norm") for i in k]
        self.latent_mlps = [MLP(self.mlp_ratio, dtype=policy, name=f"latent_{i}_mlp") for i in k]
        self.write_norm_x, self.write_norm_z = _norm("write_norm_x"), _norm("write_norm_z")
        self.write_attn = Attention(self.num_heads, dtype=policy, name="write_attn")
        self.write_mlp_norm = _norm("write_mlp_norm")
        self.write_mlp = MLP(self.data_mlp_ratio, dtype=policy, name="write_mlp")
        for layer, shape in ((self.read_norm_z, lat), (self.read_norm_x, tok),
                             (self.read_mlp_norm, lat), (self.read_mlp, lat),
                             (self.write_norm_x, tok), (self.write_norm_z, lat),
                             (self.write_mlp_norm, tok), (self.write_mlp, tok)):
            layer.build(shape)
        if self.token_mixing is not None:
            self.mixing_norm = _norm("mixing_norm")
            self.mixing_norm.build(tok)
            self.token_mixing.build(tok)
        self.read_attn.build(lat, tok)
        self.write_attn.build(tok, lat)
        for norm_a, attn, norm_m, mlp in self._latent_layers():
            norm_a.build(lat)
            attn.build(lat)
            norm_m.build(lat)
            mlp.build(lat)
        # One (scale, shift) pair per norm, in the order `call` applies them.
        self._modulated_widths = ([dz, d, dz] + [dz, dz] * self.num_latent_layers
                                  + [d, dz, d])
        self.modulation = None
        if cond_shape is not None:
            self.modulation = keras.layers.Dense(
                2 * sum(self._modulated_widths), kernel_initializer="zeros", dtype=policy,
                name="modulation")
            self.modulation.build(tuple(cond_shape))

    def _latent_layers(self):
        return zip(self.latent_attn_norms, self.latent_attns, self.latent_mlp_norms,
                   self.latent_mlps, strict=True)

    def _modulations(self, cond):
        """`(scale, shift)` pairs, each `(B, 1, width)`, for the norms in call order."""
        if cond is None or self.modulation is None:
            return [None] * len(self._modulated_widths)
        # RMS-normalised first: the trained noise embedding reaches norms of 100+, where one
        # Adam step on the zero-initialised Dense would swing every scale by several units.
        cond = keras.ops.cast(cond, "float32")
        cond = cond * keras.ops.rsqrt(keras.ops.mean(keras.ops.square(cond), -1, True) + 1e-6)
        params = self.modulation(keras.activations.silu(cond))[:, None, :]
        pairs, start = [], 0
        for width in self._modulated_widths:
            pairs.append((params[..., start:start + width],
                          params[..., start + width:start + 2 * width]))
            start += 2 * width
        return pairs

    def _norm(self, norm, x, modulation):
        y = keras.ops.cast(norm(x), self.compute_dtype)
        if modulation is None:
            return y
        scale, shift = modulation
        return y * (1.0 + scale) + shift

    def call(self, tokens, latents, cond=None):
        mods = iter(self._modulations(cond))

        def norm(layer, v):
            return self._norm(layer, v, next(mods))

        z, x = latents, tokens
        z = z + self.read_attn(norm(self.read_norm_z, z), norm(self.read_norm_x, x))
        z = z + self.read_mlp(norm(self.read_mlp_norm, z))
        for norm_a, attn, norm_m, mlp in self._latent_layers():
            z = z + attn(norm(norm_a, z))
            z = z + mlp(norm(norm_m, z))
        x = x + self.write_attn(norm(self.write_norm_x, x), norm(self.write_norm_z, z))
        if self.token_mixing is not None:
            # Not modulated: `_modulated_widths` (and so trained files) stay as they were.
            x = x + self.token_mixing(self._norm(self.mixing_norm, x, None))
        x = x + self.write_mlp(norm(self.write_mlp_norm, x))
        return x, z

    def compute_output_shape(self, tokens_shape, latents_shape, cond_shape=None):
        return tuple(tokens_shape), tuple(latents_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_latent_layers": self.num_latent_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "data_mlp_ratio": self.data_mlp_ratio,
            "grid_size": None if self.grid_size is None else list(self.grid_size),
        }
