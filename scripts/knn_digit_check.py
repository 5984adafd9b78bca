"""A second, independent judge of the bundled model: k-nearest neighbours (k=3, raw pixels,
numpy) over the digit reader's 4000 training digits, instead of the packaged CNN.

It prints the kNN's accuracy on the 1000 held-out digits and on 20 real Moving MNIST videos
of held-out digits (the ceiling to compare with), then on 20 videos of the bundled model
(2 per digit, seed 0), beside the packaged reader's scores on the same videos:

    python scripts/knn_digit_check.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

import keras_hpdm  # noqa: E402
from keras_hpdm.data.moving_mnist import mnist_digits, moving_mnist  # noqa: E402
from keras_hpdm.metrics.digit_reader import centre_digits, digit_split  # noqa: E402
from keras_hpdm.metrics.digit_scores import digit_video_scores  # noqa: E402

K = 3


def knn_reader(train_images, train_labels):
    """`read(crops) -> labels`: majority of the K nearest training digits (squared L2)."""
    x = train_images.reshape(len(train_images), -1).astype(np.float32)
    norms = (x**2).sum(1)

    def read(crops):
        q = crops.reshape(len(crops), -1).astype(np.float32)
        nearest = np.argsort((q**2).sum(1)[:, None] - 2 * q @ x.T + norms, axis=1)[:, :K]
        return np.array([np.bincount(v, minlength=10).argmax() for v in train_labels[nearest]])

    return read


def video_accuracy(read, videos, labels):
    """(videos whose frame majority is the label, frames read as the label)."""
    n, t = videos.shape[:2]
    frames = videos[..., 0].reshape(n * t, *videos.shape[2:4]).astype(np.float32)
    per_frame = read(centre_digits(frames)[0]).reshape(n, t)
    per_video = np.array([np.bincount(p, minlength=10).argmax() for p in per_frame])
    labels = np.asarray(labels)
    return float((per_video == labels).mean()), float((per_frame == labels[:, None]).mean())


def main():
    images, labels = mnist_digits()
    train, held_out = digit_split(0)
    read = knn_reader(images[train], labels[train])
    padded = np.pad(images[held_out], ((0, 0), (18, 18), (18, 18))).astype(np.float32)
    accuracy = (read(centre_digits(padded)[0]) == labels[held_out]).mean()
    print(f"kNN on the 1000 held-out digits: {accuracy:.3f}")
    real, real_labels = moving_mnist(20, num_frames=16, size=64, seed=123,
                                     digit_indices=held_out)
    print("real Moving MNIST (held-out digits), videos / frames: "
          "{:.2f} / {:.2f}".format(*video_accuracy(read, real, real_labels)))
    model = keras_hpdm.PatchDiffusionModel.from_preset("moving_mnist")
    wanted = np.repeat(np.arange(10), 2)
    videos = model.generate(list(wanted), seed=0, verbose=0)
    print("bundled model, videos / frames read as the requested digit: "
          "{:.2f} / {:.2f}".format(*video_accuracy(read, videos, wanted)))
    scores = digit_video_scores(videos, wanted)
    print("packaged reader on the same videos: class accuracy {class_accuracy:.2f}, frame "
          "accuracy {frame_accuracy:.2f}, persistence {persistence:.2f}".format(**scores))


if __name__ == "__main__":
    main()
