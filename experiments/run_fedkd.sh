#!/usr/bin/env bash
# FedKD of the main experiment: variation `fedkd` of configs/full_experiment.yaml (ResNet-20 mentee,
# private ResNet-32 mentor per client, SVD-compressed uplink with energy 0.95 -> 0.98), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedkd.sh --set train.num_rounds=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedkd --results-dir "${RESULTS_DIR:-results/full}" "$@"
