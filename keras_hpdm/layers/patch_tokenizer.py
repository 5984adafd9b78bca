"""3-D patchify / unpatchify between pixel patches and token grids."""

import math

import keras
import numpy as np
from keras import ops

from keras_hpdm.checks import check_int, check_int_tuple


def _check_patch(patch_size):
    return check_int_tuple("patch_size", patch_size, 3, labels=("frames", "height", "width"))


def _check_divisible(shape, patch_size, name):
    for axis, n, p in zip(("frames", "height", "width"), shape, patch_size, strict=True):
        if n is not None and (n % p or n == 0):  # 0 leaves no tokens (and divides by 0)
            raise ValueError(
                f"{name} {axis} ({n}) must be divisible by the tokenizer patch size ({p}) "
                "and non-zero."
            )


def sincos_positions(grid_size, dim):
    """Fixed 3-D sinusoidal positions `(f, h, w, dim)` float32 (numpy).

    Each axis gets `2 * (dim // 6)` features: sin and cos of the token index at frequencies
    spaced geometrically from half a turn over the axis (monotonic: tells every position
    apart) to half a turn per token (the finest the grid resolves). Remaining features are 0.
    """
    per_axis = dim // 6
    out = np.zeros(tuple(grid_size) + (dim,), np.float32)
    if per_axis == 0:
        return out
    features = []
    for axis, n in enumerate(grid_size):
        pos = np.arange(n, dtype=np.float64)
        freqs = (math.pi / n) * np.geomspace(1.0, n, per_axis)
        angles = pos[:, None] * freqs[None, :]
        shape = [1, 1, 1, 2 * per_axis]
        shape[axis] = n
        axis_features = np.concatenate([np.sin(angles), np.cos(angles)], -1).reshape(shape)
        features.append(np.broadcast_to(axis_features, tuple(grid_size) + (2 * per_axis,)))
    out[..., : 6 * per_axis] = np.concatenate(features, -1)
    return out


@keras.saving.register_keras_serializable(package="keras_hpdm")
class PatchTokenizer(keras.layers.Layer):
    """Cuts `(B, F, H, W, C)` into `(pf, ph, pw)` cubes, embeds them, adds positions.

    Positions are learned (ViT/RIN style) and, with `fixed_positions=True`, also fixed 3-D
    sinusoids (see `sincos_positions`). Learned positions start near zero and take
    thousands of steps to tell tokens apart; until then attention cannot tell *where* a
    token is, and a denoiser cannot place a stroke (at high noise it leaves speckle).

    Args:
        patch_size: `(pf, ph, pw)` tokenizer stride (the paper's 1x4x4).
        dim: token width.
        fixed_positions: also add fixed sinusoidal positions.

    Call arguments:
        x: `(B, F, H, W, C)`.

    Returns:
        Token grid `(B, F/pf, H/ph, W/pw, dim)`.

    Example:
    ```python
    tokens = PatchTokenizer((1, 4, 4), 256)(patches)  # (B, 4, 32, 32, 3) -> (B, 4, 8, 8, 256)
    ```
    """

    def __init__(self, patch_size, dim, fixed_positions=False, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = _check_patch(patch_size)
        self.dim = check_int("dim", dim, low=1)
        if not isinstance(fixed_positions, bool):
            raise TypeError(f"`fixed_positions` must be True or False, got "
                            f"{fixed_positions!r}.")
        self.fixed_positions = fixed_positions

    def build(self, input_shape):
        if len(input_shape) != 5 or input_shape[-1] == 0:
            raise ValueError(f"Input must have rank 5 (B, F, H, W, C) and C > 0, got "
                             f"{input_shape}.")
        _check_divisible(input_shape[1:4], self.patch_size, "Input")
        self.input_size = tuple(input_shape[1:])
        self.grid_size = tuple(n // p for n, p in zip(input_shape[1:4], self.patch_size,
                                                       strict=True))
        pf, ph, pw = self.patch_size
        self.proj = keras.layers.Dense(self.dim, dtype=self.dtype_policy, name="proj")
        self.proj.build((None, pf * ph * pw * input_shape[-1]))
        self.position = self.add_weight(
            name="position", shape=self.grid_size + (self.dim,),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        # A constant: computed once here, not at every call.
        self._fixed_table = (sincos_positions(self.grid_size, self.dim)
                             if self.fixed_positions else None)

    def call(self, x):
        # The learned positions fix the grid: another size would reshape into a wrong batch.
        if len(x.shape) != 5 or any(None not in (n, m) and n != m
                                    for n, m in zip(x.shape[1:], self.input_size, strict=True)):
            raise ValueError(f"Input must have shape (B, *{self.input_size}) (the shape the "
                             f"layer was built for), got {tuple(x.shape)}.")
        (pf, ph, pw), (gf, gh, gw) = self.patch_size, self.grid_size
        c = x.shape[-1]
        x = ops.reshape(x, (-1, gf, pf, gh, ph, gw, pw, c))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
        x = ops.reshape(x, (-1, gf, gh, gw, pf * ph * pw * c))
        positions = ops.cast(self.position, self.compute_dtype)
        if self.fixed_positions:
            positions = positions + ops.cast(self._fixed_table, self.compute_dtype)
        return self.proj(x) + positions

    def compute_output_shape(self, input_shape):
        grid = tuple(n // p for n, p in zip(input_shape[1:4], self.patch_size, strict=True))
        return (input_shape[0],) + grid + (self.dim,)

    def get_config(self):
        return {**super().get_config(), "patch_size": list(self.patch_size), "dim": self.dim,
                "fixed_positions": self.fixed_positions}


@keras.saving.register_keras_serializable(package="keras_hpdm")
class PatchDetokenizer(keras.layers.Layer):
    """LayerNorm + Dense back to pixel cubes, then un-patchify to `(B, F, H, W, C)`.

    Args:
        patch_size: `(pf, ph, pw)`, as in the tokenizer.
        channels: output channels `C`.

    Example:
    ```python
    video = PatchDetokenizer((1, 4, 4), 3)(tokens)  # (B, 4, 8, 8, d) -> (B, 4, 32, 32, 3)
    ```
    """

    def __init__(self, patch_size, channels, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = _check_patch(patch_size)
        self.channels = check_int("channels", channels, low=1)

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(f"`tokens` must have rank 5 (B, F, H, W, dim), got {input_shape}.")
        pf, ph, pw = self.patch_size
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, dtype="float32", name="norm")
        self.norm.build(input_shape)
        self.proj = keras.layers.Dense(
            pf * ph * pw * self.channels, dtype=self.dtype_policy, name="proj"
        )
        self.proj.build(input_shape)

    def call(self, tokens):
        (pf, ph, pw), c = self.patch_size, self.channels
        gf, gh, gw = tokens.shape[1:4]
        x = self.proj(ops.cast(self.norm(tokens), self.compute_dtype))
        x = ops.reshape(x, (-1, gf, gh, gw, pf, ph, pw, c))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))
        return ops.reshape(x, (-1, gf * pf, gh * ph, gw * pw, c))

    def compute_output_shape(self, input_shape):
        grid = tuple(n * p for n, p in zip(input_shape[1:4], self.patch_size, strict=True))
        return (input_shape[0],) + grid + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": list(self.patch_size),
            "channels": self.channels,
        }
