"""The worker side of the protocol in `workers.py`: one benchmark configuration.

`python benchmarks/bench_worker.py '<json config>'` builds a `PatchDiffusionModel` on random
pyramids, warms up (compilation, first-call caches) and then answers `train` / `generate` /
`matmul` / `probe` / `memory` / `finish` requests, one JSON object per line on stdin, each
reply a `PREFIX`-marked line on stdout (library prints go to stderr).

Memory: after warm-up the worker returns freed heap to the OS (`malloc_trim`) and resets its
peak RSS (`/proc/self/clear_refs`), so "step memory" is what the timed work allocates above
the post-warm-up baseline, without compiler memory. Under JAX the XLA buffer assignment of
the compiled train step (cost and memory analysis) is reported too; on a GPU the device's
peak memory statistics are used.
"""

import json
import os
import sys
import time
import traceback

from memory import MB, device_memory, peak_rss_mb, rss_mb, trim_and_reset_peak
from workers import PREFIX
from xla_analysis import xla_train_analysis


class Bench:
    """The worker's state: one model, one batch, warm-up done in `__init__`."""

    def __init__(self, cfg):
        t0 = time.perf_counter()
        self.cfg = cfg
        self.rss_start = rss_mb()
        import keras
        import numpy as np

        import keras_hpdm
        from keras_hpdm.backbones import BACKBONES

        self.keras, self.np = keras, np
        info = {"backend": keras.config.backend(), "import_s": time.perf_counter() - t0}
        if keras.config.backend() == "torch":
            import torch

            if cfg.get("torch_threads"):
                torch.set_num_threads(int(cfg["torch_threads"]))
            info["torch_threads"] = torch.get_num_threads()
        spec = keras_hpdm.PyramidSpec(**cfg["spec"])
        cls = BACKBONES[cfg["backbone"]]
        t = time.perf_counter()
        backbone = cls.from_preset(cfg["preset"], pyramid=spec, **cfg.get("overrides", {}))
        self.model = keras_hpdm.PatchDiffusionModel(backbone, seed=0)
        info.update(build_s=time.perf_counter() - t, params=int(backbone.count_params()),
                    levels_per_block=list(backbone.levels_per_block),
                    num_blocks=backbone.num_blocks, target_size=list(spec.target_size))
        self.spec = spec
        self.rss_built = rss_mb()
        if cfg.get("train"):
            self._setup_train(info)
        if cfg.get("generate") is not None:
            self._setup_generate(info)
        if cfg.get("matmul"):
            self.matmul()
        info["peak_rss_setup_mb"] = peak_rss_mb()
        info["rss_built_mb"] = self.rss_built
        info["rss_after_warmup_mb"] = rss_mb()
        info["peak_reset"] = trim_and_reset_peak()
        dev = device_memory(reset=True)
        self.rss_base = rss_mb()
        info["rss_base_mb"] = self.rss_base
        info["device_base_mb"] = None if dev is None else dev[0]
        info["setup_s"] = time.perf_counter() - t0
        self.info = info

    # ---------------------------------------------------------------- training
    def _setup_train(self, info):
        keras, np = self.keras, self.np
        cfg, spec = self.cfg, self.spec
        jit = cfg.get("jit_compile", "auto")
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
        rng = np.random.default_rng(cfg.get("seed", 0))
        b = cfg["batch_size"]
        self.batch = {
            "patches": rng.uniform(-1, 1, (b, spec.num_levels) + spec.patch_size + (3,))
            .astype("float32"),
            "coords": np.stack([spec.coords_from_offsets(spec.sample_offsets(i))
                                for i in range(b)]),
        }
        t = time.perf_counter()
        self.model.train_on_batch(self.batch)
        info["first_step_s"] = time.perf_counter() - t
        for _ in range(max(0, cfg.get("warmup", 2) - 1)):
            self.model.train_on_batch(self.batch)
        info["jit_compile"] = self.model.jit_compile
        weights = list(self.model.variables) + list(self.model.optimizer.variables)
        info["state_mb"] = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                               for v in weights) / MB
        if keras.config.backend() == "jax" and cfg.get("xla", True):
            try:
                info["xla"] = xla_train_analysis(self.model, self.batch)
            except Exception as e:  # an analysis only: never fail the benchmark on it
                info["xla"] = {"error": repr(e)}

    def train(self, steps=1, min_seconds=0.0):
        """Times `steps` train steps one by one, more while they total under `min_seconds`
        (fast configurations get several samples per round, slow ones one)."""
        times = []
        while len(times) < steps or sum(times) < min_seconds:
            t = time.perf_counter()
            self.model.train_on_batch(self.batch)
            times.append(time.perf_counter() - t)
        return {"times": times}

    # -------------------------------------------------------------- generation
    def _setup_generate(self, info):
        self.gen_kwargs = dict(num_samples=1, seed=0, verbose=0, **self.cfg["generate"])
        t = time.perf_counter()
        for _ in range(max(1, self.cfg.get("gen_warmup", 1))):
            video = self.model.generate(**self.gen_kwargs)
        info["first_generate_s"] = time.perf_counter() - t
        info["output_shape"] = list(video.shape)

    def generate(self):
        t = time.perf_counter()
        video = self.model.generate(**self.gen_kwargs)
        return {"seconds": time.perf_counter() - t, "shape": list(video.shape)}

    def probe(self):
        """Untimed diagnostics of one generation: numpy host peak (tracemalloc), canvases, the
        context cache every level held (`info["context_cache_bytes"]`, measured: dtype and
        budget included), and the full cache of every level, estimated as (tile batches
        per step) x (tile batch size) x (bytes of one tile's `encode_context` features):
        what `cache_context=True` keeps for a whole level, whatever memory it lives in."""
        import tracemalloc

        held = {}  # level -> bytes the context cache held at the level's last step

        def record(info):
            held[str(info["level"])] = info["context_cache_bytes"] / MB

        tracemalloc.start()
        try:
            video, canvases = self.model.generate(**self.gen_kwargs, return_pyramid=True,
                                                  callbacks=[record])
            _, host_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        levels = len(canvases)
        return {
            "context_mb_held_by_level": {k: v for k, v in held.items() if k != "0"},
            "host_numpy_peak_mb": host_peak / MB,
            "canvas_mb": canvases[-1].nbytes / MB,
            "all_canvases_mb": sum(c.nbytes for c in canvases) / MB,
            "video_uint8_mb": video.nbytes / MB,
            "context_mb_by_level": {str(lv): self.context_cache_mb(lv)
                                    for lv in range(1, levels)},
        }

    def context_cache_mb(self, level):
        import math

        from keras_hpdm.diffusion import tile_grid

        np, spec, model = self.np, self.spec, self.model
        x = np.zeros((1, level) + spec.patch_size + (model.backbone.channels,), "float32")
        sigma = np.full((1, level), 0.002, "float32")
        coords = spec.coords_from_offsets(np.zeros((spec.num_levels, 3), "int64"))[None, :level]
        conds = {k: self.keras.ops.convert_to_numpy(v)
                 for k, v in model.null_conditions(1).items()}
        features = model.encode_context(x, sigma, coords, conds)["features"]
        per_tile = sum(int(np.prod(f.shape)) * np.dtype(
            self.keras.backend.standardize_dtype(f.dtype)).itemsize for f in features)
        overlap = self.gen_kwargs.get("overlap", (0.5, 0.5, 0.0))
        tiles = self.gen_kwargs.get("num_samples", 1) * len(
            tile_grid(spec.level_size(level), spec.patch_size, overlap))
        batch = min(self.gen_kwargs.get("tile_batch_size", 16), tiles)
        return math.ceil(tiles / batch) * batch * per_tile / MB

    # ------------------------------------------------------------------ matmul
    def matmul(self, n=None, reps=3):
        """float32 matmul rate (GFLOP/s, best of `reps`) through `keras.ops` on this backend."""
        ops, np = self.keras.ops, self.np
        n = n or self.cfg.get("matmul") or 1024
        if getattr(self, "_mm", None) is None or self._mm[0].shape[0] != n:
            rng = np.random.default_rng(0)
            self._mm = [ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32))
                        for _ in range(2)]
            ops.convert_to_numpy(ops.sum(ops.matmul(*self._mm)))  # warm-up
        best = None
        for _ in range(reps):
            t = time.perf_counter()
            ops.convert_to_numpy(ops.matmul(*self._mm)[0, 0])
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        return {"gflops": 2.0 * n**3 / best / 1e9, "n": n}

    # ------------------------------------------------------------------ finish
    def memory(self):
        """Peak RSS (and device memory) since the post-warm-up reset."""
        peak = peak_rss_mb()
        out = {"peak_rss_mb": peak, "step_rss_growth_mb": peak - self.rss_base,
               "rss_end_mb": rss_mb()}
        dev = device_memory()
        if dev is not None:
            out["device_peak_mb"] = dev[1]
            out["device_growth_mb"] = dev[1] - (self.info.get("device_base_mb") or 0.0)
        return out

    def finish(self):
        out = self.memory()
        if self.keras.config.backend() == "jax" and self.cfg.get("clear_caches"):
            import gc

            import jax

            jax.clear_caches()
            gc.collect()
            trim_and_reset_peak()
            out["rss_after_clear_caches_mb"] = rss_mb()
        return out


def main(config_json):
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr; stdout carries only the protocol
    sys.stdout = sys.stderr

    def emit(obj):
        proto.write(PREFIX + json.dumps(obj) + "\n")
        proto.flush()

    try:
        bench = Bench(json.loads(config_json))
    except Exception:
        emit({"error": traceback.format_exc()[-3000:]})
        sys.exit(1)
    emit(bench.info)
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        try:
            emit(getattr(bench, cmd)(**request))
        except Exception:
            emit({"error": traceback.format_exc()[-3000:]})
        if cmd == "finish":
            break


if __name__ == "__main__":
    main(sys.argv[1])
