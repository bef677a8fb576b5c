#!/usr/bin/env bash
# q-FFL / q-FedAvg of the main experiment: variation `qffl` of configs/full_experiment.yaml
# (q = 1, L = 0.01/lr), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_qffl.sh --set qffl.q=5
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only qffl --results-dir "${RESULTS_DIR:-results/full}" "$@"
