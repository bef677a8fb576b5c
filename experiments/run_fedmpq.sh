#!/usr/bin/env bash
# FedMPQ of the main experiment: variation `fedmpq` of configs/full_experiment.yaml (budgets
# [2,2,3,3,4,4,5,5,6,6]), all its seeds. Extra arguments go to the runner, e.g.
#   RESULTS_DIR=results/full experiments/run_fedmpq.sh --set dataset.source=npz --set dataset.path=../shared/data/cifar10
set -euo pipefail
cd "$(dirname "$0")/.."
make --quiet install
exec .venv/bin/python -m fedmpq_flwr.main --full-experiment --results-dir "${RESULTS_DIR:-results/full}" --only fedmpq "$@"
