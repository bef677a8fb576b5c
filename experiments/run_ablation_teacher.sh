#!/usr/bin/env bash
# Ablation of FedMPQ-KD: a frozen teacher (main) against one updated during local training as an exponential
# moving average (decay 0.99 per step) of the student's dequantized weights.
# Runner file: configs/ablations/teacher.yaml. The ablation scripts share one results directory, so the
# main-setting runs (`kd_main`) they all contain are trained once.
# Results go to $RESULTS_DIR (results/ablations); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_ablation_teacher.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --config configs/ablations/teacher.yaml --results-dir "${RESULTS_DIR:-results/ablations}" "$@"
