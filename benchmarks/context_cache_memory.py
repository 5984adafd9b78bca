"""Context cache memory at the paper's geometry, computed from shapes (no model is built).

Generation keeps the coarse features a level's tiles are denoised against
(`generate(cache_context=True)`). This computes, per level, what the cache holds:

  - `per tile`: the earlier design, every tile's whole context (all coarser levels);
  - the current one (`keras_hpdm/models/context_cache.py`): each coarse patch's features
    once per chain of patches down to it, with `generate(context_parents="center")`
    (parents centring their tiles, the default) and `"grid"` (parents on the coarser
    levels' tile grids, shared by many tiles); `context_chains` runs on the real tile grids,

for one sample (classifier-free guidance doubles both), float32 and bfloat16, at

  - HPDM-S (RIN `hpdm_s`: width 1024, 1x4x4 tokens, levels per block 1,1,2,2,3,3),
    16x64x64 patches, 3 levels, 64x256x256;
  - HPDM-T2V (RIN `t2v`: width 1024, 1x3x4 tokens, levels per block 1,2,2,3,3,4), 8x36x64
    patches, 4 levels, 64x288x512;

at generation's default overlap (50% in time and height). A context entry of level k holds
the block-input token grid (tokens x width) of every fusing block that runs level k.

    python benchmarks/context_cache_memory.py [--overlap 0.5 0.5 0]

Prints a table and writes `benchmarks/results/context_cache_memory.{json,md}`.
"""

import argparse
import os

from report import RESULTS, markdown_table, report

from keras_hpdm import PyramidSpec
from keras_hpdm.backbones.rin_presets import rin_presets
from keras_hpdm.diffusion.tiling import tile_grid
from keras_hpdm.models.context_cache import context_chains

GiB = 2**30
GEOMETRIES = {  # name: (preset, patch size, levels, levels per block)
    "HPDM-S 64x256x256": ("hpdm_s", (16, 64, 64), 3, (1, 1, 2, 2, 3, 3)),
    "HPDM-T2V 64x288x512": ("t2v", (8, 36, 64), 4, (1, 2, 2, 3, 3, 4)),
}


def level_rows(name, preset, patch, num_levels, levels_per_block, overlap):
    config = rin_presets[preset]["config"]
    tokens = 1
    for p, t in zip(patch, config["tokenizer_patch"], strict=True):
        tokens *= p // t
    spec = PyramidSpec(patch, num_levels)
    rows = []
    for level in range(1, num_levels):
        # Bytes (float32) of one level-k entry: the fusing blocks that run level k.
        entry = [sum(1 for n in levels_per_block if n > k) * tokens * config["data_dim"] * 4
                 for k in range(level)]
        starts = tile_grid(spec.level_size(level), patch, overlap)
        row = {"geometry": name, "level": level,
               "canvas": "x".join(map(str, spec.level_size(level))), "tiles": len(starts),
               "per_tile_gib": len(starts) * sum(entry) / GiB,
               "entry_mib": [e / 2**20 for e in entry]}
        for parents in ("center", "grid"):
            chains = context_chains(spec, level, starts, overlap, parents)
            distinct = [len({chains[t, :k + 1].tobytes() for t in range(len(chains))})
                        for k in range(level)]
            held = sum(d * e for d, e in zip(distinct, entry, strict=True))
            row.update({f"{parents}_parents": distinct[-1], f"{parents}_gib": held / GiB,
                        f"{parents}_bf16_gib": held / 2 / GiB,
                        f"{parents}_distinct_by_level": distinct})
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlap", type=float, nargs=3, default=[0.5, 0.5, 0.0])
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    rows = []
    for name, (preset, patch, levels, lpb) in GEOMETRIES.items():
        rows.extend(level_rows(name, preset, patch, levels, lpb, tuple(args.overlap)))
    meta = {"overlap": args.overlap, "rows": rows, "command":
            "python benchmarks/context_cache_memory.py"}
    report("context_cache_memory", TABLE, rows, meta,
           path=os.path.join(args.out, "context_cache_memory.json"),
           title=f"\nContext cache per level, one sample, overlap {tuple(args.overlap)}",
           markdown=markdown_table(TABLE, rows))


TABLE = [
    ("geometry", "geometry", None), ("level", "level", "d"), ("canvas", "canvas", None),
    ("tiles", "tiles", "d"), ("per tile GiB", "per_tile_gib", ".2f"),
    ("center parents", "center_parents", "d"), ("center GiB", "center_gib", ".2f"),
    ("grid parents", "grid_parents", "d"), ("grid GiB", "grid_gib", ".2f"),
    ("grid bf16 GiB", "grid_bf16_gib", ".2f"),
]


if __name__ == "__main__":
    main()
