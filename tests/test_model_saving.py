"""PatchDiffusionModel saving: `.keras` round trips (across backends too) and checkpointing
during `fit` (ModelCheckpoint, BackupAndRestore, TrainingCheckpoint's NaN guard)."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_hpdm
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.testing import TestCase, disable_tf32, run_in_backends

SPEC = keras_hpdm.PyramidSpec((2, 16, 16), 2)
SETTINGS = dict(p_mean=-1.0, p_std=1.1, level_noise_scale=1.5, condition_dropout=0.2,
                ema_decay=0.99, seed=3, sampling={"num_steps": 8, "methods": ["heun", "euler"]})
EPOCHS = 4


pytestmark = pytest.mark.usefixtures("single_thread_torch")


def numpy_state(variables):
    return [np.array(ops.convert_to_numpy(v.value)) for v in variables]


def all_state(model):
    """Every variable that training changes: weights, EMA, RNG state, optimizer slots."""
    return model.variables + list(model.optimizer.variables)


def assert_same_arrays(got, want, msg=""):
    assert len(got) == len(want), msg
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"{msg} (variable {i})")


def prediction_inputs(batch_size=4, seed=0):  # the training tests' batch: cached ops
    rng = np.random.default_rng(seed)
    return {
        "patches": rng.normal(0, 1, (batch_size, 2) + SPEC.patch_size + (3,)).astype("float32"),
        "sigma": np.exp(rng.normal(-0.5, 1, (batch_size, 2))).astype("float32"),
        "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(seed + i))
                            for i in range(batch_size)]),
        "label": np.arange(batch_size, dtype="int32") % 2,
    }


def predict(model, inputs, ema=False):
    """`model(inputs with sigma)` -> denoised, with the live or (swapped in) EMA weights."""
    if ema:
        model.swap_ema_weights()
    try:
        return np.asarray(ops.convert_to_numpy(model(inputs)))
    finally:
        if ema:
            model.swap_ema_weights()


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt(f"simulated crash at epoch {epoch}")


class PoisonSecondEpoch(keras.callbacks.Callback):
    """Puts a NaN in a weight as the second epoch of a `fit` begins: the model diverges."""

    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs += 1
        if self.epochs == 2:
            weight = self.model.backbone.trainable_weights[0]
            value = np.array(ops.convert_to_numpy(weight.value))
            value.flat[0] = np.nan
            weight.assign(value)


def training_data():
    rng = np.random.default_rng(3)
    return {
        "patches": rng.uniform(-1, 1, (4, 2) + SPEC.patch_size + (3,)).astype("float32"),
        "coords": np.stack([SPEC.coords_from_offsets(SPEC.sample_offsets(i))
                            for i in range(4)]),
        "label": np.array([0, 1, 1, 0], "int32"),
    }


class WeightsAtEpochEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


class ModelSavingTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        disable_tf32()  # as each test will: JAX caches compiled ops per precision
        keras.config.set_dtype_policy("float32")
        keras.utils.set_random_seed(0)
        backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=2)
        cls.model = keras_hpdm.PatchDiffusionModel(backbone, **SETTINGS)

    def distinct_ema(self, seed=1):
        """EMA weights and step that differ from the live ones, and a moved RNG state."""
        rng = np.random.default_rng(seed)
        model = self.model
        for ema, v in zip(model.ema_weights, model.backbone.trainable_weights, strict=True):
            value = ops.convert_to_numpy(v.value)
            ema.assign(value + rng.normal(0, 0.05, value.shape).astype("float32"))
        model.ema_step.assign(17.0)
        keras.random.normal((1,), seed=model.seed_generator)

    def test_keras_round_trip(self):
        model = self.model
        self.distinct_ema()
        inputs = prediction_inputs()
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertIs(type(restored), keras_hpdm.PatchDiffusionModel)
        self.assertEqual(json.dumps(restored.get_config(), sort_keys=True),
                         json.dumps(model.get_config(), sort_keys=True))
        self.assertEqual(restored.pyramid, SPEC)
        self.assertEqual(restored.backbone.num_classes, 2)
        noise = restored.noise_distribution
        self.assertEqual((noise.p_mean, noise.p_std, noise.level_noise_scale), (-1.0, 1.1, 1.5))
        self.assertEqual(restored.condition_dropout, 0.2)
        self.assertEqual(restored.ema_decay, 0.99)
        self.assertEqual(restored.sampling["num_steps"], 8)
        self.assertEqual(restored.sampling["methods"], ["heun", "euler"])
        # Weights, EMA weights, EMA step and the training-noise RNG state all come back.
        assert_same_arrays(numpy_state(restored.variables), numpy_state(model.variables))
        assert_same_arrays(numpy_state(restored.ema_weights), numpy_state(model.ema_weights))
        self.assertEqual(float(ops.convert_to_numpy(restored.ema_step.value)), 17.0)
        self.assertAllClose(predict(restored, inputs), predict(model, inputs))
        self.assertAllClose(predict(restored, inputs, ema=True), predict(model, inputs, ema=True))
        self.assertNotAllClose(predict(model, inputs, ema=True), predict(model, inputs),
                               atol=1e-4)
        self.run_serialization_test(model)

    def test_a_saved_optimizer_is_named_as_the_public_class(self):
        """The torch backend swaps `AdamW` for a torch-only subclass; a file naming it loads
        on torch alone. `model.save` itself names `keras.optimizers.AdamW` (the checkpoint
        callback used to rewrite the whole archive after saving to fix it)."""
        import zipfile

        model = keras_hpdm.PatchDiffusionModel.from_config(self.model.get_config())
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(5)
        path = os.path.join(self.get_temp_dir(), "compiled.keras")
        model.save(path)
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))["compile_config"]["optimizer"]
        self.assertEqual((config["module"], config["class_name"]),
                         ("keras.optimizers", "AdamW"))
        restored = keras.saving.load_model(path)
        self.assertIsInstance(restored.optimizer, keras.optimizers.AdamW)
        self.assertEqual(int(ops.convert_to_numpy(restored.optimizer.iterations)), 5)

    @pytest.mark.skipif(keras.config.backend() != "jax", reason="runs the other backends itself")
    def test_save_jax_load_tensorflow_torch(self):
        model = self.model
        self.distinct_ema(seed=2)
        inputs = prediction_inputs(seed=5)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        code = f"""
import keras
from keras import ops
import keras_hpdm  # registers the classes
model = keras.saving.load_model({path!r})
live = ops.convert_to_numpy(model(INPUTS))
model.swap_ema_weights()
ema = ops.convert_to_numpy(model(INPUTS))
OUTPUTS = {{"live": live, "ema": ema,
           "ema_step": ops.convert_to_numpy(model.ema_step.value)}}
"""
        outs = run_in_backends(code, ["tensorflow", "torch"], inputs=inputs)
        want_live, want_ema = predict(model, inputs), predict(model, inputs, ema=True)
        for backend, out in outs.items():
            np.testing.assert_allclose(out["live"], want_live, atol=1e-5, rtol=1e-5,
                                       err_msg=backend)
            np.testing.assert_allclose(out["ema"], want_ema, atol=1e-5, rtol=1e-5,
                                       err_msg=backend)
            self.assertEqual(float(out["ema_step"]), 17.0)

    def test_training_checkpoint_never_saves_nan_weights(self):
        """As TerminateOnNaN: a diverged epoch stops training, and the checkpoint on disk
        stays the last finite one."""
        from keras_hpdm.callbacks import TrainingCheckpoint, read_training_state

        model = self.model
        if not model.compiled:  # else reuse the train step test_checkpoint_and_resume built
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
            model.optimizer.build(model.trainable_variables)
        start = numpy_state(all_state(model))
        first_step = int(ops.convert_to_numpy(model.optimizer.iterations))
        directory = os.path.join(self.get_temp_dir(), "run")
        checkpoint = TrainingCheckpoint(directory, verbose=0)
        try:
            # (After BackupAndRestore, the model may start at a later epoch: Keras keeps it.)
            history = model.fit(training_data(), batch_size=2, epochs=4, shuffle=False,
                                verbose=0, callbacks=[PoisonSecondEpoch(), checkpoint])
            with self.assertRaisesRegex(ValueError, "NaN/Inf"):
                checkpoint.save(2)
        finally:
            for v, value in zip(all_state(model), start, strict=True):
                v.assign(value)
        self.assertLen(history.history["loss"], 2)  # stopped after the diverged epoch
        self.assertIn("training diverged", checkpoint.stopped_reason)
        self.assertIn(f"the checkpoint of step {first_step + 2} is kept",
                      checkpoint.stopped_reason)
        state = read_training_state(directory)
        self.assertEqual((state["epoch"], state["step"]), (history.epoch[0] + 1, first_step + 2))
        self.assertLen(state["history"], 1)
        restored = keras.saving.load_model(os.path.join(directory, "model.keras"))
        self.assertAllFinite(restored.get_weights())

    def test_checkpoint_and_resume(self):
        model = self.model
        data = training_data()
        # Momentum: the optimizer has state of its own that a resume must restore.
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        model.optimizer.build(model.trainable_variables)  # its state is part of the snapshot
        start = numpy_state(all_state(model))
        ema_step = float(ops.convert_to_numpy(model.ema_step.value))
        tmp = self.get_temp_dir()
        checkpoints, backup = os.path.join(tmp, "checkpoints"), os.path.join(tmp, "backup")
        fit = dict(x=data, batch_size=2, epochs=EPOCHS, shuffle=False, verbose=0)

        # 1. Uninterrupted reference run, writing a `.keras` checkpoint every epoch.
        recorder = WeightsAtEpochEnd()
        reference = model.fit(**fit, callbacks=[
            keras.callbacks.ModelCheckpoint(os.path.join(checkpoints, "epoch_{epoch}.keras")),
            recorder,
        ])
        final = numpy_state(all_state(model))
        self.assertEqual(sorted(os.listdir(checkpoints)),
                         [f"epoch_{e}.keras" for e in range(1, EPOCHS + 1)])
        loaded = keras.saving.load_model(os.path.join(checkpoints, "epoch_2.keras"))
        assert_same_arrays(loaded.get_weights(), recorder.weights[1], "epoch 2 checkpoint")
        self.assertEqual(float(ops.convert_to_numpy(loaded.ema_step.value)), ema_step + 4)

        # 2. The same run from the same state, crashing at the start of epoch 2.
        for v, value in zip(all_state(model), start, strict=True):
            v.assign(value)
        with self.assertRaises(Interrupt):
            model.fit(**fit, callbacks=[keras.callbacks.BackupAndRestore(backup),
                                        InterruptAt(2)])
        # A crash loses the process: scramble every variable before resuming.
        for v in all_state(model):
            value = np.asarray(ops.convert_to_numpy(v.value))
            v.assign((value + 3).astype(value.dtype))

        # 3. Resuming restores weights, EMA, RNG and optimizer state and the epoch counter.
        resumed = model.fit(**fit, callbacks=[keras.callbacks.BackupAndRestore(backup)])
        self.assertEqual(resumed.epoch, [2, 3])
        np.testing.assert_array_equal(resumed.history["loss"], reference.history["loss"][2:])
        assert_same_arrays(numpy_state(all_state(model)), final, "resumed vs uninterrupted")


def test_from_preset_loads_the_bundled_model(monkeypatch):
    """keras-hub's convention: a bundled model by name, its metadata counting what loads;
    `pretrained.load_pretrained` is the same call; an unknown name lists the presets."""
    model = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist")
    assert isinstance(model, keras_hpdm.PatchDiffusionModel)
    metadata = keras_hpdm.PatchDiffusionModel.presets["moving_mnist"]
    assert model.backbone.count_params() == metadata["params"]
    assert "Moving MNIST" in metadata["description"] and "file" not in metadata
    assert model.pyramid.target_size == (16, 64, 64) and model.backbone.num_classes == 10
    # The text model: the card's parameter count, MiniLM's width, a text encoder it builds
    # from its config (offline) and a guidance default saved in the file.
    text = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist_text")
    assert text.backbone.count_params() == keras_hpdm.PatchDiffusionModel.presets[
        "moving_mnist_text"]["params"]
    assert text.backbone.num_classes is None and text.backbone.text_dim == 384
    assert text.sampling["guidance_scale"] == 4.0
    assert text.pyramid == model.pyramid
    with pytest.raises(ValueError, match=r"Unknown pretrained model 'nope'; available: "):
        keras_hpdm.PatchDiffusionModel.from_preset("nope")
    calls = []
    monkeypatch.setattr(keras_hpdm.PatchDiffusionModel, "from_preset",
                        classmethod(lambda cls, name: calls.append(name) or "model"))
    assert keras_hpdm.pretrained.load_pretrained("moving_mnist") == "model"
    assert calls == ["moving_mnist"]
