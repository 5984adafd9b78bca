"""The HPDM task: trains with `fit` on patch pyramids, samples with tiled `generate`."""

import contextlib
import dataclasses

import keras
import numpy as np
from keras import ops

from keras_hpdm.backbones.hpdm_backbone import HPDMBackbone, print_notes
from keras_hpdm.checks import check_level_weights, check_number, check_seed
from keras_hpdm.diffusion.loss import PyramidDenoisingLoss
from keras_hpdm.diffusion.noise import LevelNoiseDistribution
from keras_hpdm.diffusion.preconditioning import EDMPreconditioning, expand_sigma
from keras_hpdm.models import batch_checks
from keras_hpdm.models.backend_quirks import (
    ReplicaSeedGenerator,
    check_distribution,
    chief_seed,
    first_replica_batch,
    logs_for_worker_mean,
    public_optimizers,
    reattach_jax_variables_on_error,
    replicated_across_processes,
    scale_loss_for_replicas,
)
from keras_hpdm.models.generation import PyramidGenerator, progress_verbosity
from keras_hpdm.models.generation_plan import (
    DEFAULT_OVERLAP,
    DEFAULT_SAMPLING,
    DEFAULT_TILE_BATCH_SIZE,
    GenerationPlan,
    check_sampling,
)
from keras_hpdm.models.growth import grow
from keras_hpdm.optimizers import check_learning_rate_callbacks
from keras_hpdm.pretrained import PRETRAINED, pretrained_path

_RNG_STATE_KEY = "training_noise_state"


def _keras_shuffles(x):
    """Whether Keras' `fit` shuffles `x` (arrays and dicts of them, finite `PyDataset`s)."""
    if isinstance(x, keras.utils.PyDataset):
        return x.num_batches is not None
    return isinstance(x, (dict, list, tuple, np.ndarray)) or hasattr(x, "__array__")


@keras.saving.register_keras_serializable(package="keras_hpdm")
class PatchDiffusionModel(keras.Model):
    """Hierarchical Patch Diffusion Model: an EDM denoiser over patch pyramids.

    Training (`fit`) sees batches of pyramids `{"patches": (B, L, f, h, w, C) in [-1, 1],
    "coords": (B, L, 6)}` (+ `"label"` ints or `"text"` prompts / `"text_embeddings"`),
    draws an independent log-normal sigma per level (shifted per level), and minimises the
    EDM-weighted denoising loss averaged over levels; per-level losses are metrics. Noise
    comes from a `SeedGenerator` owned by the model, so Keras' own JAX / TensorFlow / torch
    train steps run it. An exponential moving average (EMA) of the backbone weights is kept
    as model state and used by `generate` (the live weights are never overwritten).

    Args:
        backbone: an `HPDMBackbone` (`RINBackbone` or `UNet3DBackbone`).
        sigma_data: data standard deviation for EDM preconditioning.
        p_mean, p_std: log-normal training sigma parameters.
        level_noise_scale: per-level sigma multiplier (`sigma_l *= scale**l`).
        condition_dropout: probability of dropping the condition (classifier-free guidance).
        level_loss_weights: None (the levels weigh the same) or one weight >= 0 per pyramid
            level: the training loss is `sum_l w_l loss_l / sum_l w_l` (e.g. favour level 0,
            which decides the content, or the finest level when growing a model); the
            per-level metrics stay unweighted.
        text_encoder: None, "minilm", a preset directory, a serialized encoder (dict) or a
            `keras_hpdm.conditioning.TextEncoder` (for text conditioning; its width must match
            `backbone.text_dim`); specs are built on first use.
        ema_decay: EMA decay per step (None disables EMA); ignored if `ema_half_life` is set.
        ema_half_life: EMA half-life in steps (decay `0.5 ** (1 / half_life)`).
        seed: seed of the model's training-noise generator (non-negative int or None).
        sampling: dict overriding `DEFAULT_SAMPLING` (steps, samplers, sigmas, guidance), saved with
            the model; every value is validated here.

    Every numeric argument must be finite and in range: NaN, infinities and bools fail
    with a `ValueError` naming the argument and its allowed values.

    Example:
    ```python
    spec = keras_hpdm.PyramidSpec((4, 32, 32), num_levels=3)
    backbone = keras_hpdm.backbones.RINBackbone.from_preset("tiny", pyramid=spec,
                                                            num_classes=10)
    model = keras_hpdm.PatchDiffusionModel(backbone)
    model.compile(optimizer=keras_hpdm.hpdm_optimizer(total_steps=10_000))
    model.fit(keras_hpdm.data.pyramid_dataset("videos/", spec, batch_size=8), epochs=10)
    videos = model.generate([3, 7], seed=0)  # uint8 (2, 16, 128, 128, 3)
    ```

    References:
        - [Skorokhodov et al., Hierarchical Patch Diffusion Models for High-Resolution
          Video Generation, CVPR 2024](https://arxiv.org/abs/2406.07792)
        - [Karras et al., EDM, NeurIPS 2022](https://arxiv.org/abs/2206.00364)
    """

    # The bundled, trained models `from_preset` loads: name -> metadata (`description`,
    # `params`); `keras_hpdm.pretrained.model_card(name)` says how each was trained.
    presets = {name: {k: v for k, v in entry.items() if k != "file"}
               for name, entry in PRETRAINED.items()}

    def __init__(self, backbone, sigma_data=0.5, p_mean=-1.2, p_std=1.2, level_noise_scale=2.0,
                 condition_dropout=0.1, text_encoder=None, ema_decay=0.999, ema_half_life=None,
                 seed=None, sampling=None, level_loss_weights=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, HPDMBackbone):
            raise TypeError(
                "`backbone` must be a keras_hpdm backbone (RINBackbone / UNet3DBackbone), "
                f"got {type(backbone).__name__}."
            )
        condition_dropout = check_number("condition_dropout", condition_dropout, low=0.0,
                                         high=1.0, high_open=True)
        ema_half_life = check_number("ema_half_life", ema_half_life, low=0.0, low_open=True,
                                     allow_none=True)
        ema_decay = check_number("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True,
                                 allow_none=True)
        seed = check_seed(seed)
        if level_loss_weights is not None:
            level_loss_weights = check_level_weights(
                "level_loss_weights", level_loss_weights, backbone.pyramid.num_levels)
        if sampling is not None and not isinstance(sampling, dict):
            raise ValueError(f"`sampling` must be None or a dict, got {sampling!r}.")
        unknown = set(sampling or {}) - set(DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(
                f"Unknown `sampling` keys {sorted(unknown)}; allowed: {sorted(DEFAULT_SAMPLING)}."
            )
        self.backbone = backbone
        self.pyramid = backbone.pyramid
        self.preconditioning = EDMPreconditioning(sigma_data)
        self.noise_distribution = LevelNoiseDistribution(p_mean, p_std, level_noise_scale)
        self.loss_fn = PyramidDenoisingLoss(sigma_data, level_weights=level_loss_weights)
        self.condition_dropout = float(condition_dropout)
        self.ema_decay, self.ema_half_life = ema_decay, ema_half_life
        self.seed = seed
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        check_sampling(self.sampling, self.pyramid.num_levels)
        self.seed_generator = ReplicaSeedGenerator(seed, name="training_noise")
        self.level_loss_trackers = [
            keras.metrics.Mean(name=f"loss_level_{level}")
            for level in range(self.pyramid.num_levels)
        ]
        self._text_encoder_spec = text_encoder
        self._text_encoder = None
        if backbone.text_dim and text_encoder is None:
            raise ValueError(
                "The backbone is text-conditional (`text_dim` set): pass `text_encoder` "
                '("minilm", a keras-hub preset directory or a TextEncoder).'
            )
        self._build_now()

    # --------------------------------------------------------------- building
    def _build_now(self):
        """Creates every weight up front, so saving, loading and EMA need no data."""
        if not self.backbone.built:  # a deserialized backbone comes built already
            self.backbone.build()
        self.ema_weights = []
        if self.ema_decay is not None or self.ema_half_life is not None:
            self.ema_weights = [
                self.add_weight(shape=v.shape, initializer="zeros", trainable=False,
                                name=f"ema_{i}", dtype="float32")
                for i, v in enumerate(self.backbone.trainable_weights)
            ]
            for ema, v in zip(self.ema_weights, self.backbone.trainable_weights, strict=True):
                # Under a model-parallel distribution the copy is sharded as its weight is
                # (Keras places a variable by its path, and `ema_i` matches no rule).
                if getattr(v, "_layout", None) is not None:
                    ema._layout = v._layout
                # A copy on the weight's devices: sharing the live buffer would alias two
                # variables in JAX, and a host copy cannot read a weight split between
                # processes.
                ema.assign(ops.copy(ops.cast(v.value, "float32")))
        self.ema_step = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                        name="ema_step", dtype="float32")
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    # ------------------------------------------------------------ conditions
    @property
    def text_encoder(self):
        """The frozen text encoder (not saved with the weights).

        Only built here, which is cheap: its weights load on the first `encode`. Keras'
        saving walks every attribute of the model, so this must not load anything.
        """
        if self._text_encoder is None and self._text_encoder_spec is not None:
            from keras_hpdm.conditioning import get_text_encoder

            self._text_encoder = get_text_encoder(self._text_encoder_spec)
        return self._text_encoder

    def encode_text(self, prompts):
        """float32 `(B, T, text_dim)` embeddings of a list of `prompts` (str)."""
        emb = np.asarray(self.text_encoder.encode(list(prompts))["embeddings"], "float32")
        if emb.shape[-1] != self.backbone.text_dim:
            raise ValueError(
                f"The text encoder's embedding width ({emb.shape[-1]}) does not match the "
                f"backbone's `text_dim` ({self.backbone.text_dim})."
            )
        return emb

    def null_conditions(self, batch_size):
        """The "no condition" inputs used for guidance: null label / zero text."""
        out = {}
        if self.backbone.num_classes:
            out["label"] = ops.full((batch_size,), self.backbone.null_label, "int32")
        if self.backbone.text_dim:
            # As condition dropout in training: zero embeddings of the encoder's full length.
            length = self.text_encoder.sequence_length if self.text_encoder else 1
            out["text_embeddings"] = ops.zeros((batch_size, length, self.backbone.text_dim))
        return out

    def _drop_conditions(self, conditions, batch_size):
        """Condition dropout for classifier-free guidance (training only)."""
        if not conditions or self.condition_dropout == 0.0:
            return conditions
        drop = keras.random.uniform((batch_size,), seed=self.seed_generator)
        drop = drop < self.condition_dropout
        out = dict(conditions)
        if "label" in out:
            null = ops.full_like(ops.cast(out["label"], "int32"), self.backbone.null_label)
            out["label"] = ops.where(drop, null, ops.cast(out["label"], "int32"))
        if "text_embeddings" in out:
            text = ops.cast(out["text_embeddings"], "float32")
            out["text_embeddings"] = ops.where(drop[:, None, None], ops.zeros_like(text), text)
        return out

    # -------------------------------------------------------------- denoiser
    def denoise(self, x, sigma, coords, conditions=None, context=None):
        """The preconditioned denoiser `D(x; sigma)` on a pyramid batch.

        Args:
            x: noisy pyramid `(B, L, f, h, w, C)`.
            sigma: `(B, L)` noise levels.
            coords: `(B, L, 6)` level coordinates.
            conditions: dict with `label` `(B,)` and/or `text_embeddings` `(B, S, D)`.
            context: cached coarse levels from `encode_context` (generation); `x` then holds
                only the new levels.

        Returns:
            float32 `(B, L, f, h, w, C)` denoised estimate.
        """
        conditions = conditions or {}

        def network(x_in, sig):
            inputs = {"patches": x_in, "sigma": sig, "coords": coords, **conditions}
            return self.backbone(inputs, context=context)

        return self.preconditioning(network, x, sigma)

    def encode_context(self, x, sigma, coords, conditions=None):
        """Runs finished coarse levels once; the result feeds `denoise(..., context=...)`."""
        c_in = self.preconditioning.coefficients(sigma)[2]
        x = ops.cast(x, "float32") * expand_sigma(c_in, x)
        inputs = {"patches": x, "sigma": sigma, "coords": coords, **(conditions or {})}
        return self.backbone.encode_context(inputs)

    def call(self, inputs, training=None):
        """With `sigma` in `inputs`: the denoiser (`patches`, optional cached `context`), or
        with `context_patches` instead of `patches`, `encode_context`; generation calls
        these through `predict_on_batch`, Keras' compiled predict function. Without `sigma`:
        returns `patches` unchanged.

        Keras' train step calls the model before `compute_loss`; the diffusion forward pass
        needs its own noise and runs inside `compute_loss`, so that first call is a no-op.
        """
        if isinstance(inputs, dict) and "sigma" in inputs:
            conditions = {k: inputs[k] for k in ("label", "text_embeddings") if k in inputs}
            if "context_patches" in inputs:
                out = self.encode_context(inputs["context_patches"], inputs["sigma"],
                                          inputs["coords"], conditions)
            else:
                out = self.denoise(inputs["patches"], inputs["sigma"], inputs["coords"],
                                   conditions, context=inputs.get("context"))
            return replicated_across_processes(out)
        if isinstance(inputs, dict):
            # Keras calls the model on the batch before `compute_loss`: validate it here so
            # a bad batch fails with an error naming the key, not a KeyError from Keras.
            return batch_checks.check_training_batch(self, inputs)[0]
        return inputs

    # -------------------------------------------------------------- training
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        patches, coords, conditions = batch_checks.check_training_batch(self, x)
        batch_size, num_levels = ops.shape(patches)[0], patches.shape[1]
        sigma = self.noise_distribution.sample((batch_size, num_levels), seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(patches), seed=self.seed_generator)
        if training:
            conditions = self._drop_conditions(conditions, batch_size)
        total, per_level = self.pyramid_loss(patches, coords, conditions, sigma, noise,
                                             sample_weight)
        for level, tracker in enumerate(self.level_loss_trackers):
            tracker.update_state(per_level[level])
        if training:
            self._update_ema()
        return scale_loss_for_replicas(total)

    def pyramid_loss(self, patches, coords, conditions, sigma, noise, sample_weight=None):
        """The EDM pyramid loss for given noise levels and noise (what `fit` minimises).

        `compute_loss` draws `sigma` and `noise` from the model's seed generator and calls
        this; call it directly for a fixed, reproducible evaluation.

        Args:
            patches: clean pyramids `(B, L, f, h, w, C)`.
            coords: `(B, L, 6)` level coordinates.
            conditions: None or a dict with `label` `(B,)` / `text_embeddings` `(B, S, D)`.
            sigma: `(B, L)` noise levels.
            noise: standard normal noise shaped like `patches`.
            sample_weight: optional `(B,)` weights.

        Returns:
            `(total, per_level)`: float32 scalar and `(L,)`.
        """
        patches = ops.cast(patches, "float32")
        noisy = patches + ops.cast(noise, "float32") * expand_sigma(sigma, patches)
        denoised = self.denoise(noisy, sigma, coords, conditions)
        return self.loss_fn(patches, denoised, sigma, sample_weight)

    def ema_decay_at(self, step):
        """EMA decay at a step, with the usual warm-up `(1 + t) / (10 + t)` cap."""
        decay = (0.5 ** (1.0 / self.ema_half_life) if self.ema_half_life
                 else self.ema_decay)
        return ops.minimum(decay, (1.0 + step) / (10.0 + step))

    def _update_ema(self):
        # Runs inside the loss computation so every backend's stock train step performs it;
        # it averages the weights each step sees (before that step's update).
        if not self.ema_weights:
            return
        decay = self.ema_decay_at(self.ema_step)
        for ema, v in zip(self.ema_weights, self.backbone.trainable_weights, strict=True):
            live = ops.stop_gradient(ops.cast(v.value, "float32"))
            ema.assign(decay * ema.value + (1.0 - decay) * live)
        self.ema_step.assign(self.ema_step.value + 1.0)

    def fit(self, x=None, y=None, **kwargs):
        """`keras.Model.fit`, after validating batches and encoding text prompts.

        Every input path is checked for values that would poison the weights (NaN/Inf,
        `coords` outside [0, 1], labels out of range): dicts of arrays up front, generators,
        `keras.utils.PyDataset`s and `tf.data` datasets batch by batch as they are drawn.
        A rejected batch raises and leaves the weights as the last completed step left
        them (under TensorFlow, a `tf.data` assert fails inside the compiled step, after its
        data-independent EMA and noise-seed updates).

        Two defaults differ from Keras': `verbose="auto"` is a progress bar on a terminal
        and one line per epoch elsewhere (a file, a pipe), and `shuffle` is False for data
        Keras does not shuffle (`tf.data`, generators, infinite `PyDataset`s), where its
        `shuffle=True` is ignored with a warning.

        A callback that sets the learning rate (`LearningRateScheduler`,
        `ReduceLROnPlateau`) fails before training if the optimizer follows a schedule, as
        `hpdm_optimizer`'s does: pass the schedule to `hpdm_optimizer(learning_rate=...)`.
        """
        check_distribution()
        check_learning_rate_callbacks(getattr(self, "optimizer", None), kwargs.get("callbacks"))
        keras_shuffles = _keras_shuffles(x)
        x = batch_checks.prepare_inputs(self, x, kwargs.get("sample_weight"))
        if not keras_shuffles:
            # Keras only shuffles arrays and finite `PyDataset`s: for other data (tf.data,
            # generators) its default `shuffle=True` does nothing but warn on every fit.
            kwargs.setdefault("shuffle", False)
        kwargs["verbose"] = progress_verbosity(kwargs.get("verbose", "auto"))
        if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
            # Every weight exists since `__init__`: building the optimizer here spares
            # TensorFlow a second trace of the train step (variables created in a tf.function).
            strategy = getattr(self, "distribute_strategy", None)
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                self.optimizer.build(self.trainable_variables)
        with reattach_jax_variables_on_error(self):
            return super().fit(x, y, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TensorFlow trainer only (see `backend_quirks.first_replica_batch`).
        iterator, data_batch = first_replica_batch(self, iterator, data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_metrics_result(self):
        return logs_for_worker_mean(super().get_metrics_result())

    def evaluate(self, x=None, y=None, **kwargs):
        x = batch_checks.prepare_inputs(self, x, kwargs.get("sample_weight"))
        with reattach_jax_variables_on_error(self):
            return super().evaluate(x, y, **kwargs)

    # ------------------------------------------------------------------- EMA
    def swap_ema_weights(self):
        """Exchanges live and EMA backbone weights (call twice to restore)."""
        if not self.ema_weights:
            raise ValueError("This model keeps no EMA weights (`ema_decay=None`).")
        for ema, v in zip(self.ema_weights, self.backbone.trainable_weights, strict=True):
            live = ops.convert_to_numpy(v.value)
            v.assign(ops.cast(ema.value, v.dtype))
            ema.assign(ops.cast(live, "float32"))

    # --------------------------------------------------------------- summary
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """`keras.Model.summary`, then what its table leaves out: what the non-trainable
        parameters are (the EMA copy of the backbone's weights, which `generate` samples
        with, and its step counter) and the backbone's input and output shapes
        (`model.backbone.summary()` lists the backbone's layers)."""
        super().summary(line_length=line_length, positions=positions, print_fn=print_fn,
                        expand_nested=expand_nested, show_trainable=show_trainable,
                        layer_range=layer_range)
        count = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
        ema, step = count(self.ema_weights), count([self.ema_step])
        if self.ema_weights:
            rate = (f"half-life {self.ema_half_life:g} steps" if self.ema_half_life
                    else f"decay {self.ema_decay:g}")
            lines = [f"of which the EMA copy of the backbone's trainable weights "
                     f"(`ema_weights`, {rate}; `generate` samples with it): {ema:,}"]
        else:
            lines = ["No EMA copy of the weights (`ema_decay=None`)"]
        lines.append(f"of which the EMA step counter (`ema_step`): {step}")
        other = count(self.non_trainable_weights) - ema - step
        if other:
            lines.append(f"of which the backbone's own: {other:,}")
        shapes = {k: "(B" + "".join(f", {d}" for d in v.shape[1:])
                  + ("," if len(v.shape) == 1 else "") + ")"
                  for k, v in self.backbone.symbolic_inputs().items()}
        lines.append(
            f"{self.backbone.name} maps " + ", ".join(f"{k} {v}" for k, v in shapes.items())
            + f" to {shapes['patches']}; `model.backbone.summary()` lists its layers"
        )
        print_notes(lines, print_fn, line_length)

    # ------------------------------------------------------------ generation
    def generate(self, conditions=None, num_samples=None, num_steps=None, guidance_scale=None,
                 context_sigma=None, overlap=DEFAULT_OVERLAP,
                 tile_batch_size=DEFAULT_TILE_BATCH_SIZE, seed=None,
                 sampler=None, blend="uniform", cache_context=True, context_cache_budget=None,
                 context_cache_dtype="float32", context_parents="center", use_ema=True,
                 callbacks=None, verbose="auto",
                 return_pyramid=False, num_levels=None):
        """Generates videos at `pyramid.target_size`, level by level, tile by tile.

        Args:
            conditions: None (unconditional), class id(s), or prompt string(s).
            num_samples: videos to generate (per condition when one condition is given).
            num_steps: steps per level: an int (level 0; halved per level, at least 4) or
                a tuple with one entry per level.
            guidance_scale: classifier-free guidance weight, a finite number >= 0 (1 = no
                guidance, 0 = unconditional), or one per level (e.g. `(8, 4, 4)`: the
                layout, drawn at level 0, guided harder than the details); None (default)
                takes the model's `sampling["guidance_scale"]` (1 unless the model was
                given another; 1 when `conditions` is None).
            context_sigma: the noise level (>= 0) of the coarser levels' canvases each
                finer level is conditioned on: they get that much noise first. Training
                sees coarse levels at every noise level, so a higher value (~0.5-1) keeps
                their layout and lets the finer levels redraw what they got wrong (as
                a hard-guided level 0's over-sharpened digits); None (default) takes the
                model's `sampling["context_sigma"]` (0.002 unless given another).
            overlap: tile overlap fraction per axis (f, h, w), or one float for all; the
                paper's best is 50% on time and height.
            tile_batch_size: tiles denoised per network call (bounds memory).
            seed: int for reproducible results; sample `i` depends only on `(seed, i)`.
            sampler: "euler", "heun", "stochastic" for all levels, or one per level
                (default: stochastic at level 0, Euler above).
            blend: "uniform" or "smooth" tile blending weights.
            cache_context: compute the coarse-level context once per level (paper's
                cached inference) instead of for every tile at every step. The cache keeps
                each coarse patch's features once, however many tiles' contexts use it.
            context_cache_budget: bytes the context cache may hold per level (None: no
                limit). Tiles whose context is not all kept recompute it at every step:
                memory stays bounded at any output size, and the cache's speed-up shrinks
                to the share of tiles it serves.
            context_cache_dtype: `"float32"` (exact) or `"bfloat16"` (half the memory;
                the cached contexts rounded to bfloat16).
            context_parents: where each tile's context is cut from the coarser levels:
                `"center"` (the parent patch that centres the tile: the best samples) or
                `"grid"` (the coarser level's own tile that holds it, nearest to centring
                it: tiles share parents, so the cache follows the coarser levels' tile
                counts, not the output's). At HPDM-S's 64x256x256 the finest level's cache
                is 6.3 GiB with `"center"` and 1.2 GiB with `"grid"` (0.6 in bfloat16;
                `benchmarks/context_cache_memory.py`); the bundled model's frame accuracy
                is 2-6 points lower with `"grid"` (README).
            use_ema: sample with the EMA weights (the live weights are restored after).
            callbacks: callables `fn(info) -> bool`; `info` has level, step, num_steps, x,
                denoised and context_cache_bytes (what the cache holds). Returning True
                stops the current level early.
            verbose: 0 silent, 1 a progress bar per level, 2 one line per level; "auto"
                (default) is 1 on a terminal, else 2.
            return_pyramid: also return the generated canvas of every level.
            num_levels: stop after this many levels (a coarser output:
                `pyramid.level_size(num_levels - 1)`); default all.

        Returns:
            uint8 numpy array `(N, T, H, W, 3)` (and the list of level canvases in [-1, 1]
            if `return_pyramid`).

        In a multi-process run (`keras_hpdm.distribute.initialize`) every process must call
        `generate` with the same arguments: they generate in lockstep, each network call
        split between them, and all return the same videos (with `seed=None`, process 0's
        fresh seed).
        """
        # Every argument is checked here, before any level runs (or a prompt is encoded).
        plan = GenerationPlan.resolve(
            self.pyramid.num_levels, self.sampling, self.backbone.num_classes,
            self.backbone.text_dim, conditions=conditions, num_samples=num_samples,
            num_steps=num_steps, guidance_scale=guidance_scale, context_sigma=context_sigma,
            overlap=overlap,
            tile_batch_size=tile_batch_size, seed=seed, sampler=sampler, blend=blend,
            cache_context=cache_context, context_cache_budget=context_cache_budget,
            context_cache_dtype=context_cache_dtype, context_parents=context_parents,
            use_ema=use_ema, callbacks=callbacks,
            verbose=verbose, return_pyramid=return_pyramid, num_levels=num_levels,
        )
        if seed is None:  # a fresh seed: the processes of a run generate with process 0's
            plan = dataclasses.replace(plan, seed=chief_seed(plan.seed, self))
        return PyramidGenerator(self)(plan)

    # ---------------------------------------------------------------- saving
    def save_own_variables(self, store):
        # Keras saves layer weights but not SeedGenerator states: keep the training-noise
        # state, so a resumed run (BackupAndRestore) draws the noise an uninterrupted one would.
        super().save_own_variables(store)
        store[_RNG_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _RNG_STATE_KEY in keys:  # absent from files written before it was saved
            self.seed_generator.state.assign(store[_RNG_STATE_KEY])
            store = {k: store[k] for k in keys if k != _RNG_STATE_KEY}
        super().load_own_variables(store)

    def get_compile_config(self):
        # Under torch the optimizer is a torch-only subclass: a file naming it would load
        # on torch alone, so the file names the public class (same variables and config).
        config = super().get_compile_config()
        return None if config is None else public_optimizers(config)

    # ---------------------------------------------------------------- config
    def get_config(self):
        text_encoder = self._text_encoder_spec
        if text_encoder is not None and not isinstance(text_encoder, str):
            text_encoder = keras.saving.serialize_keras_object(text_encoder)
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "sigma_data": self.preconditioning.sigma_data,
            "p_mean": self.noise_distribution.p_mean,
            "p_std": self.noise_distribution.p_std,
            "level_noise_scale": self.noise_distribution.level_noise_scale,
            "condition_dropout": self.condition_dropout,
            "text_encoder": text_encoder,
            "ema_decay": self.ema_decay,
            "ema_half_life": self.ema_half_life,
            "seed": self.seed,
            "sampling": self.sampling,
            "level_loss_weights": None if self.loss_fn.level_weights is None
            else list(self.loss_fn.level_weights),
        }

    def grow(self, num_levels, levels_per_block=None):
        """A new model whose pyramid has `num_levels` levels (more than this one's): the
        paper's way to reach high resolution (train low, then add levels and fine-tune).

        The patch size stays; the target size doubles per added level on the pyramided
        axes. Backbone weights (shared by every level), EMA weights and sampling settings
        are copied, and every existing level runs on exactly the blocks it ran before (an
        explicit schedule replaces `"linear"`, which would move them), so right after
        growing, `generate(..., num_levels=<old count>)` gives this model's output. Per-level
        steps and loss weights, when set, extend to the new levels (steps halved, weights as
        the finest level's). Not compiled: compile it (a fresh optimizer) to fine-tune.

        Args:
            num_levels: the new number of levels.
            levels_per_block: None (new levels join every block that ran all existing
                levels) or one count per block; a block that ran fewer than all existing
                levels must keep its count.

        Example:
        ```python
        big = model.grow(model.pyramid.num_levels + 1)
        big.compile(optimizer=keras_hpdm.hpdm_optimizer(total_steps=5_000))
        big.fit(keras_hpdm.data.pyramid_dataset("videos/", big.pyramid, batch_size=8))
        ```
        """
        return grow(self, num_levels, levels_per_block)

    @classmethod
    def from_preset(cls, preset):
        """Loads a bundled, trained model by name (keras-hub's convention); for sampling,
        not compiled (compile it to fine-tune).

        Args:
            preset: a name in `PatchDiffusionModel.presets` (e.g. `"moving_mnist"`).

        Example:
        ```python
        model = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist")
        videos = model.generate([3, 7], seed=0)  # uint8 (2, 16, 64, 64, 3)
        ```
        """
        import keras_hpdm

        path = pretrained_path(preset)  # an unknown name raises, listing the presets
        keras_hpdm._load_all()  # registers every class the file names
        model = keras.saving.load_model(path, compile=False)
        if not isinstance(model, cls):
            raise TypeError(f"Preset {preset!r} holds a {type(model).__name__}, not a "
                            f"{cls.__name__}.")
        return model

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        # A serialized text encoder stays a spec: `text_encoder` builds it on first use, so
        # a text model loads (and trains on precomputed embeddings, or samples from them)
        # where its encoder's files are missing.
        return cls(**config)
