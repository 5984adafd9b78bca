#!/usr/bin/env bash
# The benchmark suite on one GPU, in one call of the device tool (issue 19 item 5).
#
#   bash benchmarks/gpu_check.sh OUT_DIR          # on the GPU machine: about 8 minutes
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh OUT_DIR --smoke
#                                                 # here, on CPU: the plumbing in ~2 minutes
#
# The GPU machine has Python 3.12, JAX (CUDA) and torch (CUDA) but neither Keras nor
# TensorFlow (../shared/GPU.md): Keras and the small packages it needs travel as cp312
# wheels in `.whl/` (carry it; fill it here with `pip download --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 --no-deps -d .whl keras==3.15.1
# namex optree==0.20.0`), installed there into /tmp/site. Then, each step under its own
# time limit so that one slow step cannot eat the others' minutes:
#   1. the card (nvidia-smi) and the JAX / torch devices,
#   2. `run_all.py --size large` under jax, with backends.py over jax and torch (no
#      TensorFlow there): train-step MFU, patch vs full, adaptive computation, generation,
#   3. the paper's Table 1 geometry with RIN `hpdm_s`: 16x64x64 patches, 3 levels
#      (64x256x256) and 4 levels (64x512x512), HPDM with AC vs full resolution. The goal
#      (issue 19): >= 15 videos/s for HPDM at 64x256x256 (paper: 6.71 on an A100), and
#      full resolution at 64x512x512 running out of memory where HPDM trains (its row then
#      reads FAILED: RESOURCE_EXHAUSTED / out of memory, which is the result).
# Device memory comes from the backends' peak statistics (benchmarks/memory.py). Every
# result lands in OUT_DIR (JSON, markdown, PNG) with a log per step.
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--smoke]}
SMOKE=${2:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if $PY -c "import keras" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no Keras and no .whl/ wheels to install"; exit 2; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# XLA's GPU autotuning would spend minutes of the budget on compiles of every shape.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    tail -n 25 "$OUT/$name.log"
    [ $rc -eq 0 ] || status=1
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    $PY -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1 | tail -1
} >"$OUT/card.txt"
cat "$OUT/card.txt"

if [ "$SMOKE" = "--smoke" ]; then
    step patch_vs_full_smoke 600 $PY benchmarks/patch_vs_full.py --size small \
        --backbones rin --modes hpdm_ac full --repeats 1 --warmup 1 --out "$OUT/smoke"
    exit $status
fi

RESULTS=benchmarks/results
step run_all 300 $PY benchmarks/run_all.py --size large --backend jax --backends jax torch
mkdir -p "$OUT/large" && cp -r "$RESULTS"/. "$OUT/large/"
step paper_256 100 $PY benchmarks/patch_vs_full.py --size paper --backbones rin \
    --modes hpdm_ac full --repeats 2 --jobs 1 --out "$OUT/paper_256"
step paper_512 80 $PY benchmarks/patch_vs_full.py --size paper512 --backbones rin \
    --modes hpdm_ac full --repeats 2 --jobs 1 --out "$OUT/paper_512"
exit $status
