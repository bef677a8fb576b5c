#!/usr/bin/env bash
# Ablation of FedMPQ-KD: the distillation weight per round (kd.schedule): constant alpha 0.5 (main), a ramp
# from 0 over 10 rounds, and a linear decay over the 50 rounds; T 2, frozen teacher.
# Runner file: configs/ablations/kd_schedule.yaml. The ablation scripts share one results directory, so the
# main-setting runs (`kd_main`) they all contain are trained once.
# Results go to $RESULTS_DIR (results/ablations); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_ablation_kd_schedule.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --config configs/ablations/kd_schedule.yaml --results-dir "${RESULTS_DIR:-results/ablations}" "$@"
