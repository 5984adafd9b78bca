"""Validation of training batches, and text encoding before they reach the backend.

Keys and static shapes are checked before `fit` hands the data to Keras (dicts and
`tf.data` element specs) and again where the batch enters the loss (a clear `ValueError` at
trace time, e.g. for generators). Values (NaN/Inf, coordinate and label ranges) cannot raise
from inside a compiled JAX / XLA step, so they are checked on the data side, on every input
path: numpy checks on dicts of arrays, on each batch a Python generator yields and on each
item a `keras.utils.PyDataset` returns; assertions in the `tf.data` graph (which runs outside
the compiled step under every backend).
"""

import inspect
import sys

import keras
import numpy as np

ALLOWED_KEYS = ("patches", "coords", "label", "text", "text_embeddings")
FLOAT_KEYS = ("patches", "coords", "text_embeddings")  # must be finite


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
    has_text = "text" in batch or "text_embeddings" in batch
    bb.check_condition_keys(
        "label" in batch, has_text,
        text_key="text" if "text" in batch or bb.text_dim else "text_embeddings",
        label_hint=" Build the data with labels, e.g. "
        "`keras_hpdm.data.pyramid_dataset(source, spec, batch_size, labels=True)` (the "
        "data's own classes: sub-folders, built-in digits) or `labels=` a CSV/JSON file, or "
        "use a backbone without `num_classes` for unconditional training.")
    if "label" in batch:
        shape = _shape(batch["label"])
        if not _matches(shape, (None,)):
            raise ValueError(f"`label` must have shape (B,), got {shape}.")


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


def _host_array(value):
    """A batch entry as numpy: arrays and CPU tensors directly, device tensors via Keras."""
    try:
        return np.asarray(value)
    except (TypeError, RuntimeError, ValueError):  # e.g. a torch tensor on a GPU
        return np.asarray(keras.ops.convert_to_numpy(value))


def check_batch_values(batch, num_classes=None, sample_weight=None):
    """Raises a `ValueError` naming the key when a batch's values would poison training:
    NaN/Inf in `patches`, `coords`, `text_embeddings` or `sample_weight`, `coords` outside
    [0, 1], labels outside `[0, num_classes)`. Missing keys are left to the structure check.
    """
    for key in FLOAT_KEYS:
        if key in batch and not np.all(np.isfinite(_host_array(batch[key]))):
            raise ValueError(f"`{key}` contains NaN or Inf values.")
    if "coords" in batch:
        coords = _host_array(batch["coords"])
        if coords.size and (coords.min() < 0 or coords.max() > 1):
            raise ValueError(
                "`coords` (scales and offsets as fractions of the video) must be in [0, 1], "
                f"got min {coords.min()} max {coords.max()}."
            )
    if "label" in batch and num_classes:
        label = _host_array(batch["label"])
        if label.size and (label.min() < 0 or label.max() >= num_classes):
            raise ValueError(
                f"`label` values must be in [0, {num_classes - 1}], got "
                f"min {label.min()} max {label.max()}."
            )
    if sample_weight is not None:
        weight = _host_array(sample_weight)
        if not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise ValueError("`sample_weight` must be finite and >= 0.")


def _checked_item(item, num_classes, model=None):
    """A generator / PyDataset item, checked; a bare dict becomes Keras' `(x,)`. With
    `model`, `text` prompts become `text_embeddings` (as `fit` does for dicts and tf.data);
    without one (a multiprocessing `PyDataset`: the model stays in this process), a batch
    with text is refused with what to do instead."""
    if isinstance(item, dict):
        item = (item,)
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], dict):
        weight = item[2] if len(item) == 3 else None
        check_batch_values(item[0], num_classes, weight)
        if "text" in item[0]:
            if model is None:
                raise ValueError(
                    "A `PyDataset` with `use_multiprocessing=True` gave raw 'text': its "
                    "workers cannot run the text encoder. Give 'text_embeddings' "
                    "(`model.encode_text(prompts)`) or use threads.")
            x = dict(item[0])
            x["text_embeddings"] = _encode_text(model, x.pop("text"))
            item = (x, *item[1:])
    return item


def _checked_generator(generator, model):
    num_classes = model.backbone.num_classes
    for item in generator:
        yield _checked_item(item, num_classes, model)


class CheckedPyDataset(keras.utils.PyDataset):
    """A `PyDataset` whose items are checked as they are loaded (in its workers, if any:
    it holds plain data only, so it pickles wherever the wrapped dataset does)."""

    def __init__(self, dataset, model):
        super().__init__(workers=dataset.workers,
                         use_multiprocessing=dataset.use_multiprocessing,
                         max_queue_size=dataset.max_queue_size)
        self.dataset = dataset
        self.num_classes = model.backbone.num_classes
        # Threads share the model (text prompts are encoded there); processes get none.
        self.model = None if dataset.use_multiprocessing else model

    def __getitem__(self, index):
        return _checked_item(self.dataset[index], self.num_classes, self.model)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _encode_text(model, texts):
    prompts = [t.decode() if isinstance(t, bytes) else str(t) for t in np.ravel(texts)]
    return model.encode_text(prompts)


def prepare_inputs(model, x, sample_weight=None):
    """Validates values and turns `text` prompts into `text_embeddings`.

    Dicts of arrays are checked at once; generators, `PyDataset`s and `tf.data` datasets
    come back wrapped so that each batch is checked as it is drawn.
    """
    num_classes = model.backbone.num_classes
    if isinstance(x, dict):
        x = dict(x)
        check_batch_structure(model, x)
        check_batch_values(x, num_classes, sample_weight)
        if "text" in x:
            x["text_embeddings"] = _encode_text(model, x.pop("text"))
        return x
    if isinstance(x, (np.ndarray, list, tuple)) or hasattr(x, "__array__"):
        check_batch_structure(model, x)  # raises: batches must be dicts
    if isinstance(x, keras.utils.PyDataset):
        return CheckedPyDataset(x, model)
    if inspect.isgenerator(x):
        return _checked_generator(x, model)
    # A `tf.data` dataset exists only once TensorFlow is imported: without it (the GPU
    # machine has none) `fit` from numpy must not import it.
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(x, tf.data.Dataset):
        return x  # other sources (e.g. a torch DataLoader): structure checked in the loss
    if isinstance(x.element_spec, dict):
        check_batch_structure(model, x.element_spec)
    return x.map(lambda *element: _tf_validate(*element, model=model))


def _tf_with_asserts(value, asserts):
    import tensorflow as tf

    with tf.control_dependencies(asserts):
        return tf.identity(value)


def _tf_check_finite(value, key):
    import tensorflow as tf

    return tf.debugging.assert_all_finite(tf.cast(value, tf.float32),
                                          f"`{key}` contains NaN or Inf values.")


def _tf_validate(*element, model):
    """`tf.data` twin of `check_batch_values`: cheap elementwise asserts in the graph, and
    text prompts encoded into `text_embeddings`."""
    import tensorflow as tf

    if len(element) > 1:  # (x, y) or (x, y, sample_weight)
        rest = list(element[1:])
        if len(rest) == 2:
            weight = _tf_check_finite(rest[1], "sample_weight")
            rest[1] = _tf_with_asserts(weight, [tf.debugging.assert_non_negative(
                weight, message="`sample_weight` must be finite and >= 0")])
        return (_tf_validate(element[0], model=model), *rest)
    batch = element[0]
    if not isinstance(batch, dict):
        return batch
    batch = dict(batch)
    for key in FLOAT_KEYS:
        if key in batch:
            batch[key] = _tf_check_finite(batch[key], key)
    if "coords" in batch:
        message = "`coords` (fractions of the video) must be in [0, 1]"
        batch["coords"] = _tf_with_asserts(batch["coords"], [
            tf.debugging.assert_non_negative(batch["coords"], message=message),
            tf.debugging.assert_less_equal(batch["coords"], 1.0, message=message),
        ])
    num_classes = model.backbone.num_classes
    if "label" in batch and num_classes:
        label = tf.cast(batch["label"], tf.int32)
        batch["label"] = _tf_with_asserts(label, [
            tf.debugging.assert_non_negative(label, message="`label` values must be >= 0"),
            tf.debugging.assert_less(
                label, num_classes, message=f"`label` values must be in [0, {num_classes - 1}]"
            ),
        ])
    if "text" in batch and batch["text"].dtype == tf.string and model.backbone.text_dim:
        texts = batch.pop("text")
        emb = tf.numpy_function(lambda t: _encode_text(model, t), [texts], tf.float32)
        # Static token count: the backbones fold levels into the batch with reshapes
        # that need every non-batch axis known when TensorFlow traces the step.
        emb.set_shape([None, model.text_encoder.sequence_length, model.backbone.text_dim])
        batch["text_embeddings"] = emb
    return batch
