#!/usr/bin/env bash
# Issue 17's GPU check, meant as ONE call on a lent GPU machine (the `device` tool): bench.py P4
# (FedMPQ-KD seconds per round at client_gpus 0.25 and the projected 50-round run; runs per hour
# with --jobs 1 against --jobs 3), then the main experiment's FedMPQ-KD run (seed 0) cut off after
# KD_SECONDS. JSON and metrics land in $OUT (at most 8 files come back from the device).
#   OUT=/tmp/gpu CIFAR10_DIR=shared/cifar10 experiments/gpu_check.sh
# The device machine has no network: bring the package's environment and data along (`carry`).
# Real CIFAR-10 is used when $CIFAR10_DIR/train.npz exists; the full train.npz is larger than what
# travels to the device (64 MiB), so without it the same shapes come from synthetic data (the JSON
# says which).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu}"
PY="${PY:-.venv/bin/python}"
CIFAR10_DIR="${CIFAR10_DIR:-../shared/data/cifar10}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
"$PY" experiments/bench.py --parts P4 --device cuda --client-gpus 0.25 --images 50000 --rounds 4 \
  --data-dir "$CIFAR10_DIR" --out "$OUT/bench" > "$OUT/p4.log" 2>&1
cp "$OUT/bench/bench.json" "$OUT/p4.json"
data=(--set dataset.name=synthetic --set dataset.synthetic_train_size=50000)
if [[ -f "$CIFAR10_DIR/train.npz" ]]; then
  data=(--set dataset.source=npz --set "dataset.path=$CIFAR10_DIR")
fi
timeout "${KD_SECONDS:-240}" "$PY" -m fedmpq_flwr.main --full-experiment --only fedmpq_kd_seed0 \
  --results-dir "$OUT/kd" --set federation.device=cuda --set federation.client_gpus=0.25 "${data[@]}" \
  > "$OUT/kd.log" 2>&1 || echo "fedmpq_kd run stopped after ${KD_SECONDS:-240} s (rounds so far in kd_metrics.jsonl)"
cp "$OUT/kd/fedmpq_kd_seed0/metrics.jsonl" "$OUT/kd_metrics.jsonl"
