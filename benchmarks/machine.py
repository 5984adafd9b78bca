"""What ran a benchmark: CPU, cores, load, GPUs, package versions, git revision."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


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
