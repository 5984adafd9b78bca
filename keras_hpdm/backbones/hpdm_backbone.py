"""Shared machinery of HPDM backbones: inputs, conditioning, adaptive computation, DCF."""

import copy
import dataclasses
import math
import re
import shutil
import textwrap

import keras
from keras import ops

from keras_hpdm.backbones.levels_schedule import resolve_levels_per_block
from keras_hpdm.checks import check_bool, check_int
from keras_hpdm.layers.class_embedding import ClassEmbedding
from keras_hpdm.layers.deep_context_fusion import DeepContextFusion
from keras_hpdm.layers.sigma_embedding import SigmaEmbedding
from keras_hpdm.layers.text_attention_pooling import TextAttentionPooling
from keras_hpdm.pyramid import PyramidSpec


def print_notes(lines, print_fn=None, line_length=None):
    """Prints lines after a `summary()` table, wrapped to its width, through its `print_fn`."""
    width = max(line_length or min(88, shutil.get_terminal_size().columns - 4), 40)
    keep = lambda m: m.group(0).replace(" ", "\0")  # noqa: E731 (no break inside a shape)
    text = "\n".join(
        textwrap.fill(re.sub(r"\([^()]*\)", keep, line), width, initial_indent=" ",
                      subsequent_indent="   ").replace("\0", " ")
        for line in lines
    )
    (print_fn or print)(text)


# Where context fusion runs: before every block (the paper's DCF), only on the first block's
# inputs (the paper's "shallow fusion" ablation), or nowhere.
FUSION_MODES = ("deep", "shallow", "none")
# Queries that pool a text model's prompt tokens into its condition vector (see
# `TextAttentionPooling`): a few facts per prompt, each worded a few tokens long. Widths
# that 8 does not divide get the largest count that divides them.
TEXT_POOLING_HEADS = 8


def fold_levels(x):
    """`(B, L, ...) -> (B * L, ...)`: levels become batch entries (static trailing shape)."""
    return ops.reshape(x, (-1,) + tuple(x.shape[2:]))


def unfold_levels(x, num_levels):
    """`(B * L, ...) -> (B, L, ...)`."""
    return ops.reshape(x, (-1, num_levels) + tuple(x.shape[1:]))


@dataclasses.dataclass
class PyramidPass:
    """What one forward pass shares across blocks (built by `HPDMBackbone.call`).

    `cond` is the per-(sample, level) conditioning `(B, L, cond_dim)` of the running levels;
    `coords` covers the context levels first, then the running ones; `recorder` collects the
    block inputs when the caller asked for context (else None).
    """

    cond: object
    coords: object
    label: object
    text: object
    num_levels: int
    num_context: int
    context: object
    recorder: list | None


class HPDMBackbone(keras.Model):
    """Base class of pyramid backbones (`RINBackbone`, `UNet3DBackbone`).

    Every backbone takes the noisy, preconditioned pyramid and returns one output per level:
    `backbone({"patches": (B, L, f, h, w, C), "sigma": (B, L), "coords": (B, L, 6),
    "label": (B,) optional, "text_embeddings": (B, S, D) optional}) -> (B, L, f, h, w, C)`.
    `L` may be smaller than `pyramid.num_levels` (a pyramid cut after level `L - 1`):
    levels never see finer levels, so their outputs do not change.

    `call` is a template: it checks the inputs, joins cached context coordinates and embeds
    the conditions once, then hands a `PyramidPass` to the subclass's `_forward(patches,
    state)`. Subclasses run each block through `self.run_block(...)` (adaptive computation,
    then deep context fusion through `self.fuse(...)` with their `self.fusions[block]`),
    which makes cached inference generic: `encode_context(inputs)` records, per block, the
    block-input features of finished coarse levels, and `call(inputs, context=...)` runs
    only new levels against them (paper §4.4 "cached inference").

    The context switches below exist for the paper's ablations (Table 3); the defaults are
    the paper's model. They are saved in the config.

    Args (shared by every backbone):
        fusion_mode: `"deep"` (default): fusion before every block, on each block's inputs.
            `"shallow"`: one fusion of the first block's inputs (the tokens straight from the
            tokenizer / input convolution) for every level, so a level sees a linear
            function of the coarser patches' pixels, as cascaded models see the low-res
            video; later blocks fuse nothing. `"none"`: no fusion; levels never see each
            other (nor their coordinates).
        use_coords: the fusions add the patch coordinates (`DeepContextFusion`).
        detach_context: the fusions stop gradients into the coarser levels.
        coarse_prior: add to the coarsest level's output (the whole video at patch size) a
            learned linear map of the conditions: the noise-level vector and, for text
            models, the attention-pooled text embedding. At high noise the best denoiser of that
            level outputs the mean video given the condition (where the prompt puts
            things); the blocks reach a condition-dependent layout only slowly (measured:
            captioned Moving MNIST direction, `keras_hpdm.metrics.caption_sensitivity`),
            this map reaches it directly. Starts at zero (a new map leaves a trained
            network's output unchanged); False in files saved before it existed. It has
            `(cond_dim + text_dim) * prod(patch_size) * channels` weights (492k for the
            `mini` preset's text model at 4x16x16x1): meant for small patches.
    """

    presets = {}

    def __init__(self, pyramid, num_blocks, levels_per_block="linear", channels=3,
                 num_classes=None, text_dim=None, cond_dim=256, fusion_mode="deep",
                 use_coords=True, detach_context=False, coarse_prior=False, **kwargs):
        # Keras would cast every float input to the compute dtype, `sigma` included, before
        # it reaches the float32 `SigmaEmbedding` (half precision merges noise levels ~0.4%
        # apart); sub-layers still cast their own inputs.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if isinstance(pyramid, dict):
            pyramid = keras.saving.deserialize_keras_object(pyramid)
        if not isinstance(pyramid, PyramidSpec):
            raise TypeError(f"`pyramid` must be a keras_hpdm.PyramidSpec, got {pyramid!r}.")
        self.pyramid = pyramid
        self.num_blocks = check_int("num_blocks", num_blocks, low=1)
        self.levels_per_block = resolve_levels_per_block(
            levels_per_block, self.num_blocks, pyramid.num_levels
        )
        self._levels_per_block_arg = (
            list(levels_per_block) if isinstance(levels_per_block, (list, tuple))
            else levels_per_block
        )
        self.channels = check_int("channels", channels, low=1)
        self.num_classes = check_int("num_classes", num_classes, low=1, allow_none=True)
        self.text_dim = check_int("text_dim", text_dim, low=1, allow_none=True)
        self.cond_dim = check_int("cond_dim", cond_dim, low=1)
        if not isinstance(fusion_mode, str) or fusion_mode not in FUSION_MODES:
            raise ValueError(f"`fusion_mode` must be one of {FUSION_MODES}, got "
                             f"{fusion_mode!r}.")
        self.fusion_mode = fusion_mode
        self.use_coords = check_bool("use_coords", use_coords)
        self.detach_context = check_bool("detach_context", detach_context)
        self.coarse_prior = check_bool("coarse_prior", coarse_prior)
        self.fusion_blocks = {"deep": tuple(range(self.num_blocks)), "shallow": (0,),
                              "none": ()}[fusion_mode]
        # Every condition joins the noise features before the shared MLP (EDM/ADM), at
        # their unit scale; see `SigmaEmbedding`.
        self.sigma_embedding = SigmaEmbedding(self.cond_dim, name="sigma_embedding")
        features = self.sigma_embedding.frequency_dim
        self.class_embedding = (
            ClassEmbedding(num_classes, features, dtype=self.dtype_policy,
                           name="class_embedding")
            if num_classes else None
        )
        # Pooled text -> the same feature space, at unit scale (the pooled embedding is
        # RMS-normalised, the kernel starts with unit gain); backbones may also read the
        # tokens.
        self.text_attention = (
            TextAttentionPooling(math.gcd(TEXT_POOLING_HEADS, text_dim), name="text_attention")
            if text_dim else None
        )
        self.text_pooling = (
            keras.layers.Dense(
                features, dtype="float32", name="text_pooling",
                kernel_initializer=keras.initializers.RandomNormal(stddev=text_dim**-0.5))
            if text_dim else None
        )
        r = pyramid.patch_size
        self.coarse_prior_map = (
            keras.layers.Dense(r[0] * r[1] * r[2] * self.channels, kernel_initializer="zeros",
                               dtype="float32", name="coarse_prior")
            if self.coarse_prior else None
        )

    def symbolic_inputs(self, batch_size=1):
        """Symbolic inputs for a full pyramid (used to build every weight without data)."""
        spec = self.pyramid
        inputs = {
            "patches": keras.KerasTensor(
                (batch_size, spec.num_levels) + spec.patch_size + (self.channels,)),
            "sigma": keras.KerasTensor((batch_size, spec.num_levels)),
            "coords": keras.KerasTensor((batch_size, spec.num_levels, 6)),
        }
        if self.num_classes:
            inputs["label"] = keras.KerasTensor((batch_size,), dtype="int32")
        if self.text_dim:
            inputs["text_embeddings"] = keras.KerasTensor((batch_size, 2, self.text_dim))
        return inputs

    def build(self, input_shape=None):
        """Builds every sub-layer by tracing `call` symbolically (no computation), so
        weights exist before any data is seen (loading, counting, EMA)."""
        if self.built:
            return
        self.compute_output_spec(self.symbolic_inputs())
        self.built = True

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """`keras.Model.summary` with every layer's output shape and parameters: builds the
        backbone first if needed (from its pyramid alone, no data). The shapes are those of
        the build, one pyramid (batch 1); layers inside the blocks see its levels folded
        into the batch."""
        if not self.built:
            self.build()
        super().summary(line_length=line_length, positions=positions, print_fn=print_fn,
                        expand_nested=expand_nested, show_trainable=show_trainable,
                        layer_range=layer_range)
        print_notes([f"Output shapes: for one pyramid (batch 1) of {self.pyramid.num_levels} "
                     f"levels of {self.pyramid.patch_size} patches; inside the blocks, the "
                     "levels each block runs are folded into the batch"],
                    print_fn, line_length)

    # ---------------------------------------------------------------- inputs
    def make_fusions(self):
        """The context fusion layers of the blocks in `fusion_blocks` (subclasses assign
        them to `self.fusions` where their own layers are made, which fixes weight order)."""
        return [DeepContextFusion(use_coords=self.use_coords,
                                  detach_context=self.detach_context,
                                  dtype=self.dtype_policy, name=f"fusion_{b}")
                for b in self.fusion_blocks]

    @property
    def null_label(self):
        return self.num_classes

    def check_inputs(self, inputs, num_context_levels=0):
        """Validates the input dict; returns `(patches, sigma, coords, label, text)`."""
        if not isinstance(inputs, dict):
            raise TypeError(
                "Backbone inputs must be a dict with keys 'patches', 'sigma', 'coords' "
                f"(and 'label' / 'text_embeddings'), got {type(inputs).__name__}."
            )
        missing = [k for k in ("patches", "sigma", "coords") if k not in inputs]
        if missing:
            raise ValueError(f"Backbone inputs are missing {missing}; got {sorted(inputs)}.")
        patches, sigma, coords = inputs["patches"], inputs["sigma"], inputs["coords"]
        r = self.pyramid.patch_size
        if len(patches.shape) != 6 or tuple(patches.shape[2:]) != r + (self.channels,):
            raise ValueError(
                f"`patches` must have shape (B, L, {r[0]}, {r[1]}, {r[2]}, {self.channels}), "
                f"got {tuple(patches.shape)}."
            )
        num_levels = patches.shape[1]
        total = num_levels + num_context_levels
        if not 1 <= total <= self.pyramid.num_levels:
            raise ValueError(
                f"`patches` has {num_levels} levels (+{num_context_levels} context levels); "
                f"the pyramid has {self.pyramid.num_levels}."
            )
        if tuple(sigma.shape[1:]) != (num_levels,):
            raise ValueError(f"`sigma` must have shape (B, {num_levels}), got {sigma.shape}.")
        if tuple(coords.shape[1:]) != (num_levels, 6):
            raise ValueError(
                f"`coords` must have shape (B, {num_levels}, 6), got {coords.shape}."
            )
        label, text = inputs.get("label"), inputs.get("text_embeddings")
        self.check_condition_keys(label is not None, text is not None)
        if text is not None and (len(text.shape) != 3 or text.shape[-1] != self.text_dim):
            raise ValueError(
                f"`text_embeddings` must have shape (B, S, {self.text_dim}), got {text.shape}."
            )
        return patches, sigma, coords, label, text

    # ------------------------------------------------------------ forward pass
    def call(self, inputs, context=None, return_context=False, training=None):
        num_context = 0 if context is None else context["coords"].shape[1]
        patches, sigma, coords, label, text = self.check_inputs(inputs, num_context)
        if context is not None:
            coords = ops.concatenate([ops.cast(context["coords"], coords.dtype), coords], 1)
        state = PyramidPass(
            cond=self.condition_vectors(sigma, label, text), coords=coords, label=label,
            text=text, num_levels=patches.shape[1], num_context=num_context,
            context=context, recorder=[] if return_context else None,
        )
        out = self._forward(ops.cast(patches, self.compute_dtype), state)
        out = ops.cast(out, "float32")
        if self.coarse_prior_map is not None and num_context == 0:  # `patches` has level 0
            out = self.add_coarse_prior(out, state.cond, text)
        return (out, state.recorder) if return_context else out

    def add_coarse_prior(self, out, cond, text):
        """`out` with the coarse prior (see `coarse_prior`) added to its level 0."""
        cond = ops.cast(cond[:, 0], "float32")
        # RMS-normalised as the blocks' modulations read it (the noise embedding grows large).
        features = [keras.activations.silu(
            cond * ops.rsqrt(ops.mean(ops.square(cond), -1, keepdims=True) + 1e-6))]
        if text is not None:
            # The pooled text itself: the noise-level vector carries what the prompt says
            # about the layout only faintly (it passes one `cond_dim`-wide MLP shared with
            # the noise level).
            features.append(self.text_attention(text))
        prior = self.coarse_prior_map(ops.concatenate(features, axis=-1))
        prior = ops.reshape(prior, (-1, 1) + tuple(out.shape[2:]))
        return ops.concatenate([out[:, :1] + prior, out[:, 1:]], axis=1)

    def _forward(self, patches, state):
        """The subclass's network: `(B, L, f, h, w, C)` patches -> the same shape."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_forward`.")

    def run_block(self, block, state, step, features, *streams):
        """Runs block `block` on the levels adaptive computation gives it.

        `features` (B, L, ...) are the block inputs DCF fuses; `streams` are other per-level
        tensors the block carries (e.g. RIN's latents). `step(fused, *streams, n)` gets the
        first `n` levels of each (fused features first) and returns their outputs with the
        same structure; the other levels pass through unchanged. Returns `features` alone,
        or `(features, *streams)` when streams are given.
        """
        n = self.active_levels(block, state.num_levels, state.num_context)
        # Shallow fusion fuses every level's first-block inputs, also those of levels that
        # only enter at a later block (they carry the fused tokens there).
        fuse_all = self.fusion_mode == "shallow" and block == 0
        inputs = features[:, :n]
        if block in self.fusion_blocks and (n or fuse_all):
            fusion = self.fusions[self.fusion_blocks.index(block)]
            fused = self.fuse(block, fusion, features if fuse_all else inputs, state.coords,
                              state.context, state.recorder)
            features = fused if fuse_all else features
            inputs = fused[:, :n] if fuse_all else fused
        if n == 0:
            return (features, *streams) if streams else features
        outputs = step(inputs, *(s[:, :n] for s in streams), n)
        outputs = outputs if streams else (outputs,)
        if n < state.num_levels:
            outputs = tuple(ops.concatenate([o, x[:, n:]], axis=1)
                            for o, x in zip(outputs, (features, *streams), strict=True))
        return tuple(outputs) if streams else outputs[0]

    def check_condition_keys(self, has_label, has_text, text_key="text_embeddings",
                             label_hint=""):
        """The one rule for which conditions an input needs: a label exactly when the
        backbone is class-conditional, text exactly when it is text-conditional (training
        batches and backbone inputs both go through here; `label_hint` says how to get
        labels, `text_key` names the key the caller's input holds text under). A condition
        of the wrong kind is reported before a missing one: it says what the model takes."""
        if not self.text_dim and has_text:
            kind = (f"class-conditional: give 'label' ints in [0, {self.num_classes - 1}]"
                    if self.num_classes else "unconditional: give no conditions")
            raise ValueError(f"'{text_key}' given, but the model is not text-conditional "
                             f"(backbone `text_dim=None`); it is {kind}.")
        if not self.num_classes and has_label:
            raise ValueError("'label' given, but the model is not class-conditional "
                             "(backbone `num_classes=None`).")
        if self.num_classes and not has_label:
            raise ValueError(
                f"This model is class-conditional (backbone `num_classes={self.num_classes}`):"
                f" pass a 'label' of (B,) ints in [0, {self.num_classes - 1}].{label_hint}")
        if self.text_dim and not has_text:
            raise ValueError(f"This model is text-conditional: pass '{text_key}'.")

    def condition_vectors(self, sigma, label, text):
        """Per (sample, level) conditioning `(B, L, cond_dim)`: noise level, class and
        pooled text embedded together (see `SigmaEmbedding`)."""
        condition = None
        if self.class_embedding is not None:
            condition = ops.cast(self.class_embedding(label), "float32")[:, None, :]
        if self.text_pooling is not None:
            pooled = self.text_pooling(self.text_attention(text))[:, None, :]
            condition = pooled if condition is None else condition + pooled
        cond = self.sigma_embedding(sigma, condition=condition)
        return ops.cast(cond, self.compute_dtype)

    # --------------------------------------------------- adaptive computation
    def active_levels(self, block, num_levels, num_context_levels=0):
        """How many of the given (non-context) levels block `block` runs."""
        return max(0, min(self.levels_per_block[block], num_context_levels + num_levels)
                   - num_context_levels)

    def fuse(self, block, fusion, features, coords, context, recorder):
        """Deep context fusion before block `block` for the levels it runs.

        `features` (B, n, ...) are the running levels' block inputs (token grids);
        `context` holds cached coarse features per fusing block (or None); `recorder` (a
        list or None) collects this block's inputs for `encode_context`.
        """
        if recorder is not None:
            recorder.append(features)
        num_context = 0
        if context is not None:
            cached = context["features"][self.fusion_blocks.index(block)]
            num_context = cached.shape[1]
            features = ops.concatenate([ops.cast(cached, features.dtype), features], axis=1)
        return fusion(features, coords[:, : features.shape[1]], num_context_levels=num_context)

    def encode_context(self, inputs):
        """Runs finished coarse levels once and records what finer levels need from them.

        Returns a dict usable as `call(..., context=...)` for the next level(s): per block
        in `fusion_blocks`, the block-input features of these levels (what DCF samples),
        and their coords.
        """
        _, features = self(inputs, return_context=True)
        return {"features": features, "coords": inputs["coords"]}

    # ----------------------------------------------------------------- config
    @classmethod
    def from_preset(cls, name, pyramid, **overrides):
        """Builds a backbone from a named architecture preset (no weights exist)."""
        if name not in cls.presets:
            raise ValueError(
                f"Unknown preset {name!r} for {cls.__name__}; available: {sorted(cls.presets)}."
            )
        config = copy.deepcopy(cls.presets[name]["config"])
        config.update(overrides)
        return cls(pyramid=pyramid, **config)

    def get_config(self):
        return {
            **super().get_config(),
            "pyramid": keras.saving.serialize_keras_object(self.pyramid),
            "num_blocks": self.num_blocks,
            "levels_per_block": self._levels_per_block_arg,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "text_dim": self.text_dim,
            "cond_dim": self.cond_dim,
            "fusion_mode": self.fusion_mode,
            "use_coords": self.use_coords,
            "detach_context": self.detach_context,
            "coarse_prior": self.coarse_prior,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["pyramid"] = keras.saving.deserialize_keras_object(config["pyramid"])
        return cls(**config)
