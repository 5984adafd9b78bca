"""Validation of training batches, and text encoding before they reach the backend.

Shapes and keys are checked where the batch enters the loss (static, so a clear
`ValueError` at trace time). Values (NaN/Inf, label range) cannot raise from inside a
compiled JAX / XLA step, so they are checked on the data side instead: in the `tf.data`
graph (which runs outside the compiled step under every backend) or on numpy arrays.
"""

import numpy as np

ALLOWED_KEYS = ("patches", "coords", "label", "text", "text_embeddings")


def _expected(model):
    spec, bb = model.pyramid, model.backbone
    return (spec.num_levels,) + spec.patch_size + (bb.channels,)


def check_training_batch(model, batch):
    """Returns `(patches, coords, conditions)` or raises a `ValueError` naming the key."""
    from keras import ops

    if not isinstance(batch, dict):
        raise TypeError(
            "Training batches must be dicts with 'patches' (B, L, f, h, w, C) and 'coords' "
            f"(B, L, 6) (plus 'label' or 'text'), got {type(batch).__name__}."
        )
    missing = [k for k in ("patches", "coords") if k not in batch]
    if missing:
        raise ValueError(f"Batch is missing {missing}; got keys {sorted(batch)}.")
    unknown = [k for k in batch if k not in ALLOWED_KEYS]
    if unknown:
        raise ValueError(f"Unknown batch keys {unknown}; allowed: {list(ALLOWED_KEYS)}.")
    patches, coords = batch["patches"], batch["coords"]
    expected = _expected(model)
    if tuple(patches.shape[1:]) != expected:
        raise ValueError(
            f"`patches` must have shape (B,) + {expected} for this pyramid, got "
            f"{tuple(patches.shape)}."
        )
    if tuple(coords.shape[1:]) != (model.pyramid.num_levels, 6):
        raise ValueError(
            f"`coords` must have shape (B, {model.pyramid.num_levels}, 6), got "
            f"{tuple(coords.shape)}."
        )
    bb = model.backbone
    conditions = {}
    if "text" in batch:
        raise ValueError(
            "Raw `text` reached the loss: pass batches through `model.fit` (which encodes "
            "prompts) or give precomputed `text_embeddings`."
        )
    if bb.num_classes:
        if "label" not in batch:
            raise ValueError("This model is class-conditional: batches need a 'label' key.")
        label = batch["label"]
        if len(label.shape) != 1:
            raise ValueError(f"`label` must have shape (B,), got {tuple(label.shape)}.")
        conditions["label"] = ops.cast(label, "int32")
    elif "label" in batch:
        raise ValueError("Batch has 'label' but the model is not class-conditional "
                         "(backbone `num_classes=None`).")
    if bb.text_dim:
        if "text_embeddings" not in batch:
            raise ValueError("This model is text-conditional: batches need 'text' prompts.")
        conditions["text_embeddings"] = batch["text_embeddings"]
    elif "text_embeddings" in batch:
        raise ValueError("Batch has text but the model is not text-conditional "
                         "(backbone `text_dim=None`).")
    return ops.cast(patches, "float32"), ops.cast(coords, "float32"), conditions


def _numpy_checks(model, batch):
    patches = np.asarray(batch["patches"])
    if not np.all(np.isfinite(patches)):
        raise ValueError("`patches` contains NaN or Inf values.")
    if "label" in batch and model.backbone.num_classes:
        label = np.asarray(batch["label"])
        if label.size and (label.min() < 0 or label.max() >= model.backbone.num_classes):
            raise ValueError(
                f"`label` values must be in [0, {model.backbone.num_classes - 1}], got "
                f"min {label.min()} max {label.max()}."
            )


def _encode_text(model, texts):
    prompts = [t.decode() if isinstance(t, bytes) else str(t) for t in np.ravel(texts)]
    return np.asarray(model.text_encoder.encode(prompts)["embeddings"], "float32")


def prepare_inputs(model, x):
    """Validates values and turns `text` prompts into `text_embeddings`."""
    import tensorflow as tf

    if isinstance(x, dict):
        x = dict(x)
        if "patches" in x:
            _numpy_checks(model, x)
        if "text" in x and model.backbone.text_dim:
            x["text_embeddings"] = _encode_text(model, x.pop("text"))
        return x
    if not isinstance(x, tf.data.Dataset):
        return x  # generators / PyDatasets: shape checks still apply in the loss
    num_classes = model.backbone.num_classes

    def validate(batch):
        if not isinstance(batch, dict):
            return batch
        batch = dict(batch)
        if "patches" in batch:
            batch["patches"] = tf.debugging.assert_all_finite(
                tf.cast(batch["patches"], tf.float32), "`patches` contains NaN or Inf values."
            )
        if "label" in batch and num_classes:
            label = tf.cast(batch["label"], tf.int32)
            with tf.control_dependencies([
                tf.debugging.assert_non_negative(label, message="`label` values must be >= 0"),
                tf.debugging.assert_less(
                    label, num_classes,
                    message=f"`label` values must be in [0, {num_classes - 1}]",
                ),
            ]):
                batch["label"] = tf.identity(label)
        if "text" in batch and batch["text"].dtype == tf.string and model.backbone.text_dim:
            texts = batch.pop("text")
            emb = tf.numpy_function(lambda t: _encode_text(model, t), [texts], tf.float32)
            emb.set_shape([None, None, model.backbone.text_dim])
            batch["text_embeddings"] = emb
        return batch

    return x.map(validate)
