"""Logs FVD/KVD of the model's samples into the epoch logs during `fit`."""

import keras
import numpy as np

from keras_hpdm.checks import check_int
from keras_hpdm.metrics.features import (
    check_batch_size,
    extract_features,
    make_i3d_extractor,
)
from keras_hpdm.metrics.functions import VIDEO_METRICS


# Not registered as serializable: callbacks are not saved with models, and this one holds data
# (the real videos) and code (the feature extractor) that no config could carry.
class FVDCallback(keras.callbacks.Callback):
    """Every `every_n_epochs` epochs, samples videos and logs `fvd` / `kvd` against real ones.

    The model must define `generate(num_samples=..., seed=..., **generate_kwargs)` returning
    uint8 videos `(num_samples, frames, h, w, 3)`. The real videos' features are computed once
    and cached. The same `seed` is used at every evaluation, so the scores follow the model,
    not the noise. Scores are added to the epoch `logs` (so `History`, `CSVLogger` or
    `TensorBoard` placed after this callback see them), with `num_fake`.

    Args:
        real_videos: uint8 `(n, frames, h, w, 3)` array or iterable of batches.
        every_n_epochs: evaluate after epochs `every_n_epochs, 2 * every_n_epochs, ...`.
        num_samples: videos to generate (default: as many as real videos).
        generate_kwargs: extra keyword arguments for `model.generate`.
        metrics: names among `("fvd", "kvd")`.
        batch_size: clips per I3D call.
        seed: sampling seed passed to `generate`.
        num_frames: keep the first `num_frames` frames (None keeps all).
        feature_extractor: None (Kinetics I3D) or a callable uint8 batch -> `(b, d)` features.

    Example:
    ```python
    model.fit(data, epochs=100, callbacks=[
        FVDCallback(real_videos, every_n_epochs=10, num_samples=256,
                    generate_kwargs={"guidance_scale": 1.5}),
    ])
    ```
    """

    def __init__(self, real_videos, every_n_epochs=1, num_samples=None, generate_kwargs=None,
                 metrics=("fvd", "kvd"), batch_size=8, seed=0, num_frames=None,
                 feature_extractor=None):
        super().__init__()
        every_n_epochs = check_int("every_n_epochs", every_n_epochs, low=1)
        num_samples = check_int("num_samples", num_samples, low=2, allow_none=True)
        if generate_kwargs is not None and not isinstance(generate_kwargs, dict):
            raise TypeError(
                f"`generate_kwargs` must be a dict or None, got {type(generate_kwargs).__name__}."
            )
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        if not metrics or any(m not in VIDEO_METRICS for m in metrics):
            raise ValueError(
                f"`metrics` must be a non-empty subset of {tuple(VIDEO_METRICS)}, got {metrics!r}."
            )
        self.real_videos = real_videos
        self.every_n_epochs = int(every_n_epochs)
        self.num_samples = num_samples
        self.generate_kwargs = dict(generate_kwargs or {})
        self.metrics = metrics
        self.batch_size = check_batch_size(batch_size)
        self.seed = seed
        self.num_frames = num_frames
        self.feature_extractor = feature_extractor or make_i3d_extractor(batch_size, num_frames)
        self._real_features = None

    def real_features(self):
        """Features of `real_videos` (computed on first use, then cached)."""
        if self._real_features is None:
            self._real_features = extract_features(
                self.real_videos, self.feature_extractor, self.batch_size, "real_videos"
            )
        return self._real_features

    def evaluate(self):
        """Samples from the model and returns `{metric: value, ..., "num_fake": m}`."""
        if not callable(getattr(self.model, "generate", None)):
            raise TypeError(
                f"FVDCallback needs a model with a `generate` method; {type(self.model).__name__} "
                "has none."
            )
        real = self.real_features()
        num_samples = self.num_samples or len(real)
        videos = self.model.generate(num_samples=num_samples, seed=self.seed,
                                     **self.generate_kwargs)
        videos = np.asarray(keras.ops.convert_to_numpy(videos))
        if len(videos) != num_samples:
            raise ValueError(
                f"`model.generate(num_samples={num_samples})` returned {len(videos)} videos."
            )
        fake = extract_features(videos, self.feature_extractor, self.batch_size, "generated")
        scores = {name: VIDEO_METRICS[name](real, fake) for name in self.metrics}
        scores["num_fake"] = len(fake)
        return scores

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        scores = self.evaluate()
        if logs is not None:
            logs.update(scores)
