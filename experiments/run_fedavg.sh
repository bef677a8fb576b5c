#!/usr/bin/env bash
# Full-precision FedAvg (the upper bound) of the main experiment: variation `fedavg` of
# configs/full_experiment.yaml, all its seeds. Extra arguments go to the runner, e.g.
#   RESULTS_DIR=results/full experiments/run_fedavg.sh --set dataset.source=npz --set dataset.path=../shared/data/cifar10
set -euo pipefail
cd "$(dirname "$0")/.."
make --quiet install
exec .venv/bin/python -m fedmpq_flwr.main --full-experiment --results-dir "${RESULTS_DIR:-results/full}" --only fedavg "$@"
