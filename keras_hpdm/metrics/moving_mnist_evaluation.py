"""Quality of a Moving MNIST model: digits, persistence, class effect, FVD; for a text model
also the direction its prompts name."""

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

    num_videos = check_int("num_videos", num_videos, low=2)
    size = model.pyramid.target_size
    if size[1] != size[2]:
        raise ValueError(f"Moving MNIST videos are square; this model makes {size}.")
    generate_kwargs.setdefault("verbose", 0)
    labels = [int(c) for c in np.arange(num_videos) % 10]
    fake = model.generate(labels, seed=seed + 1, **generate_kwargs)
    real, _ = moving_mnist(num_videos, num_frames=size[0], size=size[1], seed=seed + 1000)
    other, _ = moving_mnist(num_videos, num_frames=size[0], size=size[1], seed=seed + 2000)
    return _fvd_scores(real, fake, other, batch_size)


def _fvd_scores(real, fake, other, batch_size):
    from keras_hpdm.metrics.features import extract_features, make_i3d_extractor
    from keras_hpdm.metrics.frechet_video_distance import frechet_distance
    from keras_hpdm.metrics.kernel_video_distance import kernel_distance

    extractor = make_i3d_extractor(batch_size, None)
    feats = {name: extract_features(_rgb(v), extractor, batch_size, name)
             for name, v in (("real", real), ("fake", fake), ("other", other))}
    return {
        "fvd": frechet_distance(feats["real"], feats["fake"]),
        "kvd": kernel_distance(feats["real"], feats["fake"]),
        "fvd_real_real": frechet_distance(feats["real"], feats["other"]),
        "kvd_real_real": kernel_distance(feats["real"], feats["other"]),
        "fvd_num_videos": len(real),
    }


def evaluate_moving_mnist_text(model, num_videos=20, phrasings="held_out", seed=0, fvd=False,
                               fvd_batch_size=8, **generate_kwargs):
    """Generates from captions of real captioned Moving MNIST videos and checks the facts.

    The captions (`keras_hpdm.data.captioned_moving_mnist`, `phrasings` wordings: the
    `"held_out"` ones never occur in training captions) name a digit, a direction and a
    speed. Each generated video is read by the packaged `DigitReader` (the named digit?) and
    by `measured_directions` (does the digit move the named way from the first frame to the
    last?).

    Args:
        model: a text-conditional `PatchDiffusionModel` making grayscale videos of at least
            28x28 pixels (Moving MNIST).
        num_videos: videos to generate (one per caption).
        phrasings: `"held_out"` (default), `"train"` or `"compass"` (see
            `keras_hpdm.data.moving_mnist_caption`).
        seed: seeds the captions (and their real videos) and the generation.
        fvd: also FVD/KVD of the generated videos against the captions' real videos, with
            a second real set beside them (the real/real reference).
        fvd_batch_size: clips per I3D call.
        **generate_kwargs: passed to `model.generate` (`num_steps`, `guidance_scale`, ...).

    Returns:
        dict: `digit_accuracy` (videos read as the named digit), `frame_accuracy`,
        `persistence` (see `digit_video_scores`), `direction_accuracy` (videos whose digit
        moves the named way), `still_fraction` (videos without measurable motion),
        `num_videos`, `phrasings`, `seconds` (generation), `examples` (the first captions
        with what was read), and with `fvd`: `fvd`, `kvd`, `fvd_real_real`,
        `kvd_real_real`, `fvd_num_videos`.

    Example:
    ```python
    model = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist_text")
    keras_hpdm.metrics.evaluate_moving_mnist_text(model, num_videos=20)
    ```
    """
    from keras_hpdm.data.moving_mnist_captions import DIRECTIONS, captioned_moving_mnist
    from keras_hpdm.metrics.motion import STILL, measured_directions

    backbone = model.backbone
    if not backbone.text_dim:
        raise ValueError("`evaluate_moving_mnist_text` needs a text-conditional model "
                         "(backbone `text_dim`); for class labels use "
                         "`evaluate_moving_mnist`.")
    frames, height, width = model.pyramid.target_size
    if min(height, width) < DIGIT or height != width or backbone.channels != 1:
        raise ValueError("`evaluate_moving_mnist_text` needs square grayscale videos of at "
                         f"least {DIGIT}x{DIGIT} pixels; this model makes "
                         f"{model.pyramid.target_size} with {backbone.channels} channels.")
    num_videos = check_int("num_videos", num_videos, low=1)
    real, captions, facts = captioned_moving_mnist(num_videos, num_frames=frames, size=height,
                                                   seed=seed, phrasings=phrasings)
    generate_kwargs.setdefault("verbose", 0)
    start = time.time()
    videos = model.generate(captions, seed=seed, **generate_kwargs)
    seconds = time.time() - start
    scores = digit_video_scores(videos, facts["digit"])
    predicted = scores.pop("predicted")
    scores.pop("per_class_accuracy", None)
    measured = measured_directions(videos)
    out = {
        "digit_accuracy": scores.pop("class_accuracy"), **scores,
        "direction_accuracy": float(np.mean(measured == facts["direction"])),
        "still_fraction": float(np.mean(measured == STILL)),
        "num_videos": num_videos, "phrasings": phrasings, "seconds": seconds,
        "examples": [
            {"caption": c, "digit_read": int(p),
             "direction_measured": None if m == STILL else DIRECTIONS[m]}
            for c, p, m in zip(captions[:10], predicted[:10], measured[:10], strict=True)],
    }
    if fvd:
        other, _, _ = captioned_moving_mnist(num_videos, num_frames=frames, size=height,
                                             seed=seed + 1000, phrasings=phrasings)
        out.update(_fvd_scores(real, videos, other, fvd_batch_size))
    return out
