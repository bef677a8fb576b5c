#!/usr/bin/env bash
# Ablation of FedMPQ-KD: a per-sample weight on the KL term (kd.gate): none (main), the teacher's top-1
# correctness, and the teacher's probability of the label; alpha 0.5, T 2, frozen teacher.
# Runner file: configs/ablations/kd_gate.yaml. The ablation scripts share one results directory, so the
# main-setting runs (`kd_main`) they all contain are trained once.
# Results go to $RESULTS_DIR (results/ablations); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_ablation_kd_gate.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --config configs/ablations/kd_gate.yaml --results-dir "${RESULTS_DIR:-results/ablations}" "$@"
