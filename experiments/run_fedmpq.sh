#!/usr/bin/env bash
# FedMPQ of the main experiment: variation `fedmpq` of configs/full_experiment.yaml (budgets
# [2,2,3,3,4,4,5,5,6,6]), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedmpq.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedmpq --results-dir "${RESULTS_DIR:-results/full}" "$@"
