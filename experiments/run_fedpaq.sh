#!/usr/bin/env bash
# FedPAQ of the main experiment: variation `fedpaq` of configs/full_experiment.yaml (4-bit QSGD of
# the model update, buckets of 512), all seeds.
# Results go to $RESULTS_DIR (results/full); extra arguments go to the runner, e.g.
#   RESULTS_DIR=/tmp/r experiments/run_fedpaq.sh --set paq.bits=2
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_runner --full-experiment --only fedpaq --results-dir "${RESULTS_DIR:-results/full}" "$@"
