# z2m: every target sets up what it needs on a bare machine (venv, Debian
# packages, Go-built control-plane binaries cached outside the repo).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KUBECONFIG_LOCAL := .cluster/kubeconfig
PYTEST_ARGS ?=

.PHONY: all venv deps binaries cluster-up cluster-down kind-up kind-down images crd docs lint test demo demo-auto bench bench-real clean

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

## The real-pod cluster: kind (podman and a node image assembled here, or stock kind on Docker).
kind-up: binaries
	hack/kind.sh up

kind-down:
	hack/kind.sh down

## Build the operator, sample app, PostgreSQL, Redis, RabbitMQ and nginx images and load them into kind.
images: kind-up
	hack/images.sh build
	hack/images.sh load $${Z2M_KIND_CLUSTER:-z2m}

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

## examples/shop.yaml on real pods in kind: stage 1 answering HTTP, then a promotion to 3.
demo: venv deps images
	hack/demo.sh

## Auto-promotion end to end: load rises, the stage climbs; load stops, it comes back down.
demo-auto: venv deps binaries
	hack/demo-auto.sh

bench: venv deps binaries
	$(BIN)/python bench/operator_bench.py
	$(BIN)/python bench/sample_app_bench.py

## Stage changes on real pods (kind): the operator against kubectl apply of the same objects.
bench-real: venv deps images
	$(BIN)/python bench/real_pods_bench.py --kubeconfig .kind/kubeconfig-$${Z2M_KIND_CLUSTER:-z2m}

clean: cluster-down kind-down
	rm -rf $(VENV) .cluster .kind .pytest-kind
