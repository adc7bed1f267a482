# SmartSpec developer commands. `make help` lists them.
# Everything runs in a project virtualenv (.venv) built from pyproject.toml + constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv lint typecheck contracts crds verify testbin images unit test demo cluster-up cluster-down clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev,kind]'
	touch $(STAMP)

venv: $(STAMP) ## create or refresh the virtualenv

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict with the pydantic plugin
	$(BIN)/mypy

contracts: $(STAMP) ## import-linter: pure layers stay free of I/O libraries
	$(BIN)/lint-imports

crds: $(STAMP) ## regenerate crds/ and deploy/ (and the chart's copies) from the code
	$(BIN)/smartspec crds
	$(BIN)/smartspec manifests
	rm -f charts/smartspec/files/crds/*.yaml charts/smartspec/files/deploy/*.yaml
	cp crds/*.yaml charts/smartspec/files/crds/
	cp deploy/*.yaml charts/smartspec/files/deploy/

verify: lint typecheck contracts $(STAMP) ## every static check, and crds/ and deploy/ are current
	$(BIN)/smartspec crds --check
	$(BIN)/smartspec manifests --check

testbin: ## build (or reuse) etcd, Kubernetes, helm, SeaweedFS, cosign and the real node's tools under ~/.cache
	tools/build-testbin.sh
	tools/build-helm.sh
	tools/build-seaweedfs.sh
	tools/build-cosign.sh
	tools/build-node.sh

images: ## build the operator, generator and tester images (buildah, docker or podman)
	tools/build-images.sh

unit: $(STAMP) ## unit tests only (no cluster)
	$(BIN)/pytest tests/unit

test: verify testbin ## static checks, then every test (unit + real control plane)
	$(BIN)/pytest

demo: $(STAMP) testbin ## the example through the whole pipeline (on cluster-up's real node where it can run)
	$(BIN)/python tools/demo.py

cluster-up: $(STAMP) testbin ## control plane, real node, S3, images, chart by helm; prints KUBECONFIG=
	$(BIN)/python tools/cluster.py up

cluster-down: $(STAMP) ## stop cluster-up's cluster and restore the host
	$(BIN)/python tools/cluster.py down

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
