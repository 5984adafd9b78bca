"""Batch-independent noise: the noise of sample `i` depends on `(seed, i, stream)` only.

Drawing one tensor of shape `(N, ...)` from one seed ties every sample's noise to the batch
size: sample 5 of a batch of 8 differs from sample 5 of a batch of 16. Here each row has its
own generator, seeded by hashing `(seed, sample_id, stream)`, so a caller can regenerate any
single sample, or split a batch across calls or devices, and get the same noise.
"""

import numpy as np
from keras import ops

from keras_hpdm.checks import check_int, check_seed


def _check_key(name, value):
    return check_int(name, value, low=0)


def derive_seed(seed, *keys):
    """Hashes a seed and integer keys into an independent 32-bit seed.

    Args:
        seed: non-negative integer.
        *keys: non-negative integers (e.g. sample index, step, pyramid level).

    Returns:
        A Python int in `[0, 2**32)`, a pure function of `(seed, *keys)`.

    Example:
    ```python
    level_seed = keras_hpdm.diffusion.derive_seed(seed, level)
    ```
    """
    seed = check_seed(seed, allow_none=False)
    keys = [_check_key(f"keys[{i}]", k) for i, k in enumerate(keys)]
    # SeedSequence mixes its entropy well: nearby (seed, id, stream) triples give unrelated
    # streams, which plain arithmetic such as `seed + id` would not.
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def check_sample_ids(sample_ids, num_samples):
    """Returns `sample_ids` as an int64 array of shape `(num_samples,)` (default `arange`)."""
    if sample_ids is None:
        return np.arange(num_samples, dtype=np.int64)
    ids = np.asarray(sample_ids)
    if ids.shape != (num_samples,) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            f"`sample_ids` must be {num_samples} integers (one per sample), got {sample_ids!r}."
        )
    if np.any(ids < 0):
        raise ValueError(f"`sample_ids` must be non-negative, got {ids.tolist()}.")
    return ids.astype(np.int64)


def per_sample_normal(shape, seed, sample_ids=None, stream=0, dtype="float32"):
    """Standard normal noise of `shape = (N, ...)` whose row `i` depends only on
    `(seed, sample_ids[i], stream)`.

    Rows are drawn on the host with numpy (a PCG64 generator seeded with the triple) and then
    moved to the device: this makes the noise identical under JAX, TensorFlow and PyTorch (same
    seed, same weights -> same sample) and costs one generator per row rather than one device
    dispatch per row. The numbers are stable for a given numpy version.

    Args:
        shape: `(N, ...)`, the batch size first.
        seed: non-negative integer.
        sample_ids: `N` non-negative integers naming the samples; `None` means `arange(N)`.
        stream: non-negative integer telling apart independent draws for the same samples
            (e.g. the sampler step).
        dtype: float dtype of the result.

    Returns:
        A tensor of `shape` and `dtype`.

    Example:
    ```python
    batch = per_sample_normal((8, 16), seed=0)
    alone = per_sample_normal((1, 16), seed=0, sample_ids=[5])  # == batch[5:6]
    ```
    """
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) < 1:
        raise ValueError(f"`shape` must be a tuple `(N, ...)`, got {shape!r}.")
    shape = tuple(_check_key(f"shape[{i}]", d) for i, d in enumerate(shape))
    seed = check_seed(seed, allow_none=False)
    stream = _check_key("stream", stream)
    ids = check_sample_ids(sample_ids, shape[0])
    return ops.convert_to_tensor(host_normal(shape, seed, ids, stream), dtype=dtype)


def host_normal(shape, seed, sample_ids=None, stream=0):
    """`per_sample_normal`'s noise as a float32 NumPy array (for host-side work)."""
    ids = np.arange(shape[0]) if sample_ids is None else sample_ids
    noise = np.empty(shape, dtype=np.float32)
    for row, i in enumerate(ids):
        rng = np.random.default_rng([seed, int(i), stream])
        noise[row] = rng.standard_normal(shape[1:], dtype=np.float32)
    return noise
