"""Quality of a class-conditional Moving MNIST model: digits, persistence, class effect, FVD."""

import time

import numpy as np

from keras_hpdm.checks import check_int
from keras_hpdm.metrics.digit_reader import DIGIT
from keras_hpdm.metrics.digit_scores import digit_video_scores


def _mean_abs(a, b):
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def _rgb(videos):
    return np.repeat(videos, 3, axis=-1) if videos.shape[-1] == 1 else videos


def evaluate_moving_mnist(model, per_class=2, seed=0, fvd_videos=0, fvd_batch_size=8,
                          **generate_kwargs):
    """Generates every digit and scores the videos with the packaged `DigitReader`.

    Sample `i` of every class uses the same noise (same `seed`, same sample index), so
    comparing classes at a fixed sample index measures what the class changes, and comparing
    sample indices within a class what the noise changes.

    Args:
        model: a class-conditional `PatchDiffusionModel` with 10 classes (Moving MNIST).
        per_class: videos per digit (>= 2 for the noise effect).
        seed: generation seed.
        fvd_videos: also compute FVD/KVD of this many generated videos (digits in turn)
            against as many real Moving MNIST videos, with the same figures for a second
            real set beside them (the real/real reference); 0 skips it (I3D takes seconds
            per video on a CPU).
        fvd_batch_size: clips per I3D call.
        **generate_kwargs: passed to `model.generate` (`num_steps`, `guidance_scale`, ...).

    Returns:
        dict: `class_accuracy`, `frame_accuracy`, `persistence`, `per_class_accuracy` (see
        `digit_video_scores`), `class_effect` and `noise_effect` (mean absolute pixel
        difference /255 between videos of two classes at one noise, and of one class at two
        noises), `num_videos`, `seconds` (generation), and with `fvd_videos`: `fvd`, `kvd`,
        `fvd_real_real`, `kvd_real_real`, `fvd_num_videos`.

    Example:
    ```python
    model = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist")
    keras_hpdm.metrics.evaluate_moving_mnist(model, per_class=2, num_steps=32)
    ```
    """
    backbone = model.backbone
    if backbone.num_classes != 10:
        raise ValueError("`evaluate_moving_mnist` needs a model with 10 classes (digits); this "
                         f"one has num_classes={backbone.num_classes}.")
    if min(model.pyramid.target_size[1:]) < DIGIT:
        raise ValueError(f"The digit reader needs frames of at least {DIGIT}x{DIGIT} pixels; "
                         f"this model makes {model.pyramid.target_size} videos.")
    per_class = check_int("per_class", per_class, low=1)
    fvd_videos = check_int("fvd_videos", fvd_videos, low=0)
    generate_kwargs.setdefault("verbose", 0)
    start = time.time()
    by_class = [model.generate(digit, num_samples=per_class, seed=seed, **generate_kwargs)
                for digit in range(10)]
    seconds = time.time() - start
    videos = np.concatenate(by_class)
    labels = np.repeat(np.arange(10), per_class)
    scores = digit_video_scores(videos, labels)
    scores.pop("predicted")
    scores["class_effect"] = float(np.mean([
        _mean_abs(by_class[a], by_class[b]) for a in range(10) for b in range(a + 1, 10)]))
    scores["noise_effect"] = (
        float(np.mean([_mean_abs(v[i], v[j]) for v in by_class
                       for i in range(per_class) for j in range(i + 1, per_class)]))
        if per_class > 1 else float("nan"))
    scores["seconds"] = seconds
    if fvd_videos:
        scores.update(moving_mnist_fvd(model, fvd_videos, seed, fvd_batch_size,
                                       **generate_kwargs))
    return scores


def moving_mnist_fvd(model, num_videos, seed=0, batch_size=8, **generate_kwargs):
    """FVD/KVD of generated videos vs real Moving MNIST, beside the real/real figures.

    Both scores depend on the set size, so compare only figures at the same `num_videos`.

    Returns:
        dict: `fvd`, `kvd` (generated vs real), `fvd_real_real`, `kvd_real_real` (a second
        real set vs the first), `fvd_num_videos`.
    """
    from keras_hpdm.data.moving_mnist import moving_mnist
    from keras_hpdm.metrics.features import extract_features, make_i3d_extractor
    from keras_hpdm.metrics.frechet_video_distance import frechet_distance
    from keras_hpdm.metrics.kernel_video_distance import kernel_distance

    num_videos = check_int("num_videos", num_videos, low=2)
    size = model.pyramid.target_size
    if size[1] != size[2]:
        raise ValueError(f"Moving MNIST videos are square; this model makes {size}.")
    generate_kwargs.setdefault("verbose", 0)
    labels = [int(c) for c in np.arange(num_videos) % 10]
    fake = model.generate(labels, seed=seed + 1, **generate_kwargs)
    real, _ = moving_mnist(num_videos, num_frames=size[0], size=size[1], seed=seed + 1000)
    other, _ = moving_mnist(num_videos, num_frames=size[0], size=size[1], seed=seed + 2000)
    extractor = make_i3d_extractor(batch_size, None)
    feats = {name: extract_features(_rgb(v), extractor, batch_size, name)
             for name, v in (("real", real), ("fake", fake), ("other", other))}
    return {
        "fvd": frechet_distance(feats["real"], feats["fake"]),
        "kvd": kernel_distance(feats["real"], feats["fake"]),
        "fvd_real_real": frechet_distance(feats["real"], feats["other"]),
        "kvd_real_real": kernel_distance(feats["real"], feats["other"]),
        "fvd_num_videos": num_videos,
    }
