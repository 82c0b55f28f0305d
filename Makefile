# z2m: every target sets up what it needs on a bare machine (venv, Debian
# packages, Go-built control-plane binaries cached outside the repo).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KUBECONFIG_LOCAL := .cluster/kubeconfig
PYTEST_ARGS ?=

.PHONY: all venv deps binaries cluster-up cluster-down crd docs lint test demo demo-auto bench clean

all: test

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[app,dev]'
	touch $@

venv: $(VENV)/.stamp

deps:
	hack/deps.sh

binaries:
	hack/build-binaries.sh >/dev/null

cluster-up: binaries
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

## Regenerate the CRD and the stage docs from the models and the catalog.
crd: venv
	$(BIN)/z2m crd > crds/scalingstage.yaml
	cp crds/scalingstage.yaml manifests/00-crd.yaml
	cp crds/scalingstage.yaml charts/z2m/crds/scalingstage.yaml
	$(BIN)/z2m docs > docs/stages.md

lint: venv
	$(BIN)/ruff check operator sample_app tests bench
	$(BIN)/ruff format --check operator sample_app tests bench
	$(BIN)/mypy

## The whole suite: unit tests, real services, and the local control plane.
test: venv deps binaries
	$(MAKE) lint
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest ran no tests: that is a failure" >&2; exit 1; fi; \
	  exit $$rc

## Stage 1 of examples/shop.yaml on the local control plane, end to end.
demo: venv deps cluster-up
	hack/demo.sh

## Auto-promotion end to end: load rises, the stage climbs; load stops, it comes back down.
demo-auto: venv deps binaries
	hack/demo-auto.sh

bench: venv deps binaries
	$(BIN)/python bench/operator_bench.py
	$(BIN)/python bench/sample_app_bench.py

clean: cluster-down
	rm -rf $(VENV) .cluster
