#!/usr/bin/env bash
# Ablation of FedMPQ-KD: distillation temperature T in {1, 2 (main), 4}; alpha 0.5, frozen teacher.
# Settings: the main experiment's (configs/full_experiment.yaml).
# Runner file: configs/ablations/temperature.yaml. The ablation scripts share one results directory, so the
# main-setting runs (`kd_main`) they all contain are trained once.
# Results go to $RESULTS_DIR (results/ablations); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_ablation_temperature.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --config configs/ablations/temperature.yaml --results-dir "${RESULTS_DIR:-results/ablations}" "$@"
