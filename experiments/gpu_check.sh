#!/usr/bin/env bash
# GPU check, one call on a machine with a GPU: the P4 part of experiments/bench/throughput.py (FedMPQ-KD seconds
# per round at client_gpus 0.25 and the projected 50-round run; runs per hour with --jobs 1 against --jobs 3),
# twice, with the GPU settings off and on (train.channels_last and train.amp bf16, `--gpu-settings`), then the
# main experiment's FedMPQ-KD run (seed 0) cut off after KD_SECONDS. Only JSON, logs and metrics land in $OUT, a
# handful of files, so that little has to be copied back from the machine; the runs' folders stay in $WORK.
#   OUT=/tmp/gpu CIFAR10_JPEG=shared/cifar10_jpeg.npz experiments/gpu_check.sh
# Without network on the GPU machine, bring the package's environment ($PY) and the data along. The full
# train.npz is larger than a copy of the working tree may carry (64 MiB), so bring the JPEG copy that
# `experiments/cifar10_jpeg.py pack` writes (about 57 MiB): it is unpacked into $WORK. Else real CIFAR-10 comes
# from $CIFAR10_DIR/train.npz when it exists (experiments/lib.sh), else synthetic data of the same shapes stands
# in; data.txt and the JSON say which.
# TINY=1 checks the script itself on any machine: CPU, 500 synthetic images, the tiny CNN for one short run per
# --jobs setting with the GPU settings off (bf16 autocast is CUDA only), a one-round FedMPQ-KD run on 100 test
# images (ResNet-20: --set reaches every run of the file, and FedKD's mentee must be a ResNet).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib.sh
OUT="${OUT:-results/gpu}"
WORK="${WORK:-$(mktemp -d)}"
PY="${PY:-.venv/bin/python}"
CIFAR10_DIR="${CIFAR10_DIR:-../shared/data/cifar10}"
CIFAR10_JPEG="${CIFAR10_JPEG:-shared/cifar10_jpeg.npz}"
KD_SECONDS="${KD_SECONDS:-240}"
mkdir -p "$OUT" "$WORK"
if [[ -n "${TINY:-}" ]]; then
  echo "data: synthetic (TINY)" > "$OUT/data.txt"
  settings=(off)
  device=(--device cpu --client-gpus 0)
  bench=(--model tiny_cnn --images 500 --rounds 2 --p4-runs 1 --p4-jobs 2 --data-dir "$WORK/synthetic")
  kd=(--set federation.device=cpu --set federation.client_gpus=0 --set train.num_rounds=1
    --set dataset.name=synthetic --set dataset.synthetic_train_size=500 --set dataset.synthetic_test_size=100)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
  if [[ -f "$CIFAR10_JPEG" ]]; then
    "$PY" experiments/cifar10_jpeg.py unpack "$CIFAR10_JPEG" "$WORK/cifar10" > "$OUT/data.txt"
    CIFAR10_DIR="$WORK/cifar10"
    echo "data: CIFAR-10 from the JPEG copy $CIFAR10_JPEG" >> "$OUT/data.txt"
  elif [[ -f "$CIFAR10_DIR/train.npz" ]]; then
    echo "data: CIFAR-10 npz from $CIFAR10_DIR" > "$OUT/data.txt"
  else
    echo "data: synthetic (no $CIFAR10_JPEG, no $CIFAR10_DIR/train.npz)" > "$OUT/data.txt"
  fi
  mapfile -t kd < <(data_overrides)
  if ((${#kd[@]} == 0)); then kd=(--set dataset.name=synthetic --set dataset.synthetic_train_size=50000); fi
  kd+=(--set federation.device=cuda --set federation.client_gpus=0.25)
  settings=(off on)
  device=(--device cuda --client-gpus 0.25)
  bench=(--images 50000 --rounds 4 --data-dir "$CIFAR10_DIR")
fi
for setting in "${settings[@]}"; do
  "$PY" experiments/bench/throughput.py --parts P4 "${device[@]}" "${bench[@]}" --gpu-settings "$setting" \
    --out "$WORK/bench_$setting" > "$WORK/p4_$setting.log" 2>&1 || { tail -n 40 "$WORK/p4_$setting.log"; exit 1; }
  cp "$WORK/bench_$setting/bench.json" "$OUT/p4_settings_$setting.json"
done
for setting in "${settings[@]}"; do tail -n 40 "$WORK/p4_$setting.log"; done > "$OUT/p4.log"
timeout "$KD_SECONDS" "$PY" -m fedmpq_flwr.main --full-experiment --only fedmpq_kd_seed0 --results-dir "$WORK/kd" \
  "${kd[@]}" > "$OUT/kd.log" 2>&1 \
  || echo "fedmpq_kd run stopped after $KD_SECONDS s (rounds so far in kd_metrics.jsonl)"
cp "$WORK/kd/fedmpq_kd_seed0/metrics.jsonl" "$OUT/kd_metrics.jsonl"
