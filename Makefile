# Leaseline: two commands for a newcomer (`make run`, `make test`); the rest are building blocks.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(VENV)
export PYTHONPATH := $(CURDIR)

.PHONY: help install run test test-unit test-integration lint contracts docs bench infra-up infra-down infra-status infra-logs outbox dlq clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	@touch $@

install: $(VENV)/.synced ## install the pinned Python dependencies into .venv (uv, from uv.lock)

infra-up: install ## start local Kafka and FerretDB (downloaded and built on first use, then cached)
	$(PY) -m deploy.localinfra up --profile run

infra-down: ## stop local Kafka and FerretDB
	$(PYTHON) -m deploy.localinfra down --profile run

infra-status: ## are local Kafka and FerretDB running?
	$(PYTHON) -m deploy.localinfra status --profile run

infra-logs: ## tail the local infrastructure's logs
	$(PYTHON) -m deploy.localinfra logs --profile run

run: install ## the whole system with its infrastructure, until Ctrl-C
	$(PY) -m deploy.run

lint: install ## architecture rules: services never import each other
	$(VENV)/bin/lint-imports

contracts: install ## fail when docs/events (JSON Schemas, AsyncAPI) is out of date
	$(PY) -m shared.events.documents --check

docs: install ## regenerate docs/events from the catalogue
	$(PY) -m shared.events.documents

test-unit: install ## unit tests only (no infrastructure)
	$(PY) -m pytest tests/unit -q

test-integration: install ## integration tests against a real broker and store
	$(PY) -m deploy.localinfra provision --profile test
	$(PY) -m pytest tests/integration -q

test: install lint contracts ## install everything, then every test (unit and integration, real infrastructure)
	$(PY) -m deploy.localinfra provision --profile test
	$(PY) -m pytest -q -p no:cacheprovider

bench: install ## benchmarks on this machine; results in bench/results/
	$(PY) -m deploy.localinfra provision --profile test
	$(PY) -m bench

dlq: install ## list parked messages of a topic: make dlq TOPIC=customer.registered
	$(PY) -m shared.messaging.dead_letters list $(TOPIC)

clean: ## remove the virtualenvs and local data (keeps the download cache)
	rm -rf $(VENV) $(TOOLS) .local/run .local/test
