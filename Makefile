# fedmpq-flwr: `make smoke` and `make test` each set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULTS ?= results
CIFAR10_DIR ?= ../shared/data/cifar10
# Use a local CIFAR-10 copy (train.npz/test.npz) when there is one; otherwise the hub. The rule lives in
# experiments/lib.sh, which the experiment scripts share.
DATA_OVERRIDES = $(shell CIFAR10_DIR='$(CIFAR10_DIR)' bash -c '. experiments/lib.sh && data_overrides')
# Runs in flight at once (the runner's --jobs): `make full JOBS=4`, `make smoke JOBS=2` (one at a
# time echoes every run's output; with N > 1 the console shows one progress line per round).
# `make quick` takes 2 unless JOBS is given (1 on a 1-core machine): one run per core of a 2-core
# machine, each overlapping its Flower/Ray start-up and server-side evaluation with the other's
# client training (0.66x the wall time of one at a time, docs/measurements.md).
JOBS ?= 1
CORES := $(shell nproc 2>/dev/null || echo 1)
QUICK_JOBS := $(if $(filter command line environment,$(origin JOBS)),$(JOBS),$(if $(filter 1,$(CORES)),1,2))

.PHONY: install smoke quick study full lint test clean

# Reinstall when pyproject.toml changed since the last install (a stale venv).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

smoke: $(STAMP)
	$(PY) -m fedmpq_flwr.main --smoke-test --results-dir $(RESULTS)/smoke --jobs $(JOBS)

quick: $(STAMP)
	$(PY) -m fedmpq_flwr.main --config configs/quick.yaml --results-dir $(RESULTS)/quick --jobs $(QUICK_JOBS) $(DATA_OVERRIDES)

# The reference study (configs/study.yaml, docs/study/README.md): 21 runs, several hours on 2 cores; stopped,
# it resumes where it was (finished runs are skipped, stopped ones resume from their last finished round).
study: $(STAMP)
	$(PY) -m fedmpq_flwr.main --config configs/study.yaml --results-dir $(RESULTS)/study --jobs $(QUICK_JOBS) $(DATA_OVERRIDES)

full: $(STAMP)
	$(PY) -m fedmpq_flwr.main --full-experiment --results-dir $(RESULTS)/full --jobs $(JOBS) $(DATA_OVERRIDES)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(RESULTS) .pytest_cache
