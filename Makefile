# fedmpq-flwr: `make smoke` and `make test` each set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULTS ?= results
CIFAR10_DIR ?= ../shared/data/cifar10
# Use a local CIFAR-10 copy (train.npz/test.npz) when there is one; otherwise the hub.
DATA_OVERRIDES := $(if $(wildcard $(CIFAR10_DIR)/train.npz),--set dataset.source=npz --set dataset.path=$(CIFAR10_DIR))

.PHONY: install smoke full lint test clean

# Reinstall when pyproject.toml changed since the last install (a stale venv).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

smoke: $(STAMP)
	$(PY) -m fedmpq_flwr.main --smoke-test --results-dir $(RESULTS)/smoke

full: $(STAMP)
	$(PY) -m fedmpq_flwr.main --full-experiment --results-dir $(RESULTS)/full $(DATA_OVERRIDES)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(RESULTS) .pytest_cache
