#!/usr/bin/env bash
# FedPQ (fixed-precision quantized FedAvg) of the main experiment: variation `fedpq` of
# configs/full_experiment.yaml (budgets [2,2,3,3,4,4,5,5,6,6], every layer at the budget), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedpq.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedpq --results-dir "${RESULTS_DIR:-results/full}" "$@"
