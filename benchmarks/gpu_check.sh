#!/usr/bin/env bash
# GPU smoke and speed check (a few minutes): a few hundred training steps of MLC-NC on
# ResNet-50 at 224 px with AMP, and of a linear-head BCE model, on random pixels; prints
# images/s, peak GPU memory, and whether the losses stayed finite (exit 1 if not).
# Without CUDA it prints SKIP and exits 0. Nothing is downloaded (pretrained=False).
#   benchmarks/gpu_check.sh [--steps 300] [--batch-size 64] [--precision bf16-mixed]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PYTHON=${PYTHON:-.venv/bin/python}
else
    PYTHON=${PYTHON:-python3}
fi
# Use the source tree even where the package is not installed.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
