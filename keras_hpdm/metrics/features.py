"""Batched I3D feature extraction shared by FVD, KVD, the image proxy and the FVD callback.

Videos go in as uint8 `(n, frames, height, width, 3)` arrays (or any iterable of such batches,
so sets larger than memory stream through), come out as a float32 numpy `(n, d)` matrix.
"""

import weakref

import keras
import numpy as np

from keras_hpdm.checks import check_int
from keras_hpdm.metrics.i3d import I3D, MIN_FRAMES_WITH_TOP, preprocess_videos

_SHARED = {}
# Input shape (without batch) each model's compiled predict function was traced for.
_TRACED = weakref.WeakKeyDictionary()


def check_batch_size(batch_size, name="batch_size"):
    return check_int(name, batch_size, low=1)


def check_num_frames(num_frames, minimum=1):
    return check_int("num_frames", num_frames, low=minimum, allow_none=True)


def pretrained_i3d(include_top=True):
    """The process-wide Kinetics-400 `I3D` (building and loading it takes seconds: reuse it)."""
    key = (include_top, keras.config.dtype_policy().name)
    if key not in _SHARED:
        _SHARED[key] = I3D(include_top=include_top)
    return _SHARED[key]


def _check_batch(batch, name):
    dtype = keras.backend.standardize_dtype(getattr(batch, "dtype", None) or "float32")
    if dtype != "uint8":
        raise TypeError(
            f"`{name}` must hold uint8 videos (values 0..255), got dtype {dtype}; convert with "
            "`np.clip(x, 0, 255).astype('uint8')`."
        )
    shape = tuple(batch.shape)
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError(
            f"`{name}` must be videos of shape (n, frames, height, width, 3), got a batch of "
            f"shape {shape}."
        )
    return np.asarray(keras.ops.convert_to_numpy(batch))


def iterate_batches(videos, batch_size, name="videos"):
    """Yields uint8 numpy batches of at most `batch_size` videos.

    Args:
        videos: a uint8 array/tensor `(n, frames, h, w, 3)`, or an iterable of such arrays
            (e.g. a generator or a `tf.data` dataset of batches), which is re-batched; arrays
            of different frame sizes or lengths are never mixed in one batch.
        batch_size: videos per yielded batch.
        name: argument name used in error messages.
    """
    batch_size = check_batch_size(batch_size)
    if videos is None:
        raise ValueError(f"`{name}` must be uint8 videos (n, frames, h, w, 3), got None.")
    if hasattr(videos, "shape") and hasattr(videos, "dtype"):
        if len(videos.shape) != 5:
            raise ValueError(
                f"`{name}` must be videos of shape (n, frames, height, width, 3), got shape "
                f"{tuple(videos.shape)}."
            )
        sources = (videos[i : i + batch_size] for i in range(0, videos.shape[0], batch_size))
    else:
        try:
            sources = iter(videos)
        except TypeError:
            raise TypeError(
                f"`{name}` must be a uint8 array (n, frames, h, w, 3) or an iterable of such "
                f"batches, got {type(videos).__name__}."
            ) from None
    pending, count = [], 0
    for source in sources:
        batch = _check_batch(source, name)
        if pending and batch.shape[1:] != pending[0].shape[1:]:
            # Videos of another size or length cannot share a batch: flush a short one.
            yield np.concatenate(pending)
            pending, count = [], 0
        while len(batch):
            take = min(batch_size - count, len(batch))
            pending.append(batch[:take])
            count += take
            batch = batch[take:]
            if count == batch_size:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if count:
        yield np.concatenate(pending)


def _predict(model, x):
    # Compiled inference (jit/tf.function). A change of clip shape gets a fresh predict
    # function: TF's retracing would otherwise relax the frame axis to None, and the I3D's
    # TF "SAME" padding needs it static.
    traced = _TRACED.get(model)
    if traced is None or traced[1:] != tuple(x.shape[1:]):
        model.make_predict_function(force=True)
    _TRACED[model] = tuple(x.shape)
    return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(x)), np.float32)


def i3d_batch_features(videos, model, batch_size):
    """Features of uint8 videos: preprocess, then run `model` in chunks of `batch_size`.

    A short chunk is padded (repeating its last clip) to the batch shape the model was last
    compiled for, so a compiled predict function is not rebuilt for the last batch.
    """
    feats = []
    for start in range(0, len(videos), batch_size):
        x = preprocess_videos(videos[start : start + batch_size])
        n = x.shape[0]
        if _TRACED.get(model) == (batch_size,) + tuple(x.shape[1:]) and n < batch_size:
            x = keras.ops.concatenate([x, keras.ops.repeat(x[-1:], batch_size - n, axis=0)])
        feats.append(_predict(model, x)[:n])
    return np.concatenate(feats)


def make_i3d_extractor(batch_size=8, num_frames=None, include_top=True, model=None):
    """A `feature_extractor`: uint8 videos `(b, T, h, w, 3)` -> numpy `(b, 400)` (or 1024).

    Args:
        batch_size: clips per network call.
        num_frames: keep the first `num_frames` frames of each video (None: all of them).
        include_top: logits (FVD's features) or pooled `Mixed_5c` features.
        model: an `I3D` to use; default: the shared pretrained one.
    """
    batch_size = check_batch_size(batch_size)
    num_frames = check_num_frames(num_frames, MIN_FRAMES_WITH_TOP if include_top else 1)

    def extract(videos):
        net = model if model is not None else pretrained_i3d(include_top)
        if num_frames is not None:
            if videos.shape[1] < num_frames:
                raise ValueError(
                    f"Videos have {videos.shape[1]} frames, fewer than `num_frames`={num_frames}."
                )
            videos = videos[:, :num_frames]
        return i3d_batch_features(videos, net, batch_size)

    return extract


def extract_features(videos, feature_extractor, batch_size, name="videos"):
    """Runs `feature_extractor` over every batch of `videos`; returns float32 `(n, d)`."""
    feats = [
        np.asarray(feature_extractor(batch), np.float32)
        for batch in iterate_batches(videos, batch_size, name)
    ]
    if not feats:
        raise ValueError(f"`{name}` is empty: at least 2 videos are needed.")
    return np.concatenate(feats)


def extract_video_features(videos, batch_size=8, num_frames=None, include_top=True):
    """I3D features of uint8 videos: time-averaged Kinetics logits `(n, 400)` by default.

    Args:
        videos: uint8 `(n, frames, h, w, 3)` array or iterable of such batches; frames of any
            size are resized to 224x224.
        batch_size: clips per network call.
        num_frames: keep the first `num_frames` frames (the FVD protocol uses 16).
        include_top: logits (True) or pooled `Mixed_5c` features `(n, 1024)` (False).
    """
    extractor = make_i3d_extractor(batch_size, num_frames, include_top)
    return extract_features(videos, extractor, batch_size)


class VideoFeatureMetric(keras.metrics.Metric):
    """Base of the streaming video metrics: accumulates real/generated features on the host.

    Why host (numpy) state rather than Keras variables: the number of videos is unbounded and
    not known in advance (Keras variables have fixed shapes), KVD needs every feature vector
    (its unbiased estimate sums over all pairs), and the distances are computed in float64,
    which JAX only offers with x64 mode. So these metrics are updated eagerly (outside
    `compile(metrics=...)`), e.g. from a callback or an evaluation loop.
    """

    def __init__(self, batch_size=8, num_frames=None, feature_extractor=None, name=None,
                 dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.batch_size = check_batch_size(batch_size)
        self.num_frames = check_num_frames(num_frames)
        if feature_extractor is not None and not callable(feature_extractor):
            raise TypeError(
                "`feature_extractor` must be None (Kinetics I3D) or a callable mapping uint8 "
                f"videos to (n, d) features, got {type(feature_extractor).__name__}."
            )
        self.feature_extractor = feature_extractor
        self._extract = feature_extractor or make_i3d_extractor(batch_size, num_frames)
        self.reset_state()

    def reset_state(self):
        self._real, self._fake = [], []

    def update_state(self, real_videos=None, generated_videos=None, sample_weight=None):
        """Adds a batch of real and/or generated uint8 videos `(n, frames, h, w, 3)`."""
        if sample_weight is not None:
            raise ValueError(f"`sample_weight` is not supported by {type(self).__name__}.")
        if real_videos is None and generated_videos is None:
            raise ValueError("Pass `real_videos`, `generated_videos` or both.")
        if real_videos is not None:
            self._real.append(
                extract_features(real_videos, self._extract, self.batch_size, "real_videos")
            )
        if generated_videos is not None:
            self._fake.append(
                extract_features(
                    generated_videos, self._extract, self.batch_size, "generated_videos"
                )
            )

    def update_features(self, real_features=None, generated_features=None):
        """Adds precomputed features `(n, d)` (e.g. cached statistics of a real set)."""
        for store, feats, name in ((self._real, real_features, "real_features"),
                                   (self._fake, generated_features, "generated_features")):
            if feats is None:
                continue
            feats = np.asarray(keras.ops.convert_to_numpy(feats), np.float32)
            if feats.ndim != 2:
                raise ValueError(f"`{name}` must have shape (n, d), got {feats.shape}.")
            store.append(feats)

    @property
    def num_real(self):
        return int(sum(len(f) for f in self._real))

    @property
    def num_fake(self):
        return int(sum(len(f) for f in self._fake))

    def features(self):
        """`(real, generated)` float32 feature matrices accumulated so far."""
        if not self._real or not self._fake:
            raise ValueError(
                f"{type(self).__name__} needs real and generated videos; got {self.num_real} "
                f"real and {self.num_fake} generated."
            )
        return np.concatenate(self._real), np.concatenate(self._fake)

    def compute(self, real, fake):
        raise NotImplementedError

    def result(self):
        return keras.ops.convert_to_tensor(self.compute(*self.features()), dtype=self.dtype)

    def get_config(self):
        # A custom `feature_extractor` is code, not config: pass it again when reloading.
        config = super().get_config()
        config.update(batch_size=self.batch_size, num_frames=self.num_frames)
        return config
