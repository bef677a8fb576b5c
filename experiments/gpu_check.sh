#!/usr/bin/env bash
# GPU check, one call on a machine with a GPU: the P4 part of experiments/bench/throughput.py (FedMPQ-KD seconds
# per round at client_gpus 0.25 and the projected 50-round run; runs per hour with --jobs 1 against --jobs 3),
# then the main experiment's FedMPQ-KD run (seed 0) cut off after KD_SECONDS. JSON and metrics land in $OUT, a
# handful of files, so that little has to be copied back from the machine.
#   OUT=/tmp/gpu CIFAR10_DIR=shared/cifar10 experiments/gpu_check.sh
# Without network on the GPU machine, bring the package's environment ($PY) and the data along. Real CIFAR-10 is
# used when $CIFAR10_DIR/train.npz exists (experiments/lib.sh), else synthetic data of the same shapes (the JSON
# says which).
# TINY=1 checks the script itself on any machine: CPU, 500 synthetic images, the tiny CNN for one short run per
# --jobs setting, a one-round FedMPQ-KD run.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
OUT="${OUT:-results/gpu}"
PY="${PY:-.venv/bin/python}"
CIFAR10_DIR="${CIFAR10_DIR:-../shared/data/cifar10}"
KD_SECONDS="${KD_SECONDS:-240}"
mkdir -p "$OUT"
mapfile -t data < <(data_overrides)
if ((${#data[@]} == 0)); then data=(--set dataset.name=synthetic --set dataset.synthetic_train_size=50000); fi
if [[ -n "${TINY:-}" ]]; then
  device=(--device cpu --client-gpus 0)
  bench=(--model tiny_cnn --images 500 --rounds 2 --p4-runs 1 --p4-jobs 2 --data-dir "$OUT/synthetic")
  kd=(--set federation.device=cpu --set federation.client_gpus=0 --set train.num_rounds=1
    --set dataset.name=synthetic --set dataset.synthetic_train_size=500)
  data=()
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
  device=(--device cuda --client-gpus 0.25)
  bench=(--images 50000 --rounds 4 --data-dir "$CIFAR10_DIR")
  kd=(--set federation.device=cuda --set federation.client_gpus=0.25)
fi
"$PY" experiments/bench/throughput.py --parts P4 "${device[@]}" "${bench[@]}" --out "$OUT/bench" > "$OUT/p4.log" 2>&1
cp "$OUT/bench/bench.json" "$OUT/p4.json"
timeout "$KD_SECONDS" "$PY" -m fedmpq_flwr.main --full-experiment --only fedmpq_kd_seed0 --results-dir "$OUT/kd" \
  "${data[@]}" "${kd[@]}" > "$OUT/kd.log" 2>&1 \
  || echo "fedmpq_kd run stopped after $KD_SECONDS s (rounds so far in kd_metrics.jsonl)"
cp "$OUT/kd/fedmpq_kd_seed0/metrics.jsonl" "$OUT/kd_metrics.jsonl"
