# llmflow: `make demo` runs the system end to end, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install kafka demo test lint typecheck unit integration fmt schemas bench bench-quick bench-http bench-call-path chaos soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "llmflow needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install llmflow with its dev tools

kafka: $(STAMP) ## fetch Apache Kafka from Maven Central (once)
	$(BIN)/llmflow kafka fetch

demo: install kafka ## run the end-to-end demo (local Kafka + model simulator unless configured)
	$(BIN)/python -m dev.demo

test: install kafka lint typecheck ## lint, type-check, unit and integration tests on a real broker
	$(BIN)/pytest -q -rs -p no:cacheprovider

lint: $(STAMP) ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

unit: $(STAMP) ## unit tests only (no broker)
	$(BIN)/pytest -q tests/unit

integration: install kafka ## integration tests only (real broker)
	$(BIN)/pytest -q tests/integration

fmt: $(STAMP) ## format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP) ## regenerate the JSON Schema files in schemas/json
	$(BIN)/llmflow schemas export

bench: install kafka ## every benchmark scenario: report in results/<time>, table and chart in docs/bench
	$(BIN)/python -m dev.bench.run --publish docs/bench

bench-quick: install kafka ## the same scenarios, short runs (a smoke check, not for figures)
	$(BIN)/python -m dev.bench.run --quick --out results/quick

bench-http: $(STAMP) ## httpx vs aiohttp transport at 50 and 200 calls in flight
	$(BIN)/python -m dev.bench.http_transport

bench-call-path: $(STAMP) ## CPU per model call: the SDK's typed path vs the lean one, 200 in flight
	$(BIN)/python -m dev.bench.call_path

chaos: install kafka ## reliability suite: kill workers, broker, model while events flow (< 25 min)
	$(BIN)/python -m dev.chaos --publish

soak: install kafka ## memory over 200,000 events on one worker (about 30 min; not part of chaos)
	$(BIN)/python -m dev.chaos --only soak --soak-events 200000

clean: ## remove the virtualenv, local state, fetched jars and build leftovers
	rm -rf $(VENV) .llmflow deploy/kafka/lib build *.egg-info
