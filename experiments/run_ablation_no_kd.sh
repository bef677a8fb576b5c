#!/usr/bin/env bash
# Ablation of FedMPQ-KD "without KD": kd.alpha 0, which is FedMPQ exactly (same seed, same numbers;
# a test checks it) but still logs the student-teacher agreement, against the main method.
# Runner file: configs/ablations/no_kd.yaml. The ablation scripts share one results directory, so the
# main-setting runs (`kd_main`) they all contain are trained once.
# Results go to $RESULTS_DIR (results/ablations); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_ablation_no_kd.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --config configs/ablations/no_kd.yaml --results-dir "${RESULTS_DIR:-results/ablations}" "$@"
