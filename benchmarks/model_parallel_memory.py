"""Per-device memory of the big presets' training state under
`keras_hpdm.distribute.model_parallel`, computed from variable shapes and layouts.

Training state per trainable weight: the weight, its EMA copy and Adam's two slots (all
float32; the EMA copies and slots follow the weight's layout); non-trainable variables once.
RIN presets are built with 1 and 2 blocks and extrapolated to their block count (their
blocks are identical), so that even `t2v` (5.5B parameters) is measured without holding it;
UNet presets are built whole. Nothing runs on a device: the meshes are layouts only.

    KERAS_BACKEND=jax python benchmarks/model_parallel_memory.py
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import markdown_table, report  # noqa: E402

GIB = 2.0**30
MODEL_SIZES = (1, 2, 4, 8)
# Adam's two slots and the EMA copy per trainable weight.
TRAINABLE_COPIES = 4


def state_bytes(backbone, distribution):
    """(bytes on the most loaded device, total bytes) of the training state."""
    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    trainable = {id(v) for v in backbone.trainable_weights}
    per_device = total = 0
    for v in backbone.weights:
        layout = distribution.get_variable_layout(v)
        split = int(np.prod([sizes[a] for a in layout.axes if a is not None] or [1]))
        copies = TRAINABLE_COPIES if id(v) in trainable else 1
        size = int(np.prod(v.shape)) * 4 * copies
        per_device += size // split
        total += size
    return per_device, total


def measure(kind, preset, meshes):
    import keras_hpdm
    from keras_hpdm.backbones import BACKBONES

    cls = BACKBONES[kind]
    config = cls.presets[preset]
    spec = keras_hpdm.PyramidSpec(tuple(config["metadata"]["params_for"]["patch_size"]), 3)
    extra = {k: v for k, v in config["metadata"]["params_for"].items() if k != "patch_size"}

    def build(**overrides):
        backbone = cls.from_preset(preset, pyramid=spec, **extra, **overrides)
        backbone.build()
        return backbone

    if kind == "rin":  # identical blocks: measure 1 and 2, extrapolate
        blocks = config["config"]["num_blocks"]
        # (a preset's own per-block level schedule has one entry per block; the weights do
        # not depend on it)
        one, two = (build(num_blocks=n, levels_per_block="linear") for n in (1, 2))
        params = one.count_params() + (blocks - 1) * (two.count_params() - one.count_params())
        rows = []
        for m in meshes:
            a, b = state_bytes(one, m), state_bytes(two, m)
            rows.append(tuple(x + (blocks - 1) * (y - x) for x, y in zip(a, b, strict=True)))
        del one, two
    else:
        backbone = build()
        params = backbone.count_params()
        rows = [state_bytes(backbone, m) for m in meshes]
        del backbone
    return params, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+",
                        default=["rin:hpdm_s", "rin:hpdm_m", "rin:hpdm_l", "rin:t2v",
                                 "unet:hpdm_s", "unet:hpdm_m"],
                        help="KIND:PRESET pairs (default: the paper-scale presets)")
    args = parser.parse_args()
    import keras

    from keras_hpdm import distribute

    meshes = [distribute.model_parallel(keras.distribution.DeviceMesh(
        (1, n), ["batch", "model"], devices=[f"cpu:{i}" for i in range(n)]))
        for n in MODEL_SIZES]
    rows = []
    for item in args.presets:
        kind, preset = item.split(":")
        start = time.time()
        params, sizes = measure(kind, preset, meshes)
        row = {"backbone": kind, "preset": preset, "params_m": params / 1e6,
               "seconds": round(time.time() - start, 1)}
        for n, (per_device, total) in zip(MODEL_SIZES, sizes, strict=True):
            row[f"gib_{n}"] = per_device / GIB
            row[f"share_{n}"] = per_device / total
        rows.append(row)
        print(f"{kind} {preset}: {params / 1e6:.0f}M parameters, "
              f"{sizes[0][0] / GIB:.2f} GiB -> {sizes[-1][0] / GIB:.2f} GiB per device "
              f"over {MODEL_SIZES[-1]} ({time.time() - start:.0f} s)")
    columns = ([("backbone", "backbone", None), ("preset", "preset", None),
                ("params (M)", "params_m", ".0f")]
               + [(f"GiB/device, model {n}", f"gib_{n}", ".2f") for n in MODEL_SIZES]
               + [(f"share at {MODEL_SIZES[-1]}", f"share_{MODEL_SIZES[-1]}", ".3f")])
    report("model_parallel_memory", columns, rows,
           {"rows": rows, "model_sizes": list(MODEL_SIZES),
            "state": "weights + EMA + Adam slots (float32) per trainable weight"},
           title="Training state per device under distribute.model_parallel "
                 "(computed from shapes and layouts)",
           markdown=markdown_table(columns, rows) + "\n")


if __name__ == "__main__":
    main()
