#!/usr/bin/env bash
# GPU smoke and speed check (one prepared run, under 8 minutes on an H200): MLC-NC, the
# linear-head ERM model and a plain timm-style loop on ResNet-50 at 224 px, bf16, on random
# pixels (variants: cudnn.benchmark, channels_last, fused Adam, torch.compile) and through the
# real JPEG pipeline with every core as a loader worker; peak GPU memory, ratios, nvJPEG,
# benchmarks/bench_gather.py when present, and LM-CLIP / MLC-NC against the linear head on
# CLIP ViT-B/16 (gpu_check_clip.py). Exit 1 if a loss became non-finite.
# Without CUDA it prints SKIP and exits 0. Nothing is downloaded (pretrained=False).
# Writes $OUT/gpu_check.json when $OUT is set. CPU test: --device cpu --dry-run.
#   benchmarks/gpu_check.sh [--steps 60] [--budget-s 450] [--sections synthetic,data,compile]
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
