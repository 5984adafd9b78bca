"""Memory probes of a worker process: RSS, peak RSS (resettable), accelerator memory."""

import ctypes

MB = 2.0**20


def _status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if key == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return None


def rss_mb():
    return _status_mb("VmRSS")


def peak_rss_mb():
    return _status_mb("VmHWM")


def trim_and_reset_peak():
    """Returns freed heap to the OS and resets the peak RSS to the current RSS (Linux >= 4.0).

    Returns True when the peak could be reset (else the peak keeps counting from the start).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def device_memory(reset=False):
    """(current MB, peak MB) of the accelerator, or None on CPU. `reset` resets the peak."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform == "cpu":
            return None
        stats = dev.memory_stats() or {}
        # JAX cannot reset its peak; warm-up steps peak like the timed ones.
        return (stats.get("bytes_in_use", 0) / MB, stats.get("peak_bytes_in_use", 0) / MB)
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        if reset:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / MB, torch.cuda.max_memory_allocated() / MB
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        if reset:
            tf.config.experimental.reset_memory_stats("GPU:0")
        info = tf.config.experimental.get_memory_info("GPU:0")
        return info["current"] / MB, info["peak"] / MB
    return None
