#!/usr/bin/env bash
# The GPU benchmark (issue targets: SimpleCNN, world size 1, data resident on the GPU):
# batch 512 and batch 128, compute bound and engine, 3 interleaved repetitions each.
# Run from the repository root on a CUDA machine; results go to ${OUT:-bench/results}.
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
nvidia-smi -L
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
data=$(mktemp -d)
"$PY" -m ddpbench.data synthetic --train-size 50000 --test-size 10000 --out "$data"
"$PY" bench/run.py --device cuda --data "$data" --reps 3 --epochs 4 --batch-size 512 --skip-classic \
    --out "$OUT/gpu-bs512.json"
"$PY" bench/run.py --device cuda --data "$data" --reps 3 --epochs 3 --batch-size 128 --skip-classic \
    --out "$OUT/gpu-bs128.json"
