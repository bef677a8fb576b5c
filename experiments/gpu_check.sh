#!/usr/bin/env bash
# Issue 17's GPU check, meant as ONE call on a lent GPU machine (the `device` tool): bench.py P4
# (FedMPQ-KD seconds per round at client_gpus 0.25 and the projected 50-round run; runs per hour
# with --jobs 1 against --jobs 3) twice, with the GPU settings off and on (train.channels_last and
# train.amp bf16, `--gpu-settings`), then the main experiment's FedMPQ-KD run (seed 0) cut off after
# KD_SECONDS. Only JSON, logs and metrics land in $OUT (at most 8 files come back from the device);
# the runs' folders stay in $WORK.
#   OUT=/tmp/gpu CIFAR10_JPEG=shared/cifar10_jpeg.npz experiments/gpu_check.sh
# The device machine has no network: bring the package's environment and data along (`carry`).
# Real images: the full train.npz is larger than what travels to the device (64 MiB), so bring the
# JPEG copy that `experiments/cifar10_jpeg.py pack` writes (about 57 MiB): it is unpacked into $WORK.
# Else $CIFAR10_DIR/train.npz when it exists, else synthetic data of the same shapes; data.txt and
# the JSON say which.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu}"
WORK="${WORK:-$(mktemp -d)}"
PY="${PY:-.venv/bin/python}"
CIFAR10_DIR="${CIFAR10_DIR:-../shared/data/cifar10}"
CIFAR10_JPEG="${CIFAR10_JPEG:-shared/cifar10_jpeg.npz}"
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
if [[ -f "$CIFAR10_JPEG" ]]; then
  "$PY" experiments/cifar10_jpeg.py unpack "$CIFAR10_JPEG" "$WORK/cifar10" > "$OUT/data.txt"
  CIFAR10_DIR="$WORK/cifar10"
  echo "data: CIFAR-10 from the JPEG copy $CIFAR10_JPEG (quality 85)" >> "$OUT/data.txt"
elif [[ -f "$CIFAR10_DIR/train.npz" ]]; then
  echo "data: CIFAR-10 npz from $CIFAR10_DIR" > "$OUT/data.txt"
else
  echo "data: synthetic (no $CIFAR10_JPEG, no $CIFAR10_DIR/train.npz)" > "$OUT/data.txt"
fi
for settings in off on; do
  "$PY" experiments/bench.py --parts P4 --device cuda --client-gpus 0.25 --images 50000 --rounds 4 \
    --gpu-settings "$settings" --data-dir "$CIFAR10_DIR" --out "$WORK/bench_$settings" > "$WORK/p4_$settings.log" 2>&1
  cp "$WORK/bench_$settings/bench.json" "$OUT/p4_settings_$settings.json"
done
data=(--set dataset.name=synthetic --set dataset.synthetic_train_size=50000)
if [[ -f "$CIFAR10_DIR/train.npz" ]]; then
  data=(--set dataset.source=npz --set "dataset.path=$CIFAR10_DIR")
fi
timeout "${KD_SECONDS:-240}" "$PY" -m fedmpq_flwr.main --full-experiment --only fedmpq_kd_seed0 \
  --results-dir "$WORK/kd" --set federation.device=cuda --set federation.client_gpus=0.25 "${data[@]}" \
  > "$OUT/kd.log" 2>&1 || echo "fedmpq_kd run stopped after ${KD_SECONDS:-240} s (rounds so far in kd_metrics.jsonl)"
cp "$WORK/kd/fedmpq_kd_seed0/metrics.jsonl" "$OUT/kd_metrics.jsonl"
tail -n 40 "$WORK/p4_off.log" "$WORK/p4_on.log" > "$OUT/p4.log"
