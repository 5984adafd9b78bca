#!/usr/bin/env bash
# Lints, then runs the whole test suite once per Keras backend, each in its own process
# (KERAS_BACKEND is fixed at import). Usage: scripts/test.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BACKENDS=${BACKENDS:-"jax tensorflow torch"}

lint=()
for d in keras_hpdm tests examples benchmarks scripts; do [ -e "$d" ] && lint+=("$d"); done
"$PY" -m ruff check "${lint[@]}" || exit 1

status=0
declare -A took
for backend in $BACKENDS; do
  echo "=================== KERAS_BACKEND=$backend ==================="
  start=$(date +%s)
  KERAS_BACKEND=$backend "$PY" -m pytest -q -p no:cacheprovider --durations=10 "$@"
  rc=$?
  took[$backend]=$(( $(date +%s) - start ))
  if [ $rc -ne 0 ]; then status=1; fi
done
echo "=================== summary ==================="
for backend in $BACKENDS; do echo "$backend: ${took[$backend]}s"; done
exit $status
