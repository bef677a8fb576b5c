#!/usr/bin/env bash
# FedMPQ-KD of the main experiment: variation `fedmpq_kd` of configs/full_experiment.yaml (alpha 0.5,
# T 2, frozen teacher refreshed every round, FedMPQ's budgets), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedmpq_kd.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedmpq_kd --results-dir "${RESULTS_DIR:-results/full}" "$@"
