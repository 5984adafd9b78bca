"""RIN backbone with deep context fusion and adaptive computation (the paper's default)."""

import keras
from keras import ops

from keras_hpdm.backbones.hpdm_backbone import HPDMBackbone, fold_levels, unfold_levels
from keras_hpdm.backbones.rin_presets import rin_presets
from keras_hpdm.checks import check_int, check_int_tuple, check_number
from keras_hpdm.layers.class_embedding import ClassEmbedding
from keras_hpdm.layers.patch_tokenizer import PatchDetokenizer, PatchTokenizer
from keras_hpdm.layers.rin_block import RINBlock
from keras_hpdm.pyramid import AXES


@keras.saving.register_keras_serializable(package="keras_hpdm")
class RINBackbone(HPDMBackbone):
    """Recurrent Interface Network over a patch pyramid (paper §4.2-4.3, Fig. 11).

    Each level's patch is tokenised (3-D patchify + learned positions) and owns a set of
    latents; conditioning enters as extra latent tokens: the noise-level vector (which also
    carries class and pooled text), the class on a token of its own, and the text tokens.
    Each is layer-normalised before attention, so a class weighs as much as the noise level
    however large the noise embedding grows in training. The noise-level vector also
    modulates every layer norm of every block (adaptive norms, see `RINBlock`). Block
    `b` runs the first `levels_per_block[b]` levels (levels folded into the batch) after a
    deep context fusion of their data tokens; levels never attend to each other, so
    information flows coarse -> fine only, through DCF.

    Args:
        pyramid: `keras_hpdm.PyramidSpec`.
        tokenizer_patch: `(pf, ph, pw)` pixels per data token (the paper's 1x4x4).
        data_dim: data-token width.
        latent_dim: latent width.
        num_latents: latents per level.
        num_blocks: RIN blocks.
        num_latent_layers: latent self-attention layers per block.
        num_heads: attention heads (must divide `data_dim` and `latent_dim`).
        mlp_ratio: MLP width multiple of the latent MLPs.
        data_mlp_ratio: MLP width multiple of the data-token MLP (default: `mlp_ratio`).
        levels_per_block: adaptive computation schedule: `"linear"` (the paper's),
            `None` (every block runs every level) or a tuple of ints.
        channels: pixel channels.
        num_classes: number of classes for class conditioning (None: unconditional).
        text_dim: width of text-encoder embeddings for text conditioning (None: no text).
        cond_dim: width of the noise-level/class conditioning vector.
        adaptive_norms: modulate every block's layer norms by the conditioning vector
            (see `RINBlock`); files saved before this option existed load with False.
        fixed_positions: add fixed sinusoidal positions to the data tokens besides the
            learned ones (see `PatchTokenizer`); files saved before this option existed
            load with False.
        token_mixing: mix neighbouring data tokens in every block's write step (see
            `TokenGridMixing`); files saved before this option existed load with False.
        fusion_mode, use_coords, detach_context, coarse_prior: see `HPDMBackbone`.

    Example:
    ```python
    spec = keras_hpdm.PyramidSpec((4, 32, 32), 3)
    backbone = keras_hpdm.backbones.RINBackbone.from_preset("tiny", pyramid=spec)
    out = backbone({"patches": x, "sigma": sigma, "coords": coords})  # (B, 3, 4, 32, 32, 3)
    ```

    References:
        - [Skorokhodov et al., Hierarchical Patch Diffusion Models, CVPR 2024](
          https://arxiv.org/abs/2406.07792)
        - [Jabri et al., Scalable Adaptive Computation for Iterative Generation, ICML 2023](
          https://arxiv.org/abs/2212.11972)
    """

    presets = rin_presets

    def __init__(
        self,
        pyramid,
        tokenizer_patch=(1, 4, 4),
        data_dim=256,
        latent_dim=256,
        num_latents=128,
        num_blocks=6,
        num_latent_layers=4,
        num_heads=8,
        mlp_ratio=4,
        data_mlp_ratio=None,
        levels_per_block="linear",
        channels=3,
        num_classes=None,
        text_dim=None,
        cond_dim=256,
        adaptive_norms=True,
        fixed_positions=True,
        token_mixing=True,
        fusion_mode="deep",
        use_coords=True,
        detach_context=False,
        coarse_prior=False,
        **kwargs,
    ):
        super().__init__(
            pyramid=pyramid,
            num_blocks=num_blocks,
            levels_per_block=levels_per_block,
            channels=channels,
            num_classes=num_classes,
            text_dim=text_dim,
            cond_dim=cond_dim,
            fusion_mode=fusion_mode,
            use_coords=use_coords,
            detach_context=detach_context,
            coarse_prior=coarse_prior,
            **kwargs,
        )
        num_heads = check_int("num_heads", num_heads, low=1)
        for name, dim in (("data_dim", data_dim), ("latent_dim", latent_dim)):
            if check_int(name, dim, low=1) % num_heads:
                raise ValueError(
                    f"`{name}` ({dim}) must be divisible by `num_heads` ({num_heads})."
                )
        self.tokenizer_patch = check_int_tuple("tokenizer_patch", tokenizer_patch, 3,
                                               labels=AXES)
        for axis, r, p in zip("fhw", pyramid.patch_size, self.tokenizer_patch, strict=True):
            if r % p:
                raise ValueError(
                    f"`tokenizer_patch` {self.tokenizer_patch} must divide the pyramid patch "
                    f"size {pyramid.patch_size} (axis {axis})."
                )
        self.data_dim, self.latent_dim = int(data_dim), int(latent_dim)
        if not isinstance(adaptive_norms, bool):
            raise TypeError(f"`adaptive_norms` must be True or False, got {adaptive_norms!r}.")
        self.adaptive_norms = adaptive_norms
        if not isinstance(token_mixing, bool):
            raise TypeError(f"`token_mixing` must be True or False, got {token_mixing!r}.")
        self.token_mixing = token_mixing
        self.num_latents = check_int("num_latents", num_latents, low=1)
        self.num_latent_layers = check_int("num_latent_layers", num_latent_layers, low=0)
        positive = dict(low=0.0, low_open=True)
        check_number("mlp_ratio", mlp_ratio, **positive)
        check_number("data_mlp_ratio", data_mlp_ratio, allow_none=True, **positive)
        self.num_heads, self.mlp_ratio = num_heads, mlp_ratio
        self.data_mlp_ratio = data_mlp_ratio or mlp_ratio
        self.grid_size = tuple(
            r // p for r, p in zip(pyramid.patch_size, self.tokenizer_patch, strict=True)
        )
        policy = self.dtype_policy
        self.tokenizer = PatchTokenizer(
            self.tokenizer_patch, self.data_dim, fixed_positions=fixed_positions,
            dtype=policy, name="tokenizer"
        )
        self.detokenizer = PatchDetokenizer(
            self.tokenizer_patch, self.channels, dtype=policy, name="detokenizer"
        )
        self.cond_to_latent = keras.layers.Dense(
            self.latent_dim, dtype=policy, name="cond_to_latent"
        )
        self.class_token = (
            ClassEmbedding(num_classes, self.latent_dim, dtype=policy, name="class_token")
            if num_classes else None
        )
        self.text_to_latent = (
            keras.layers.Dense(self.latent_dim, dtype=policy, name="text_to_latent")
            if text_dim
            else None
        )
        self.fusions = self.make_fusions()
        self.blocks = [
            RINBlock(
                self.num_latent_layers,
                self.num_heads,
                mlp_ratio,
                self.data_mlp_ratio,
                grid_size=self.grid_size if token_mixing else None,
                dtype=policy,
                name=f"block_{b}",
            )
            for b in range(self.num_blocks)
        ]

    def build(self, input_shape=None):
        if self.built:  # e.g. by `summary()`: Keras locks a built layer's state
            return
        self.initial_latents = self.add_weight(
            name="initial_latents",
            shape=(self.num_latents, self.latent_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        super().build(input_shape)

    def _forward(self, patches, state):
        num_levels = state.num_levels
        cond = state.cond
        tokens = unfold_levels(self.tokenizer(fold_levels(patches)), num_levels)
        latent_tokens = [self.cond_to_latent(cond)[:, :, None, :]]
        if self.class_token is not None:
            class_token = self.class_token(state.label)[:, None, None, :]  # (B, 1, 1, dz)
            latent_tokens.append(class_token + ops.zeros_like(latent_tokens[0]))
        if self.text_to_latent is not None:
            text_tokens = ops.cast(state.text, self.compute_dtype)
            text_latents = self.text_to_latent(text_tokens)[:, None]  # (B, 1, S, dz)
            latent_tokens.append(text_latents + ops.zeros_like(latent_tokens[0][:, :, :1, :1]))
        init = ops.cast(self.initial_latents, self.compute_dtype)[None, None]
        latents = ops.concatenate(
            [init + ops.zeros_like(latent_tokens[0][:, :, :1, :1])] + latent_tokens, axis=2
        )  # (B, L, M + 1 (+ 1) (+ S), dz); tokens are (B, L, f', h', w', d)

        for b in range(self.num_blocks):
            def step(fused, z, n, b=b):
                flat, z = self.blocks[b](
                    ops.reshape(fold_levels(fused), (-1, self.num_tokens, self.data_dim)),
                    fold_levels(z),
                    fold_levels(cond[:, :n]) if self.adaptive_norms else None,
                )
                flat = ops.reshape(flat, (-1,) + tuple(fused.shape[2:]))
                return unfold_levels(flat, n), unfold_levels(z, n)

            tokens, latents = self.run_block(b, state, step, tokens, latents)
        return unfold_levels(self.detokenizer(fold_levels(tokens)), num_levels)

    @property
    def num_tokens(self):
        f, h, w = self.grid_size
        return f * h * w

    def get_config(self):
        return {
            **super().get_config(),
            "tokenizer_patch": list(self.tokenizer_patch),
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "num_latents": self.num_latents,
            "num_latent_layers": self.num_latent_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "data_mlp_ratio": self.data_mlp_ratio,
            "adaptive_norms": self.adaptive_norms,
            "fixed_positions": self.tokenizer.fixed_positions,
            "token_mixing": self.token_mixing,
        }

    @classmethod
    def from_config(cls, config):
        # Files written before these options existed: no adaptive-norm weights, learned
        # positions only.
        return super().from_config({"adaptive_norms": False, "fixed_positions": False,
                                    "token_mixing": False, **config})
