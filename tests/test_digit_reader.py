"""The Moving MNIST judge: digit reader, frame scores, and the evaluation driver."""

import numpy as np
import pytest
from scipy import ndimage

from keras_hpdm import PyramidSpec
from keras_hpdm.data.moving_mnist import mnist_digits, moving_mnist
from keras_hpdm.metrics import (
    DigitReader,
    centre_digits,
    digit_video_scores,
    evaluate_moving_mnist,
    read_videos,
)
from keras_hpdm.metrics.digit_reader import digit_split


@pytest.fixture(scope="module")
def reader():
    return DigitReader()


@pytest.fixture(scope="module")
def held_out_videos():
    _, held_out = digit_split()
    return moving_mnist(100, num_frames=8, seed=11, digit_indices=held_out)


def test_split_holds_out_100_digits_per_class():
    train, held_out = digit_split()
    _, labels = mnist_digits()
    assert len(np.intersect1d(train, held_out)) == 0 and len(train) + len(held_out) == 5000
    np.testing.assert_array_equal(np.bincount(labels[held_out]), np.full(10, 100))


def test_reader_reads_held_out_digits(reader):
    digits, labels = mnist_digits()
    _, held_out = digit_split()
    probs = reader.predict(digits[held_out])
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    accuracy = np.mean(probs.argmax(-1) == labels[held_out])
    assert accuracy >= 0.95, accuracy  # 0.958 when the weights were made
    assert np.mean(reader.predict(digits[held_out][:, ::-1]).argmax(-1) == labels[held_out]) \
        < 0.6  # upside-down digits are mostly not read as themselves


def test_centre_digits_finds_and_centres_the_digit():
    """A digit pasted anywhere comes back centred on its centre of mass, as scipy finds it."""
    digits, _ = mnist_digits()
    rng = np.random.default_rng(0)
    frames = np.zeros((20, 64, 64), np.float32)
    for i in range(20):
        y, x = rng.integers(0, 37, 2)
        frames[i, y:y + 28, x:x + 28] = digits[i]
    crops, ink = centre_digits(frames)
    np.testing.assert_allclose(ink, digits[:20].reshape(20, -1).sum(1) / 255.0, rtol=1e-5)
    for crop, digit in zip(crops, digits[:20], strict=True):
        np.testing.assert_allclose(crop.sum(), float(digit.sum()), rtol=1e-5)  # whole digit
        cy, cx = ndimage.center_of_mass(crop)
        assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5, (cy, cx)
    with pytest.raises(ValueError, match="frames"):
        centre_digits(np.zeros((2, 20, 64)))


def test_scores_on_real_blank_noise_and_vanishing_digits(reader, held_out_videos):
    videos, labels = held_out_videos
    real = digit_video_scores(videos, labels, reader)
    assert real["class_accuracy"] >= 0.9 and real["persistence"] >= 0.95, real
    assert real["frame_accuracy"] >= 0.85
    wrong = digit_video_scores(videos, (labels + 1) % 10, reader)
    assert wrong["class_accuracy"] <= 0.1
    blank = digit_video_scores(np.zeros_like(videos[:4]), labels[:4], reader)
    assert blank["persistence"] == 0.0
    noise = np.random.default_rng(0).integers(0, 256, videos[:10].shape).astype(np.uint8)
    assert digit_video_scores(noise, labels[:10], reader)["persistence"] == 0.0
    # Digits that vanish for the second half of every video: persistence halves exactly
    # on the frames the reader saw digits in; the vote still reads them.
    faded = videos.copy()
    faded[:, 4:] = 0
    seen = read_videos(videos, reader)["visible"]
    scores = digit_video_scores(faded, labels, reader)
    np.testing.assert_allclose(scores["persistence"], seen[:, :4].sum() / seen.size)
    assert scores["class_accuracy"] >= 0.85
    # RGB (what `generate` returns) reads as the grayscale.
    rgb = digit_video_scores(np.repeat(videos[:10], 3, -1), labels[:10], reader)
    np.testing.assert_allclose(rgb["persistence"],
                               digit_video_scores(videos[:10], labels[:10], reader)["persistence"])
    with pytest.raises(ValueError, match="labels"):
        digit_video_scores(videos[:2], [1, 12], reader)


class RealDigitModel:
    """Stands in for a model: `generate(digit, num_samples, seed)` returns real Moving MNIST
    videos of that digit; `ignore_class=True` returns the same videos whatever the class."""

    class backbone:  # noqa: N801
        num_classes = 10

    pyramid = PyramidSpec((2, 16, 16), 3)  # 8x64x64 videos

    def __init__(self, ignore_class=False):
        _, held_out = digit_split()
        self.videos, self.labels = moving_mnist(400, num_frames=8, seed=3,
                                                digit_indices=held_out)
        self.ignore_class = ignore_class

    def generate(self, digit, num_samples=1, seed=0, **kwargs):
        digit = 0 if self.ignore_class else digit
        pool = self.videos[self.labels == digit]
        return np.repeat(pool[seed:seed + num_samples], 3, -1)


def test_evaluate_moving_mnist_scores_a_model():
    good = evaluate_moving_mnist(RealDigitModel(), per_class=3, seed=0)
    assert good["class_accuracy"] >= 0.85 and good["persistence"] >= 0.9
    assert good["num_videos"] == 30 and good["class_effect"] > 5 and good["noise_effect"] > 5
    deaf = evaluate_moving_mnist(RealDigitModel(ignore_class=True), per_class=3, seed=0)
    assert deaf["class_accuracy"] <= 0.2 and deaf["class_effect"] == 0.0
    model = RealDigitModel()
    model.backbone = type("B", (), {"num_classes": 3})
    with pytest.raises(ValueError, match="10 classes"):
        evaluate_moving_mnist(model)
    with pytest.raises(ValueError, match="per_class"):
        evaluate_moving_mnist(RealDigitModel(), per_class=0)
    model = RealDigitModel()
    model.pyramid = PyramidSpec((2, 8, 8), 2)
    with pytest.raises(ValueError, match="at least 28x28"):
        evaluate_moving_mnist(model)
