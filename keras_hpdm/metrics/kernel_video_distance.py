"""Kernel Video Distance (KVD): unbiased polynomial-kernel MMD^2 of I3D features (KID formula)."""

import keras
import numpy as np

from keras_hpdm.checks import check_int
from keras_hpdm.metrics.features import VideoFeatureMetric
from keras_hpdm.metrics.frechet_video_distance import _as_features


def _kernel_sum(x, y, degree, gamma, coef0, block_size):
    """Sum of `(gamma <x_i, y_j> + coef0)^degree` over all pairs, in blocks (bounded memory)."""
    total = 0.0
    for i in range(0, len(x), block_size):
        for j in range(0, len(y), block_size):
            k = (gamma * (x[i : i + block_size] @ y[j : j + block_size].T) + coef0) ** degree
            total += float(k.sum())
    return total


def kernel_distance(features_a, features_b, degree=3, gamma=None, coef0=1.0, block_size=2048):
    """Unbiased MMD^2 with the polynomial kernel `(gamma <x, y> + coef0)^degree` (KID).

    `sum_{i!=j} k(a_i, a_j) / (n(n-1)) + sum_{i!=j} k(b_i, b_j) / (m(m-1))
    - 2 sum_{i,j} k(a_i, b_j) / (nm)`, over the whole sets (no subsets), in float64.

    Args:
        features_a, features_b: `(n, d)` and `(m, d)` feature matrices, n, m >= 2.
        degree, gamma, coef0: kernel parameters; `gamma=None` means `1 / d`.
        block_size: rows per kernel block.
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature sizes differ: {a.shape[1]} vs {b.shape[1]}.")
    degree = check_int("degree", degree, low=1)
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    n, m = len(a), len(b)

    def offdiag(x):
        diag = ((gamma * np.einsum("ij,ij->i", x, x) + coef0) ** degree).sum()
        return _kernel_sum(x, x, degree, gamma, coef0, block_size) - diag

    kaa = offdiag(a) / (n * (n - 1))
    kbb = offdiag(b) / (m * (m - 1))
    kab = _kernel_sum(a, b, degree, gamma, coef0, block_size) / (n * m)
    return float(kaa + kbb - 2.0 * kab)


@keras.saving.register_keras_serializable(package="keras_hpdm")
class KernelVideoDistance(VideoFeatureMetric):
    """Streaming Kernel Video Distance with the Kinetics-400 I3D.

    The unbiased MMD^2 estimate between real and generated I3D features (time-averaged Kinetics
    logits) with the cubic polynomial kernel `(<x, y> / d + 1)^3`, i.e. the KID formula applied
    to video features. Unbiased: it can be slightly negative when the sets match. Report the
    numbers of videos with it (`num_real`, `num_fake`).

    Args:
        batch_size: clips per I3D call.
        num_frames: keep the first `num_frames` frames of every video (None keeps all).
        feature_extractor: None (Kinetics I3D) or a callable mapping a uint8 batch
            `(b, T, h, w, 3)` to features `(b, d)`.
        degree, gamma, coef0: polynomial kernel; `gamma=None` means `1 / d`.
        name: metric name.
        dtype: dtype of `result()`.

    Example:
    ```python
    kvd = KernelVideoDistance()
    kvd.update_state(real_videos, generated_videos)   # uint8 (n, 16, h, w, 3)
    float(kvd.result())
    ```

    References:
        - [Unterthiner et al., Towards Accurate Generative Models of Video: A New Metric &
          Challenges, 2018](https://arxiv.org/abs/1812.01717)
        - [Binkowski et al., Demystifying MMD GANs (KID), ICLR 2018](
          https://arxiv.org/abs/1801.01401)
    """

    def __init__(self, batch_size=8, num_frames=None, feature_extractor=None, degree=3,
                 gamma=None, coef0=1.0, name="kvd", dtype=None):
        super().__init__(batch_size=batch_size, num_frames=num_frames,
                         feature_extractor=feature_extractor, name=name, dtype=dtype)
        degree = check_int("degree", degree, low=1)
        self.degree, self.gamma, self.coef0 = degree, gamma, float(coef0)

    def compute(self, real, fake):
        return kernel_distance(real, fake, self.degree, self.gamma, self.coef0)

    def get_config(self):
        config = super().get_config()
        config.update(degree=self.degree, gamma=self.gamma, coef0=self.coef0)
        return config
