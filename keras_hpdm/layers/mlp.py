"""Transformer feed-forward block."""

import keras

from keras_hpdm.checks import check_number


@keras.saving.register_keras_serializable(package="keras_hpdm")
class MLP(keras.layers.Layer):
    """`Dense(ratio * d) -> GELU -> Dense(d)`.

    Args:
        ratio: hidden width as a multiple of the input channels.
        zero_init_output: zero-initialise the last projection (identity residual at init).

    Example:
    ```python
    y = x + MLP(ratio=4)(x)
    ```
    """

    def __init__(self, ratio=4, zero_init_output=False, **kwargs):
        super().__init__(**kwargs)
        check_number("ratio", ratio, low=0.0, low_open=True)
        self.ratio = ratio  # as given: an int stays an int in the config
        self.zero_init_output = zero_init_output

    def build(self, input_shape):
        dim = input_shape[-1]
        self.hidden = keras.layers.Dense(
            int(dim * self.ratio), activation="gelu", dtype=self.dtype_policy, name="hidden"
        )
        self.out = keras.layers.Dense(
            dim, kernel_initializer="zeros" if self.zero_init_output else "glorot_uniform",
            dtype=self.dtype_policy, name="out",
        )
        self.hidden.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (int(dim * self.ratio),))

    def call(self, x):
        return self.out(self.hidden(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "ratio": self.ratio,
            "zero_init_output": self.zero_init_output,
        }
