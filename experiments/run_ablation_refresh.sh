#!/usr/bin/env bash
# Ablation of FedMPQ-KD: the teacher refreshed every round (main, the global model just received) against
# every 5 rounds (the global model of rounds 0, 5, 10, ..., kept on each node in between).
# Runner file: configs/ablations/refresh.yaml. The ablation scripts share one results directory, so the
# main-setting runs (`kd_main`) they all contain are trained once.
# Results go to $RESULTS_DIR (results/ablations); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_ablation_refresh.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --config configs/ablations/refresh.yaml --results-dir "${RESULTS_DIR:-results/ablations}" "$@"
