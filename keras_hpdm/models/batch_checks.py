"""Validation of training batches, and text encoding before they reach the backend.

Keys and static shapes are checked before `fit` hands the data to Keras (dicts and
`tf.data` element specs) and again where the batch enters the loss (a clear `ValueError` at
trace time, e.g. for generators). Values (NaN/Inf, label range) cannot raise from inside a
compiled JAX / XLA step, so they are checked on the data side instead: in the `tf.data`
graph (which runs outside the compiled step under every backend) or on numpy arrays.
"""

import numpy as np

ALLOWED_KEYS = ("patches", "coords", "label", "text", "text_embeddings")


def _expected(model):
    spec, bb = model.pyramid, model.backbone
    return (spec.num_levels,) + spec.patch_size + (bb.channels,)


def _shape(value):
    """Static shape as a tuple (None for unknown dims), or None when the rank is unknown."""
    shape = getattr(value, "shape", None)
    if shape is None:
        shape = np.shape(value)
    try:
        return tuple(None if d is None else int(d) for d in shape)
    except (TypeError, ValueError):  # a TensorShape of unknown rank
        return None


def _matches(shape, expected):
    return shape is None or (
        len(shape) == len(expected)
        and all(d is None or e is None or d == e for d, e in zip(shape, expected, strict=True))
    )


def check_batch_structure(model, batch):
    """Keys and static shapes of a batch (dict of arrays, tensors or `tf.TensorSpec`s).

    Runs before `fit` hands the data to Keras (a failed first step would leave a JAX model's
    variables detached) and again where the batch enters the loss.
    """
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
    expected = _expected(model)
    shape = _shape(batch["patches"])
    if not _matches(shape, (None,) + expected):
        raise ValueError(
            f"`patches` must have shape (B,) + {expected} for this pyramid, got {shape}."
        )
    shape = _shape(batch["coords"])
    if not _matches(shape, (None, model.pyramid.num_levels, 6)):
        raise ValueError(
            f"`coords` must have shape (B, {model.pyramid.num_levels}, 6), got {shape}."
        )
    bb = model.backbone
    if "text" in batch and not bb.text_dim:
        raise ValueError(_not_text_conditional(bb))
    if bb.num_classes:
        if "label" not in batch:
            raise ValueError("This model is class-conditional: batches need a 'label' key.")
        shape = _shape(batch["label"])
        if not _matches(shape, (None,)):
            raise ValueError(f"`label` must have shape (B,), got {shape}.")
    elif "label" in batch:
        raise ValueError("Batch has 'label' but the model is not class-conditional "
                         "(backbone `num_classes=None`).")
    if bb.text_dim:
        if "text_embeddings" not in batch and "text" not in batch:
            raise ValueError("This model is text-conditional: batches need 'text' prompts.")
    elif "text_embeddings" in batch:
        raise ValueError("Batch has text but the model is not text-conditional "
                         "(backbone `text_dim=None`).")


def check_training_batch(model, batch):
    """Returns `(patches, coords, conditions)` or raises a `ValueError` naming the key."""
    from keras import ops

    check_batch_structure(model, batch)
    if "text" in batch:
        raise ValueError(
            "Raw `text` reached the loss: pass batches through `model.fit` (which encodes "
            "prompts) or give precomputed `text_embeddings`."
        )
    conditions = {}
    if model.backbone.num_classes:
        conditions["label"] = ops.cast(batch["label"], "int32")
    if model.backbone.text_dim:
        conditions["text_embeddings"] = batch["text_embeddings"]
    return (ops.cast(batch["patches"], "float32"), ops.cast(batch["coords"], "float32"),
            conditions)


def _not_text_conditional(backbone):
    kind = (f"class-conditional: give 'label' ints in [0, {backbone.num_classes - 1}]"
            if backbone.num_classes else "unconditional: give no conditions")
    return (f"Batch has 'text' prompts, but the model is not text-conditional (backbone "
            f"`text_dim=None`); it is {kind}.")


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
        check_batch_structure(model, x)
        _numpy_checks(model, x)
        if "text" in x:
            x["text_embeddings"] = _encode_text(model, x.pop("text"))
        return x
    if isinstance(x, (np.ndarray, list, tuple)) or hasattr(x, "__array__"):
        check_batch_structure(model, x)  # raises: batches must be dicts
    if not isinstance(x, tf.data.Dataset):
        return x  # generators / PyDatasets: the checks run where the batch enters the loss
    if isinstance(x.element_spec, dict):
        check_batch_structure(model, x.element_spec)
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
            # Static token count: the backbones fold levels into the batch with reshapes
            # that need every non-batch axis known when TensorFlow traces the step.
            emb.set_shape([None, model.text_encoder.sequence_length, model.backbone.text_dim])
            batch["text_embeddings"] = emb
        return batch

    return x.map(validate)
