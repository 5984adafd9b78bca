"""Does a text model use each fact of its prompt? The denoising loss with one fact changed.

Generation scores (`evaluate_moving_mnist_text`) say *whether* the videos follow the
prompt; this says *why not* when they do not, cheaply and without sampling: a model that
uses the direction in its prompt denoises a video worse when the prompt names another
direction. At high noise the best denoiser outputs the mean video given the prompt, and on
captioned Moving MNIST the direction and speed shape that mean far more than the digit
does (they fix where the digit starts), so a model that ignores them shows ~0% there.
"""

import keras
import numpy as np

from keras_hpdm.checks import check_int, check_number
from keras_hpdm.data.moving_mnist_captions import (
    DIRECTIONS,
    SPEEDS,
    captioned_moving_mnist,
    moving_mnist_caption,
)

FACTS = ("digit", "direction", "speed")
_CHOICES = {"digit": 10, "direction": len(DIRECTIONS), "speed": len(SPEEDS)}


def caption_sensitivity(model, num_videos=64, sigmas=(1.0, 2.5, 6.0, 20.0),
                        phrasings="held_out", seed=0, batch_size=32):
    """Relative increase of a text model's denoising loss when one fact of the caption is
    changed, per noise level.

    Each of `num_videos` captioned Moving MNIST videos gives one random pyramid and one
    caption of its facts. The loss (`model.pyramid_loss`, the same noise for every
    variant) is computed with that caption and with captions in which only the digit, only
    the direction or only the speed names another value (drawn uniformly among the others),
    and, as a control, with the same facts in another wording: a model that learned the
    meaning changes little with the wording.

    Args:
        model: a text-conditional `PatchDiffusionModel` (backbone `text_dim`) making
            square grayscale videos (Moving MNIST).
        num_videos: videos (and captions) scored.
        sigmas: noise levels, one loss each (the same at every pyramid level).
        phrasings: caption wordings, `"held_out"` (default), `"train"` or `"compass"`.
        seed: seeds the videos, pyramids, changed facts, wordings and noise.
        batch_size: pyramids per loss call.

    Returns:
        dict: `sigmas`, `num_videos`, `phrasings`, `loss` (per sigma, true captions),
        `increase` and `increase_level_0`: for each of `"digit"`, `"direction"`,
        `"speed"` and `"wording"`, the relative loss increase in percent per sigma (over
        all levels, and at the coarsest level, which fixes the layout).

    Example:
    ```python
    model = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist_text")
    gaps = keras_hpdm.metrics.caption_sensitivity(model, num_videos=64)
    gaps["increase_level_0"]["direction"]  # ~0 everywhere: the direction is ignored
    ```
    """
    if not getattr(model.backbone, "text_dim", None):
        raise ValueError("`caption_sensitivity` needs a text-conditional model (backbone "
                         "`text_dim`).")
    num_videos = check_int("num_videos", num_videos, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    sigmas = [check_number(f"sigmas[{i}]", s, low=0.0, low_open=True)
              for i, s in enumerate(np.atleast_1d(sigmas).tolist())]
    if not sigmas:
        raise ValueError("`sigmas` must hold at least one noise level.")
    spec = model.pyramid
    frames, height, width = spec.target_size
    if height != width or model.backbone.channels != 1:
        raise ValueError("`caption_sensitivity` scores models of square grayscale videos "
                         f"(Moving MNIST); this one makes {spec.target_size} with "
                         f"{model.backbone.channels} channels.")
    videos, _, facts = captioned_moving_mnist(num_videos, num_frames=frames, size=height,
                                              seed=seed, phrasings=phrasings)
    rng = np.random.default_rng((seed, 1))
    wordings = rng.integers(2**62, size=(2, num_videos))
    changed = {name: (facts[name] + rng.integers(1, n, num_videos)) % n
               for name, n in _CHOICES.items()}

    def captions(wording, **override):
        values = {name: override.get(name, facts[name]) for name in FACTS}
        return [moving_mnist_caption(int(values["digit"][i]), int(values["direction"][i]),
                                     int(values["speed"][i]), phrasings, int(wording[i]))
                for i in range(num_videos)]

    variants = {"true": captions(wordings[0]), "wording": captions(wordings[1])}
    variants.update({name: captions(wordings[0], **{name: changed[name]}) for name in FACTS})
    embeddings = {name: model.encode_text(c) for name, c in variants.items()}

    pyramids = [spec.sample(v.astype(np.float32) / 127.5 - 1.0, seed=int(s))
                for v, s in zip(videos, rng.integers(2**62, size=num_videos), strict=True)]
    patches = np.stack([p["patches"] for p in pyramids])
    coords = np.stack([p["coords"] for p in pyramids]).astype(np.float32)
    noise = rng.standard_normal(patches.shape).astype(np.float32)

    def losses_at(name, sigma):
        """`(overall, per_level)` means over the videos: the loss's own level weighting."""
        overall, per_level = 0.0, np.zeros(spec.num_levels)
        for start in range(0, num_videos, batch_size):
            rows = slice(start, start + batch_size)
            n = len(patches[rows])
            total, levels = model.pyramid_loss(
                patches[rows], coords[rows], {"text_embeddings": embeddings[name][rows]},
                np.full((n, spec.num_levels), sigma, np.float32), noise[rows])
            overall += n * float(keras.ops.convert_to_numpy(total))
            per_level += n * np.asarray(keras.ops.convert_to_numpy(levels), np.float64)
        return overall / num_videos, per_level / num_videos

    losses = {name: [losses_at(name, s) for s in sigmas] for name in variants}

    def increase(name, pick):
        return [float(100.0 * (pick(v) / pick(t) - 1.0))
                for v, t in zip(losses[name], losses["true"], strict=True)]

    others = ("wording",) + FACTS
    return {
        "sigmas": sigmas, "num_videos": num_videos, "phrasings": phrasings,
        "loss": [t[0] for t in losses["true"]],
        "increase": {name: increase(name, lambda v: v[0]) for name in others},
        "increase_level_0": {name: increase(name, lambda v: float(v[1][0])) for name in others},
    }
