"""`model.fit` on `pyramid_dataset` batches, under every Keras backend.

Uses a minimal stand-in model (call takes the batch dict, compute_loss uses patches and
coords); the real PatchDiffusionModel gets its own fit tests.
"""

import keras
import numpy as np
from keras import ops

from keras_hpdm import PyramidSpec, data


class StandIn(keras.Model):
    """Predicts each level's mean colour from its coords and the class label."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.embed = keras.layers.Embedding(10, 3)

    def call(self, inputs):
        coords = inputs["coords"]  # (B, L, 6)
        return self.dense(coords) + self.embed(inputs["label"])[:, None, :]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        target = ops.mean(x["patches"], axis=(2, 3, 4))  # (B, L, C)
        return ops.mean(ops.square(y_pred - target))


def test_fit_on_shard_pipeline(tmp_path):
    keras.utils.set_random_seed(0)
    spec = PyramidSpec((2, 4, 4), 2)  # target (4, 8, 8)
    videos, labels = data.moving_mnist(8, num_frames=6, size=32, seed=0)
    data.prepare((videos, labels), tmp_path / "shards", num_shards=2)
    ds = data.pyramid_dataset(str(tmp_path / "shards"), spec, 4, labels=True, seed=0,
                              flip=True)
    batch = next(iter(ds))
    assert tuple(batch["patches"].shape) == (4, 2, 2, 4, 4, 3)
    assert tuple(batch["coords"].shape) == (4, 2, 6) and tuple(batch["label"].shape) == (4,)
    assert batch["label"].dtype.name == "int32"

    model = StandIn()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    history = model.fit(ds, epochs=3, steps_per_epoch=4, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses  # it learns from the pipeline's batches


def hash_tokens(text):
    """A graph-side stand-in tokenizer: 4 hashed words per caption, int32."""
    import tensorflow as tf

    words = tf.strings.split(text).to_tensor(default_value="", shape=[None, 4])
    return {"token_ids": tf.cast(tf.strings.to_hash_bucket_fast(words, 50), tf.int32)}


class TextStandIn(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.embed = keras.layers.Embedding(50, 3)

    def call(self, inputs):
        text = ops.mean(self.embed(inputs["token_ids"]), axis=1)  # (B, 3)
        return self.dense(inputs["coords"]) + text[:, None, :]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(ops.square(y_pred - ops.mean(x["patches"], axis=(2, 3, 4))))


def test_fit_with_tokenized_captions():
    keras.utils.set_random_seed(0)
    spec = PyramidSpec((2, 4, 4), 2)
    videos, labels = data.moving_mnist(8, num_frames=4, size=32, seed=0)
    captions = [f"video {i} shows {int(d)}" for i, d in enumerate(labels)]
    ds = data.pyramid_dataset((videos, captions), spec, 4, seed=0, tokenizer=hash_tokens)
    batch = next(iter(ds))
    assert "text" not in batch and tuple(batch["token_ids"].shape) == (4, 4)
    # Each example carries its own caption's tokens (`index` names the source video).
    with_index = data.pyramid_dataset((videos, captions), spec, 4, seed=0,
                                      tokenizer=hash_tokens, return_offsets=True)
    seen = set()
    for batch in with_index.take(2):
        index = batch["index"].numpy()
        expected = hash_tokens(np.array([captions[i] for i in index]))["token_ids"]
        np.testing.assert_array_equal(batch["token_ids"].numpy(), expected.numpy())
        seen.update(index.tolist())
    assert seen == set(range(8))  # two batches of one shuffled epoch: every video
    model = TextStandIn()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    history = model.fit(ds, epochs=2, steps_per_epoch=3, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
