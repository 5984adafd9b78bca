"""One-call video evaluation: `fvd`, `kvd` and `evaluate_videos` (what the CLI calls)."""

from keras_hpdm.metrics.features import (
    check_batch_size,
    extract_features,
    make_i3d_extractor,
)
from keras_hpdm.metrics.frechet_video_distance import frechet_distance
from keras_hpdm.metrics.kernel_video_distance import kernel_distance

VIDEO_METRICS = {"fvd": frechet_distance, "kvd": kernel_distance}


def evaluate_videos(real, fake, metrics=("fvd", "kvd"), batch_size=8, num_frames=None,
                    feature_extractor=None):
    """Scores generated videos against real ones; features are computed once for all metrics.

    Args:
        real, fake: uint8 videos `(n, frames, h, w, 3)` (any frame size; at least 9 frames,
            16 in the FVD protocol), or iterables of such batches.
        metrics: names among `("fvd", "kvd")`.
        batch_size: clips per I3D call.
        num_frames: keep the first `num_frames` frames of every video (None keeps all).
        feature_extractor: None (Kinetics I3D) or a callable uint8 batch -> `(b, d)` features.

    Returns:
        `{"fvd": float, "kvd": float, "num_real": n, "num_fake": m}` (the requested metrics):
        both scores depend on the set sizes, so the sizes are always reported.

    Example:
    ```python
    evaluate_videos(real_videos, generated_videos, batch_size=16)
    # {'fvd': 412.3, 'kvd': 18.7, 'num_real': 2048, 'num_fake': 2048}
    ```
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in VIDEO_METRICS]
    if unknown or not metrics:
        raise ValueError(
            f"`metrics` must be a non-empty subset of {tuple(VIDEO_METRICS)}, got {metrics!r}."
        )
    batch_size = check_batch_size(batch_size)
    if feature_extractor is None:
        feature_extractor = make_i3d_extractor(batch_size, num_frames)
    elif not callable(feature_extractor):
        raise TypeError("`feature_extractor` must be None or a callable.")
    real_feats = extract_features(real, feature_extractor, batch_size, "real")
    fake_feats = extract_features(fake, feature_extractor, batch_size, "fake")
    result = {name: VIDEO_METRICS[name](real_feats, fake_feats) for name in metrics}
    result.update(num_real=len(real_feats), num_fake=len(fake_feats))
    return result


def fvd(real, fake, batch_size=8, num_frames=None, feature_extractor=None):
    """Fréchet Video Distance: `{"fvd": value, "num_real": n, "num_fake": m}`.

    See `evaluate_videos` for the arguments.
    """
    return evaluate_videos(real, fake, ("fvd",), batch_size, num_frames, feature_extractor)


def kvd(real, fake, batch_size=8, num_frames=None, feature_extractor=None):
    """Kernel Video Distance: `{"kvd": value, "num_real": n, "num_fake": m}`.

    See `evaluate_videos` for the arguments.
    """
    return evaluate_videos(real, fake, ("kvd",), batch_size, num_frames, feature_extractor)
