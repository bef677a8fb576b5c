#!/usr/bin/env bash
# FedGKD of the main experiment: variation `fedgkd` of configs/full_experiment.yaml (full precision,
# gamma 0.1, T 1, the average of the last 5 global models as the teacher), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedgkd.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedgkd --results-dir "${RESULTS_DIR:-results/full}" "$@"
