# sandbox — `make help` lists the targets. The two a newcomer needs: `make demo`, `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
# The interpreter the virtualenv is built on: the distribution's Python 3.11 where there is one.
# Debian builds it with PGO and LTO; a plain source build (pyenv's default) starts `sandbox run`
# ≈35 ms slower and streams ≈20 % slower per frame (docs/performance.md).
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null && echo /usr/bin/python3.11 || echo python3)
PY := $(VENV)/bin/python
SANDBOX := $(PY) -m sandbox
PYTEST := $(PY) -m pytest
ADVISORY_DB ?= ../shared/data/pypa-advisory-db
TOOLS := pyairbyte_ingest dbt_transform dagster_orchestrate eda_analyze
export SANDBOX_POLICY_DIR ?= $(CURDIR)/policies

.PHONY: requirements-lock help engine venv setup base-image testkit-image tool-images images lock-images scan lint \
        test test-unit test-integration test-tools test-security test-node bench-node demo bench clean \
        policy-check policy-audit policy-diff policy-schema

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

engine: ## make sure a Docker engine answers (installs docker.io + runsc and starts dockerd if needed)
	@bash scripts/engine.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed ## the Python virtualenv with the package and dev tools

setup: engine venv base-image ## engine + virtualenv + base image: everything a run needs

base-image: engine venv ## sandbox/base from Debian's packages (debootstrap, docker import)
	$(SANDBOX) images build base

testkit-image: base-image ## sandbox/testkit, the coordinator's test image
	$(SANDBOX) images build testkit

tool-images: base-image ## the four data-tool images (cached layers make rebuilds quick)
	$(SANDBOX) images build $(TOOLS)

images: engine venv ## build base, testkit and every tool image
	$(SANDBOX) images build

lock-images: venv ## pin the local image ids into policies/ (prints the diff to review)
	$(SANDBOX) images lock

scan: venv ## lint, config, filesystem, drift, advisories, SBOMs -> out/images-scan
	$(SANDBOX) images scan --advisory-db $(ADVISORY_DB) --fail-on $(or $(FAIL_ON),high)

requirements-lock: venv ## regenerate the tool images' lock files (hashes) with uv
	@for f in images/*/*.in; do \
	  $(VENV)/bin/uv pip compile -q --generate-hashes --python-version 3.11 --python-platform linux "$$f" -o "$${f%.in}.lock"; \
	done

lint: venv ## ruff format --check, ruff, mypy --strict, committed policy schema up to date
	$(VENV)/bin/ruff format --check sandbox tests bench examples images
	$(VENV)/bin/ruff check sandbox tests bench examples images
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

test-unit: venv ## unit tier (no Docker, seconds)
	$(PYTEST) tests/unit -q

test-integration: venv testkit-image ## integration tier: the real engine, the CLI as a subprocess
	$(PYTEST) tests/integration -q

test-tools: venv tool-images ## the four data tools on the sample data
	$(PYTEST) tests/tools -q

test-security: venv testkit-image ## attack suite under runc and runsc, fault tests
	$(PYTEST) tests/security -q

test-node: venv testkit-image ## Node.js client tests (node --test) against the real CLI and engine
	cd clients/node && node --test

bench-node: venv testkit-image ## p50 per trivial run: runTool vs session vs bare docker SDK
	cd clients/node && node bench/trivial.js 20

test: setup lint images ## every tier: lint, unit, integration, tools, security, node
	$(PYTEST) tests/unit tests/integration tests/tools tests/security -q
	$(MAKE) --no-print-directory test-node
	$(SANDBOX) policy check

demo: setup tool-images ## the four-tool pipeline through `sandbox run`, frames as they stream
	$(SANDBOX) images lock
	bash scripts/demo.sh

bench: venv testkit-image ## performance benchmarks (docs/performance.md)
	@# Cached bytecode even where PYTHONDONTWRITEBYTECODE is set: a one-shot CLI pays compiles.
	$(PY) -m compileall -q sandbox >/dev/null
	$(PY) bench/run.py

clean: ## remove build leftovers and demo outputs (not images)
	rm -rf images/.build .pytest_cache .mypy_cache .ruff_cache out
	find demo-output -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
