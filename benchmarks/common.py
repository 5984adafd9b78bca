"""Shared machinery of the benchmark scripts (not a benchmark itself).

- `Worker`: one benchmark configuration in its own Python process (its own Keras backend, its
  own peak memory), driven over a pipe, so a script can interleave configurations
  (A, B, A, B, ...) and every one of them sees the same machine load.
- The worker side (`python benchmarks/common.py '<json config>'`) builds a
  `PatchDiffusionModel` on random pyramids, warms up (compilation, first-call caches) and then
  answers `train` / `generate` / `matmul` / `probe` / `finish` requests.
- Memory: after warm-up a worker returns freed heap to the OS (`malloc_trim`) and resets its
  peak RSS (`/proc/self/clear_refs`), so "step memory" is what the timed work allocates above
  the post-warm-up baseline, without compiler memory. Under JAX the XLA buffer assignment of
  the compiled train step (cost and memory analysis) is reported too; on a GPU the device's
  peak memory statistics are used.
- Machine description, text and markdown tables, JSON, Pillow bar charts.
"""

import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PREFIX = "@@bench "
MB = 2.0**20

PAPER = {  # Skorokhodov et al., CVPR 2024 (A100, 64x256x256 UCF-101, HPDM-S)
    "full_memory_gb": 65.3, "full_videos_per_s": 1.24,
    "hpdm_ac_memory_gb": 14.2, "hpdm_ac_videos_per_s": 6.71,
    "memory_ratio": 14.2 / 65.3, "throughput_ratio": 6.71 / 1.24,
    "ac_rin_videos_per_s": 4.4, "noac_rin_videos_per_s": 2.73, "ac_rin_speedup": 4.4 / 2.73,
    "ac_unet_speedup": 1.1,
}


# --------------------------------------------------------------------------- machine
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def package_versions():
    out = {}
    for name in ("keras", "jax", "jaxlib", "tensorflow", "torch", "numpy", "keras-hpdm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=HERE, capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def machine_info():
    """What ran the benchmark: CPU, cores, load, GPUs, package versions, git revision."""
    return {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "gpus": gpu_names(),
        "load_avg_1min": round(os.getloadavg()[0], 2), "versions": package_versions(),
        "git": git_revision(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
    }


# ------------------------------------------------------------------------ statistics
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fmt(value, spec=".2f", none="-"):
    return none if value is None else format(value, spec)


# ---------------------------------------------------------------------------- tables
def text_table(columns, rows):
    """`columns`: (header, key or callable, format spec). Returns an aligned text table."""
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([_cell(row, key, spec) for _, key, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(columns, rows):
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "|" + "|".join(":---" if spec is None else "---:" for _, _, spec in columns) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_cell(row, key, spec) for _, key, spec in columns) + " |")
    return "\n".join(out)


def _cell(row, key, spec):
    value = key(row) if callable(key) else row.get(key)
    if value is None:
        return "-"
    if isinstance(value, str) or spec is None:
        return str(value)
    return format(value, spec)


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print(f"wrote {path}")


def bar_chart(path, title, labels, series, unit="", note=None):
    """Horizontal grouped bars with Pillow (matplotlib is not a dependency).

    `series`: {name: [value per label]} (None values are skipped); one colour per series.
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    bar_h, gap, left, width = 18, 14, 230, 900
    group_h = bar_h * len(series) + gap
    height = 70 + group_h * len(labels) + 22 * len(series) + (24 if note else 0)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black", font=font)
    top = max((v for vals in series.values() for v in vals if v is not None), default=1.0)
    scale = (width - left - 120) / (top or 1.0)
    y = 40
    for i, label in enumerate(labels):
        draw.text((10, y + (group_h - gap) / 2 - 8), label, fill="black", font=small)
        for j, (_, values) in enumerate(series.items()):
            value = values[i]
            if value is not None:
                x1 = left + max(1, value * scale)
                draw.rectangle([left, y + j * bar_h, x1, y + (j + 1) * bar_h - 3],
                               fill=colours[j % len(colours)])
                draw.text((x1 + 5, y + j * bar_h + 1), f"{value:.3g}{unit}", fill="black",
                          font=small)
        y += group_h
    for j, name in enumerate(series):
        draw.rectangle([left, y + 4, left + 14, y + 16], fill=colours[j % len(colours)])
        draw.text((left + 20, y + 2), name, fill="black", font=small)
        y += 22
    if note:
        draw.text((10, y + 4), note, fill=(90, 90, 90), font=small)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    print(f"wrote {path}")
    return path


# ---------------------------------------------------------------------- parent side
class WorkerError(RuntimeError):
    pass


class Worker:
    """A configuration in its own process; `call(cmd, **args)` returns the worker's reply."""

    def __init__(self, name, config, backend="jax", env=None):
        self.name, self.config, self.backend = name, config, backend
        self.info, self.error = None, None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        full_env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                        PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=full_env, cwd=os.path.dirname(HERE),
        )

    def stderr_tail(self, chars=3000):
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                msg = json.loads(line[len(PREFIX):])
                if "error" in msg:
                    raise WorkerError(f"{self.name}: {msg['error']}")
                return msg
        rc = self.proc.wait()
        raise WorkerError(f"{self.name} exited with code {rc}:\n{self.stderr_tail()}")

    def ready(self):
        try:
            self.info = self._read()
        except WorkerError as e:
            self.error = str(e)
            self.close()
        return self.info

    def call(self, cmd, **args):
        if self.error:
            return None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
            return self._read()
        except (WorkerError, BrokenPipeError, OSError) as e:
            self.error = str(e)
            self.close()
            return None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def start_workers(specs, jobs=2):
    """Starts `Worker(*spec)` for each spec, at most `jobs` setting up at a time.

    Set-up (imports, building, compilation, warm-up) runs concurrently; timed work later runs
    one worker at a time. A worker that fails keeps `.error` and is skipped afterwards.
    """
    workers = []
    for begin in range(0, len(specs), max(1, jobs)):
        chunk = [Worker(*spec) for spec in specs[begin:begin + max(1, jobs)]]
        for w in chunk:
            t = time.perf_counter()
            w.ready()
            status = "failed: " + w.error.splitlines()[0][:200] if w.error else "ready"
            print(f"  [{w.name}] {status} ({time.perf_counter() - t:.0f} s wait)", flush=True)
        workers.extend(chunk)
    return workers


def interleave(workers, repeats, *calls):
    """Runs `calls` ((cmd, args) pairs) on every worker in turn, `repeats` rounds (A, B, A, B).

    Returns {worker name: {cmd: [reply, ...]}}.
    """
    out = {w.name: {cmd: [] for cmd, _ in calls} for w in workers}
    for _ in range(repeats):
        for w in workers:
            for cmd, args in calls:
                reply = w.call(cmd, **args)
                if reply is not None:
                    out[w.name][cmd].append(reply)
    return out


def finish_all(workers):
    out = {}
    for w in workers:
        out[w.name] = w.call("finish") or {}
        w.close()
    return out


# ---------------------------------------------------------------------- worker side
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


def xla_train_analysis(model, batch):
    """XLA cost and memory analysis of Keras' own jitted JAX train step (no recompilation:
    the step Keras compiled is looked up in `model.train_function`'s closure)."""
    import jax
    from keras.src.backend.jax.trainer import _distribute_data

    fn = model.train_function
    cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ()),
                     strict=True))
    jitted = cells.get("step_function")
    if not hasattr(jitted, "lower"):  # not jit-compiled: analyse a fresh jit of the step
        jitted = jax.jit(model.train_step)
    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    t = time.perf_counter()
    compiled = jitted.lower(state, _distribute_data((batch, None, None))).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    out = {"flops": float(cost.get("flops", 0.0)), "analysis_s": time.perf_counter() - t,
           "bytes_accessed_mb": float(cost.get("bytes accessed", 0.0)) / MB}
    for key in ("temp", "argument", "output", "alias"):
        out[f"{key}_mb"] = getattr(mem, f"{key}_size_in_bytes", 0) / MB
    out["total_mb"] = out["temp_mb"] + out["argument_mb"] + out["output_mb"] - out["alias_mb"]
    return out


class _Bench:
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
            except Exception as e:  # internal API: never fail the benchmark on it
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
        """Untimed diagnostics of one generation: numpy host peak (tracemalloc), canvases, and
        the context cache of every level, estimated as (tile batches per step) x (tile batch
        size) x (bytes of one tile's `encode_context` features): what `cache_context=True`
        keeps for a whole level, whatever device or host memory it lives in."""
        import tracemalloc

        tracemalloc.start()
        try:
            video, canvases = self.model.generate(**self.gen_kwargs, return_pyramid=True)
            _, host_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        levels = len(canvases)
        return {
            "host_numpy_peak_mb": host_peak / MB,
            "canvas_mb": canvases[-1].nbytes / MB,
            "all_canvases_mb": sum(c.nbytes for c in canvases) / MB,
            "video_uint8_mb": video.nbytes / MB,
            "context_mb_by_level": {str(lv): self.context_cache_mb(lv)
                                    for lv in range(1, levels)},
        }

    def context_cache_mb(self, level):
        import math

        from keras_hpdm.diffusion.tiling import tile_grid

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


def _worker_main(config_json):
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr; stdout carries only the protocol
    sys.stdout = sys.stderr

    def emit(obj):
        proto.write(PREFIX + json.dumps(obj) + "\n")
        proto.flush()

    try:
        bench = _Bench(json.loads(config_json))
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
    _worker_main(sys.argv[1])
