# sandbox — make help lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
SANDBOX := $(PY) -m sandbox
PYTEST := $(PY) -m pytest
export SANDBOX_POLICY_DIR ?= $(CURDIR)/policies

.PHONY: policy-check policy-audit policy-diff policy-schema help setup engine venv base-image testkit-image images lock-images lint test test-unit \
        test-integration test-tools test-node test-security demo bench scan clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

engine: ## make sure a Docker engine answers (installs docker.io + runsc and starts dockerd if needed)
	@bash scripts/engine.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## the Python virtualenv with the package and dev tools

setup: engine venv base-image ## engine + virtualenv + base image: everything a run needs

base-image: engine ## sandbox/base from Debian's packages (debootstrap, docker import)
	@bash scripts/build-image.sh base -q >/dev/null

testkit-image: base-image ## sandbox/testkit, the coordinator's test image
	@bash scripts/build-image.sh testkit -q >/dev/null

lint: venv ## ruff format --check, ruff, mypy --strict, committed policy schema up to date
	$(VENV)/bin/ruff format --check sandbox tests
	$(VENV)/bin/ruff check sandbox tests
	$(VENV)/bin/mypy
	$(PYTEST) -q tests/unit/review/test_schema.py

policy-check: venv ## baseline rules on policies/ (FORMAT=sarif for code scanning)
	$(SANDBOX) policy check --format $(or $(FORMAT),text)

policy-audit: venv ## reviewer report of every tool (Markdown)
	$(SANDBOX) policy audit

policy-diff: venv ## security-relevant policy changes against BASE (default main); exit 1 on loosening
	$(SANDBOX) policy diff git:$(or $(BASE),main) policies/

policy-schema: venv ## regenerate docs/policy.schema.json from the Policy model
	$(SANDBOX) policy schema > docs/policy.schema.json

test-unit: venv ## unit tier (no Docker)
	$(PYTEST) tests/unit -q

test-integration: venv testkit-image ## integration tier (real engine)
	$(PYTEST) tests/integration -q

test: setup lint testkit-image ## every tier: lint, unit, integration, tools, node
	$(PYTEST) tests/unit tests/integration -q

clean: ## remove build leftovers (not images)
	rm -rf images/.build .pytest_cache .mypy_cache .ruff_cache
