"""EDM preconditioning: wraps any network `F` into a denoiser `D(x; sigma)`."""

import keras
from keras import ops

from keras_hpdm.checks import check_number


def expand_sigma(sigma, x):
    """Broadcasts `sigma` of shape `x.shape[:sigma.ndim]` over `x`'s trailing axes."""
    sigma = ops.cast(sigma, "float32")
    for _ in range(len(x.shape) - len(sigma.shape)):  # works with unknown (traced) dims
        sigma = ops.expand_dims(sigma, -1)
    return sigma


@keras.saving.register_keras_serializable(package="keras_hpdm")
class EDMPreconditioning:
    """`D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)` (Karras et al. 2022, Table 1).

    With these coefficients the network's target is `-v` (v-prediction, paper §5), and the
    EDM loss weight `1 / c_out**2` makes the loss the unweighted v-MSE.

    Args:
        sigma_data: standard deviation of the data (0.5 for videos in [-1, 1]).

    Example:
    ```python
    pre = EDMPreconditioning(0.5)
    denoised = pre(lambda x_in, sigma: network(x_in, sigma), x, sigma)
    ```

    References:
        - [Karras et al., Elucidating the Design Space of Diffusion-Based Generative
          Models, NeurIPS 2022](https://arxiv.org/abs/2206.00364)
    """

    def __init__(self, sigma_data=0.5):
        self.sigma_data = check_number("sigma_data", sigma_data, low=0.0, low_open=True)

    def coefficients(self, sigma):
        """`(c_skip, c_out, c_in, c_noise)` in float32 for noise levels `sigma`."""
        sigma = ops.cast(sigma, "float32")
        sd2 = self.sigma_data**2
        c_skip = sd2 / (ops.square(sigma) + sd2)
        c_out = sigma * self.sigma_data / ops.sqrt(ops.square(sigma) + sd2)
        c_in = 1.0 / ops.sqrt(ops.square(sigma) + sd2)
        c_noise = ops.log(ops.maximum(sigma, 1e-20)) / 4.0
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma):
        """EDM's `lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`."""
        sigma = ops.cast(sigma, "float32")
        return (ops.square(sigma) + self.sigma_data**2) / ops.square(sigma * self.sigma_data)

    def __call__(self, network_fn, x, sigma):
        """Denoises `x` (float32) with `network_fn(c_in * x, sigma) -> F` (same shape)."""
        x = ops.cast(x, "float32")
        c_skip, c_out, c_in, _ = (expand_sigma(c, x) for c in self.coefficients(sigma))
        return c_skip * x + c_out * ops.cast(network_fn(c_in * x, sigma), "float32")

    def get_config(self):
        return {"sigma_data": self.sigma_data}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
