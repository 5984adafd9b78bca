"""`keras-hpdm info`: versions, the active backend and its devices, bundled models."""

import platform


def add_parser(sub):
    p = sub.add_parser("info", help="print versions, backend, devices and bundled models",
                       description="Print what a bug report needs: versions of keras_hpdm, "
                       "Keras and the backends, the active backend and its devices, and the "
                       "bundled pretrained models.")
    p.set_defaults(func=run)
    return p


def _version(distribution):
    """An installed package's version, from its metadata: importing TensorFlow or torch to
    ask would take seconds."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(args):
    import keras_hpdm
    from keras_hpdm.cli.common import active_backend
    from keras_hpdm.pretrained import PRETRAINED

    backend = active_backend()
    print(f"keras_hpdm {keras_hpdm.__version__}, keras {_version('keras')}, "
          f"python {platform.python_version()}")
    print(f"backend: {backend}")
    print("versions: " + ", ".join(f"{m} {_version(m)}" for m in ("jax", "tensorflow", "torch")))
    # Only the active backend is imported, to list its devices.
    if backend == "jax":
        import jax

        devices = [str(d) for d in jax.devices()]
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices()]
    else:
        import torch

        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    print(f"devices: {', '.join(devices)}")
    print(f"bundled models: {', '.join(sorted(PRETRAINED))}")
    return 0
