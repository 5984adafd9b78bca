"""Captioned Moving MNIST (data) and the motion judge (metrics)."""

import re
import types

import numpy as np
import pytest

from keras_hpdm import data
from keras_hpdm.data import moving_mnist_captions as mmc
from keras_hpdm.metrics import (
    digit_video_scores,
    direction_accuracy,
    evaluate_moving_mnist_text,
    measured_directions,
)
from keras_hpdm.metrics.motion import STILL, digit_centroids


def test_the_captions_say_the_facts_and_the_motion_judge_reads_them():
    videos, captions, facts = data.captioned_moving_mnist(240, seed=1)
    assert videos.shape == (240, 16, 64, 64, 1) and videos.dtype == np.uint8
    assert len(captions) == 240 and all(isinstance(c, str) for c in captions)
    # Every fact is drawn: all digits, directions and speeds occur.
    assert set(facts["digit"]) == set(range(10))
    assert set(facts["direction"]) == set(range(8)) and set(facts["speed"]) == {0, 1}
    # The measured direction of the real videos is the caption's, for every video.
    np.testing.assert_array_equal(measured_directions(videos), facts["direction"])
    assert direction_accuracy(videos, facts["direction"]) == 1.0
    assert direction_accuracy(videos, [mmc.DIRECTIONS[d] for d in facts["direction"]]) == 1.0
    # A wrong request scores 0: the opposite direction of every video.
    assert direction_accuracy(videos, (facts["direction"] + 4) % 8) == 0.0
    # The packaged digit reader reads the captioned digits (as it does plain Moving MNIST).
    scores = digit_video_scores(videos, facts["digit"])
    assert scores["class_accuracy"] > 0.8 and scores["persistence"] > 0.8, scores
    for caption, digit, direction, speed in zip(captions, facts["digit"], facts["direction"],
                                                facts["speed"], strict=True):
        text = caption.lower()
        assert str(digit) in text or mmc.NUMBER_WORDS[digit] in text, caption
        words = [p for p in mmc._DIRECTION_PHRASES["train"][mmc.DIRECTIONS[direction]]]
        assert any(w in text for w in words), caption
        speeds = mmc._SPEED_PHRASES["train"][mmc.SPEEDS[speed]]
        assert any(re.search(rf"\b{re.escape(s)}\b", text) for s in speeds), caption


def test_the_digit_never_reaches_a_wall_and_speeds_differ():
    videos, _, facts = data.captioned_moving_mnist(200, num_frames=12, size=48, seed=4)
    ink = videos[..., 0] > 0
    # The digit box (28 px) never touches the canvas edge in a way that would bounce it:
    # its centre moves monotonically along the caption's direction on both axes.
    centres = digit_centroids(videos)
    steps = np.diff(centres, axis=1)  # (N, T-1, 2)
    angle = np.deg2rad(facts["direction"] * 45.0)
    along = steps[..., 0] * -np.cos(angle)[:, None] + steps[..., 1] * np.sin(angle)[:, None]
    assert np.all(along > -1.0), along.min()  # no reversal (rounding: under a pixel)
    assert ink.any(axis=(2, 3)).all()  # the digit is in every frame
    travel = np.hypot(*(centres[:, -1] - centres[:, 0]).T)
    slow, fast = travel[facts["speed"] == 0], travel[facts["speed"] == 1]
    assert np.median(fast) > 1.6 * np.median(slow), (np.median(fast), np.median(slow))


def test_held_out_phrasings_share_no_wording_with_training():
    for name in ("_DIGIT_PHRASES", "_SPEED_PHRASES", "_TEMPLATES"):
        table = getattr(mmc, name)
        train, held = table["train"], table["held_out"]
        if isinstance(train, dict):
            train = [p for v in train.values() for p in v]
            held = [p for v in held.values() for p in v]
        assert not set(train) & set(held), name
    from keras_hpdm.cli.evaluate import PHRASINGS as CLI_CHOICES

    assert CLI_CHOICES == mmc.PHRASINGS  # `keras-hpdm evaluate --phrasings`
    directions = {name: {p for v in table.values() for p in v}
                  for name, table in mmc._DIRECTION_PHRASES.items()}
    assert set(directions) == set(mmc.PHRASINGS)
    assert not directions["train"] & (directions["held_out"] | directions["compass"])
    assert not directions["held_out"] & directions["compass"]
    captions = {phrasings: set(data.captioned_moving_mnist(300, seed=0, phrasings=phrasings)[1])
                for phrasings in mmc.PHRASINGS}
    assert not captions["train"] & (captions["held_out"] | captions["compass"])
    assert not captions["held_out"] & captions["compass"]
    # Compass captions are the held-out ones with the direction in compass words.
    for seed in range(5):
        captions = [data.moving_mnist_caption(7, "up-right", "fast", phrasings=p, seed=seed)
                    for p in ("compass", "held_out")]
        stripped = [next(c.replace(p, "<direction>") for p in
                         mmc._DIRECTION_PHRASES[phrasings]["up-right"] if p in c)
                    for c, phrasings in zip(captions, ("compass", "held_out"), strict=True)]
        assert "north-east" in captions[0] and stripped[0] == stripped[1], captions
    # Several phrasings per fact: many distinct captions for the same facts.
    same = [data.moving_mnist_caption(7, "up-right", "fast", seed=s) for s in range(40)]
    assert len(set(same)) >= 10


def test_seeds_and_arguments():
    a = data.captioned_moving_mnist(8, seed=3)
    b = data.captioned_moving_mnist(8, seed=3)
    c = data.captioned_moving_mnist(8, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    assert a[1] != c[1]
    videos, captions, facts = data.load_builtin("moving_mnist_captions", num_videos=4, seed=3)
    np.testing.assert_array_equal(videos, data.captioned_moving_mnist(4, seed=3)[0])
    with pytest.raises(ValueError, match="phrasings"):
        data.captioned_moving_mnist(4, phrasings="test")
    with pytest.raises(ValueError, match="num_frames"):
        data.captioned_moving_mnist(4, num_frames=1)
    with pytest.raises(ValueError, match="direction"):
        data.moving_mnist_caption(3, "sideways", "fast")
    with pytest.raises(ValueError, match="speed"):
        data.moving_mnist_caption(3, "up", 2)
    with pytest.raises(ValueError, match="digit"):
        data.moving_mnist_caption(10, "up", "fast")


def test_the_motion_judge_on_still_and_empty_videos():
    videos, _, _ = data.captioned_moving_mnist(2, seed=0)
    still = np.repeat(videos[:, :1], 16, axis=1)
    blank = np.zeros_like(videos)
    assert list(measured_directions(still)) == [STILL, STILL]
    assert list(measured_directions(blank)) == [STILL, STILL]
    with pytest.raises(ValueError, match="videos"):
        measured_directions(videos[0])
    with pytest.raises(ValueError, match="directions"):
        direction_accuracy(videos, [0])


def test_pyramid_dataset_reads_the_builtin_captions():
    from keras_hpdm import PyramidSpec

    spec = PyramidSpec((4, 16, 16), 3)
    ds = data.pyramid_dataset("builtin:moving_mnist_captions?num_videos=8", spec,
                              batch_size=4, seed=0, labels=True, channels=1)
    batch = next(iter(ds))
    texts = [t.decode() for t in batch["text"].numpy()]
    assert len(texts) == 4 and all(len(t.split()) >= 3 for t in texts)
    assert tuple(batch["patches"].shape) == (4, 3, 4, 16, 16, 1)


def stub_text_model(make_videos):
    """Stands in for a text model: `generate(captions)` gives `make_videos(captions)`."""
    from keras_hpdm import PyramidSpec

    def generate(captions, seed=None, verbose=0):
        return make_videos(list(captions))

    return types.SimpleNamespace(
        backbone=types.SimpleNamespace(text_dim=384, channels=1),
        pyramid=PyramidSpec((4, 16, 16), 3), generate=generate)


def test_text_evaluation_scores_what_the_videos_show():
    """A model that draws exactly the captioned videos scores full digit and direction
    accuracy; one that plays them backwards keeps the digits and loses every direction;
    one that draws nothing is still."""
    real, captions, _ = data.captioned_moving_mnist(20, seed=5, phrasings="held_out")
    lookup = {c: v for c, v in zip(captions, real, strict=True)}
    exact = evaluate_moving_mnist_text(
        stub_text_model(lambda cs: np.stack([lookup[c] for c in cs])), num_videos=20, seed=5)
    assert exact["direction_accuracy"] == 1.0 and exact["still_fraction"] == 0.0
    assert exact["digit_accuracy"] >= 0.8 and exact["phrasings"] == "held_out"
    assert exact["examples"][0]["caption"] == captions[0]
    backwards = evaluate_moving_mnist_text(
        stub_text_model(lambda cs: np.stack([lookup[c][::-1] for c in cs])), num_videos=20,
        seed=5)
    assert backwards["direction_accuracy"] == 0.0
    assert backwards["digit_accuracy"] == exact["digit_accuracy"]
    blank = evaluate_moving_mnist_text(
        stub_text_model(lambda cs: np.zeros((len(cs),) + real.shape[1:], np.uint8)),
        num_videos=20, seed=5)
    assert blank["still_fraction"] == 1.0 and blank["direction_accuracy"] == 0.0
    class_model = stub_text_model(None)
    class_model.backbone.text_dim = None
    with pytest.raises(ValueError, match="text-conditional"):
        evaluate_moving_mnist_text(class_model)


class DirectionReadingStub:
    """Stands in for a text model that uses only the direction its caption names: the
    embedding is the caption's direction (read back from the wording tables), and the loss
    of a pyramid is 1 where that direction is the one its coarsest level shows, else 2."""

    def __init__(self, phrasings):
        from keras_hpdm import PyramidSpec

        self.pyramid = PyramidSpec((4, 16, 16), 3)
        self.backbone = types.SimpleNamespace(text_dim=1, channels=1)
        self.phrases = sorted(((p.lower(), mmc.DIRECTIONS.index(name)) for name, ps in
                               mmc._DIRECTION_PHRASES[phrasings].items() for p in ps),
                              key=lambda pd: -len(pd[0]))
        self.calls = []

    def encode_text(self, captions):
        named = [next(d for p, d in self.phrases if p in c.lower()) for c in captions]
        return np.array(named, np.float32)[:, None, None]

    def pyramid_loss(self, patches, coords, conditions, sigma, noise):
        self.calls.append(float(sigma[0, 0]))
        coarse = np.clip((np.asarray(patches)[:, 0] + 1.0) * 127.5, 0, 255).astype(np.uint8)
        shown = measured_directions(coarse, min_travel=0.75)
        named = conditions["text_embeddings"][:, 0, 0]
        loss = 1.0 + (named != shown).mean()
        return loss, np.full(3, loss)


@pytest.mark.parametrize("phrasings", ["held_out", "train"])
def test_caption_sensitivity_changes_exactly_the_named_fact(phrasings):
    """Against a model that uses only the direction, changing the direction doubles the loss
    at every noise level and level, and changing the digit, the speed or the wording
    changes nothing: each variant changes its own fact and no other."""
    from keras_hpdm.metrics import caption_sensitivity

    stub = DirectionReadingStub(phrasings)
    out = caption_sensitivity(stub, num_videos=24, sigmas=(1.0, 20.0), phrasings=phrasings,
                              seed=3, batch_size=10)
    assert out["sigmas"] == [1.0, 20.0] and out["num_videos"] == 24
    assert out["loss"] == [1.0, 1.0]  # the true captions name what the videos show
    for key in ("increase", "increase_level_0"):
        np.testing.assert_allclose(out[key]["direction"], [100.0, 100.0])
        for other in ("digit", "speed", "wording"):
            np.testing.assert_allclose(out[key][other], [0.0, 0.0], atol=1e-9)
    # 5 captions x 2 sigmas x 3 batches (10, 10, 4).
    assert len(stub.calls) == 30
    with pytest.raises(ValueError, match="text-conditional"):
        caption_sensitivity(types.SimpleNamespace(backbone=types.SimpleNamespace(text_dim=None)))
    with pytest.raises(ValueError, match="sigmas"):
        caption_sensitivity(stub, sigmas=(1.0, -2.0))
