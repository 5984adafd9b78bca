"""The context a level's tiles are denoised against, kept once per coarse patch.

A tile at level `l` is denoised against the finished coarser levels cut at its chain of
parent patches. Tiles share coarse patches (all of them the level-0 patch, many of them
their parents), and the features a coarse level contributes depend only on the chain of
patches down to it, so `ContextCache` keeps them once per (sample, cond / uncond half,
level, chain prefix), not once per tile.

Where the parents lie is `generate(context_parents=...)` (`context_chains`):

- `"center"` (default): the parent patch that centres its tile
  (`PyramidSpec.context_offsets`), as the model was always sampled.
- `"grid"`: the coarser level's own tile (`tile_grid` at the same overlap) that holds the
  tile, nearest to centring it. At 50% overlap (and at none) every finer tile lies inside
  one, so the cache follows the coarser levels' tile counts, not the output's: at HPDM-S's
  64x256x256 the finest level's 196 tiles share 18 parents, and the cache holds 1.2 GiB
  instead of 6.3 GiB with centred parents (30.6 GiB with one context per tile;
  `benchmarks/context_cache_memory.py`). Any parent that holds the tile is one the model
  saw in training (pyramids are cut at random nested parents), but a tile at its parent's
  edge gets less surrounding context: the bundled model's frame accuracy is 2-6 points
  lower (README).
"""

import numpy as np

from keras_hpdm.diffusion.tiling import tile_grid


def context_chains(spec, level, starts, overlap, parents="grid"):
    """Chains of offsets `(T, level + 1, 3)` for the tiles at `starts` of level `level`.

    `parents="center"`: each parent centres its child (`PyramidSpec.context_offsets`).
    `"grid"`: per axis, the coarser level's tile-grid start that holds the child
    (`2 p <= o <= 2 p + r`) nearest to the centred choice; where no grid tile holds it
    (overlaps under 50% that do not align), the centred parent itself.
    """
    if parents == "center":
        return np.stack([spec.context_offsets(level, o) for o in starts]).astype(np.int64)
    r = np.asarray(spec.patch_size, np.int64)
    grids = {lv: [np.unique(g) for g in tile_grid(spec.level_size(lv), spec.patch_size,
                                                  overlap).T]
             for lv in range(level)}
    chains = []
    for start in np.asarray(starts, np.int64):
        chain = [start]
        for lv in range(level, 0, -1):
            child, centred = chain[-1], spec.parent_offset(lv, chain[-1])
            parent = centred.copy()
            for axis in range(3):
                if not spec.pyramided[axis]:
                    continue
                grid = grids[lv - 1][axis]
                holds = grid[(2 * grid <= child[axis]) & (child[axis] <= 2 * grid + r[axis])]
                if holds.size:
                    parent[axis] = holds[np.argmin(np.abs(holds - centred[axis]))]
            chain.append(parent)
        chains.append(np.stack(chain[::-1]))
    return np.stack(chains).astype(np.int64)


class ContextCache:
    """Coarse features for one level's generation, kept per coarse patch.

    Args:
        chains: `(T, level + 1, 3)` tile chains (`context_chains`).
        dtype: numpy type entries are stored in (float32, or bfloat16 to halve them).
        budget: bytes the entries may take (None: unbounded); past it, new entries are
            not kept and the tiles needing them recompute their context.
    """

    def __init__(self, chains, dtype, budget=None):
        self.level = chains.shape[1] - 1
        # prefix[k][t]: which distinct chain of patches for levels 0..k tile t has.
        self.prefix = [np.unique(chains[:, :k + 1].reshape(len(chains), -1), axis=0,
                                 return_inverse=True)[1].reshape(-1)
                       for k in range(self.level)]
        self.dtype, self.budget = dtype, budget
        self.entries = {}
        self.bytes = 0
        self.full = budget == 0
        self.block_levels = None  # levels each fusing block's features hold
        self.block_shapes = None  # (tokens..., width) of each fusing block's features

    def parent_representatives(self):
        """One tile per distinct parent chain: computing their contexts fills the cache."""
        if self.level == 0:
            return np.zeros(0, np.int64)
        _, first = np.unique(self.prefix[-1], return_index=True)
        return np.sort(first)

    def _keys(self, row_sample, row_half, tile):
        return [(int(row_sample), int(row_half), k, int(self.prefix[k][tile]))
                for k in range(self.level)]

    def store(self, context, sample_index, tile_index, halves):
        """Keeps the entries of a computed context (rows: `halves` x the batch) that fit."""
        features = [np.asarray(f) for f in context.get("features", [])]
        if self.block_levels is None:
            self.block_levels = [f.shape[1] for f in features]
            self.block_shapes = [f.shape[2:] for f in features]
        b = len(sample_index)
        for row in range(halves * b):
            half, j = divmod(row, b)
            for k, key in enumerate(self._keys(sample_index[j], half, tile_index[j])):
                if key in self.entries or self.full:
                    continue
                entry = [np.array(f[row, k], dtype=self.dtype) if k < f.shape[1] else None
                         for f in features]
                size = sum(e.nbytes for e in entry if e is not None)
                if self.budget is not None and self.bytes + size > self.budget:
                    self.full = True
                    continue
                self.entries[key] = entry
                self.bytes += size

    def lookup(self, sample_index, tile_index, halves, coords):
        """The context of a batch (rows: `halves` x the batch, float32) assembled from the
        entries, or None when any entry it needs is not kept."""
        if self.block_levels is None:
            return None
        b = len(sample_index)
        rows = []
        for row in range(halves * b):
            half, j = divmod(row, b)
            entries = [self.entries.get(key)
                       for key in self._keys(sample_index[j], half, tile_index[j])]
            if any(e is None for e in entries):
                return None
            rows.append(entries)
        features = [
            np.stack([np.stack([entries[k][block] for k in range(n)]) for entries in rows])
            .astype(np.float32, copy=False) if n else
            np.zeros((len(rows), 0) + tuple(shape), np.float32)
            for block, (n, shape) in enumerate(zip(self.block_levels, self.block_shapes,
                                                   strict=True))
        ]
        return {"features": features, "coords": coords}
