#!/usr/bin/env bash
# Full-precision FedAvg of the main experiment: variation `fedavg` of configs/full_experiment.yaml, all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedavg.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedavg --results-dir "${RESULTS_DIR:-results/full}" "$@"
