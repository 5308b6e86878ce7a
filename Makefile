# Bootstrap .venv idempotently (re-installs when pyproject.toml changes), then run the target.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint bench clean k8s

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,dev,bench]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/safeguard demo

# Integration tests mostly wait on brokers, replicas and timers: three workers on two cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 3 --dist load tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

# Regenerate the policies ConfigMap from policies/ (a test fails when it is stale).
k8s: $(STAMP)
	$(BIN)/safeguard --log-level warning policies configmap policies > k8s/base/policies.yaml

lint: $(STAMP)
	$(BIN)/ruff check streams tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
