# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   - install, generate sample sources, run the crm_daily DAG through Airflow on DuckDB
#   make test   - install, run the whole test suite (a throwaway PostgreSQL server included)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ROOT := $(CURDIR)
LOCAL := $(ROOT)/.local
export WAREHOUSE_URL ?= duckdb:///$(LOCAL)/warehouse.duckdb
export CRMW_SOURCE_DIR ?= $(LOCAL)/sources

# Two years of 4,000 customers: enough ended campaigns (and controls) to validate the uplift model,
# and a second year of labels for the trained models; about 3 minutes.
DEMO_CUSTOMERS ?= 4000
DEMO_START ?= 2024-01-01
DEMO_DAYS ?= 730
DEMO_SEED ?= 7
DEMO_DATE := $(shell date -d "$(DEMO_START) + $(DEMO_DAYS) days - 1 day" +%F)

DBT_SOURCES := $(shell find dbt_project -path dbt_project/target -prune -o -path dbt_project/logs -prune -o -type f \( -name '*.sql' -o -name '*.yml' \) -print)
MANIFEST := dbt_project/target/manifest.json

.PHONY: demo test bench airflow install install-test manifest requirements clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; this project needs Python 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Stamps make a second run reuse the venv; they are redone only when the pins change.
$(VENV)/.runtime: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

# Cosmos renders the DAG from this manifest; a test fails when it no longer matches the models.
$(MANIFEST): $(VENV)/.runtime $(DBT_SOURCES)
	cd dbt_project && ../$(BIN)/dbt parse --quiet --profiles-dir . --project-dir .
	touch $@
manifest: $(MANIFEST)

demo: $(VENV)/.runtime $(MANIFEST)
	rm -rf "$(CRMW_SOURCE_DIR)"
	$(BIN)/crmw simulate --customers $(DEMO_CUSTOMERS) --start $(DEMO_START) --days $(DEMO_DAYS) --seed $(DEMO_SEED) --out "$(CRMW_SOURCE_DIR)"
	$(BIN)/crmw run --date $(DEMO_DATE)
	@echo
	@echo "Open the Airflow UI with 'make airflow' (http://localhost:8080; the login is printed there)."

airflow: $(VENV)/.runtime $(MANIFEST)
	$(BIN)/crmw airflow

# Three workers, each taking whole test files (a file's fixtures are built once) in collection order,
# the Airflow files first (tests/conftest.py). On two cores, two workers kept the CPU 170% busy (the
# rest: process start-ups, polls, waits on the engines); a third fills those gaps.
TEST_WORKERS ?= 3
test: $(VENV)/.test $(MANIFEST)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The end-to-end benchmark's quick tier (README "Speed"); e.g. make bench BENCH_ENGINE=postgres BENCH_RUNS=3.
BENCH_TIER ?= small
BENCH_ENGINE ?= duckdb
BENCH_RUNS ?= 1
bench: $(VENV)/.runtime
	$(BIN)/crmw bench --tier $(BENCH_TIER) --engine $(BENCH_ENGINE) --runs $(BENCH_RUNS)

# Recompile the pins from the direct dependencies in a scratch venv (needs the package index).
requirements:
	rm -rf .local/compile-venv && $(PYTHON) -m venv .local/compile-venv
	.local/compile-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Exact pins of the whole dependency tree, compiled by 'make requirements' from requirements.in"; \
	  echo "# (Python 3.11). Edit requirements.in, never this file."; \
	  .local/compile-venv/bin/pip freeze --exclude-editable; } > requirements.txt
	.local/compile-venv/bin/pip freeze --exclude-editable | sort > .local/runtime.freeze
	.local/compile-venv/bin/pip install --quiet -r requirements-test.in
	{ echo "# Exact pins of the test-only tree, compiled by 'make requirements' from requirements-test.in;"; \
	  echo "# installed on top of requirements.txt."; \
	  .local/compile-venv/bin/pip freeze --exclude-editable | sort | comm -13 .local/runtime.freeze -; } > requirements-test.txt
	rm -rf .local/compile-venv .local/runtime.freeze

clean:
	rm -rf .local dbt_project/target dbt_project/logs
