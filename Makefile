# tenantpool developer commands (DESIGN section 2). `make test` is what CI runs.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The interpreter the venv is made from: 3.11 when present, else the default python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PIP_FLAGS := --disable-pip-version-check --no-input --quiet

.PHONY: help run test soak lint bench bench-registry loadtest clean

help:
	@echo "make run    local PostgreSQL + migrations + demo tenants + gunicorn (Ctrl-C stops all)"
	@echo "make test   lint, then the whole pytest suite (PYTEST_ARGS=... passes options)"
	@echo "make soak   the longer fault and fuzz runs (pytest -m soak), left out of make test"
	@echo "make lint   ruff check, ruff format --check, mypy, hadolint docker/Dockerfile"
	@echo "make bench  service vs bare baseline under wrk; writes docs/benchmarks.md (~30 min)"
	@echo "make bench-registry  pytest-benchmark of the engine registry's hot and cold paths"
	@echo "make loadtest  locust against a serving \`make run\` (LOAD_HOST, LOAD_USERS, LOAD_TIME)"
	@echo "make clean  stop the local cluster, remove var/ and .venv/"

# Reinstalled whenever a requirements file changes; one (dev) set serves run, test and lint.
$(STAMP): requirements.txt requirements-dev.txt
	@if [ -z "$(PYTHON)" ]; then echo "Python 3.11 not found: install python3.11" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than 3.11: install python3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements-dev.txt
	@touch $@

run: $(STAMP)
	$(PY) -m app.dev.server

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The last -m wins over pyproject's `-m "not soak"`.
soak: $(STAMP)
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/hadolint docker/Dockerfile

# Not part of `make test`: minutes of load on its own cluster (tests/bench/run.py).
bench: $(STAMP)
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }; \
		else echo "make bench needs wrk: install it (apt-get install wrk) and run again" >&2; exit 1; fi; }
	$(PY) -m tests.bench.run $(BENCH_ARGS)

# Seconds, on the test cluster: pytest-benchmark of the registry (tests/bench/test_registry_bench.py).
bench-registry: $(STAMP)
	$(PY) -m pytest tests/bench/test_registry_bench.py --benchmark-enable --benchmark-only $(PYTEST_ARGS)

# Locust stays out of the test set (it brings gevent and a pytest plugin).
LOAD_STAMP := $(VENV)/.installed-load
LOAD_HOST ?= http://127.0.0.1:8080
LOAD_USERS ?= 20
LOAD_TIME ?= 60s
$(LOAD_STAMP): requirements-load.txt $(STAMP)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements-load.txt
	@touch $@

loadtest: $(LOAD_STAMP)
	@test -f "$${TENANTS_FILE:-var/tenants.json}" || { \
		echo "no $${TENANTS_FILE:-var/tenants.json}: start \`make run\` first (it seeds tenants)" >&2; exit 1; }
	@mkdir -p var/loadtest
	$(VENV)/bin/locust -f tests/load/locustfile.py --headless --host $(LOAD_HOST) \
		--users $(LOAD_USERS) --spawn-rate 5 --run-time $(LOAD_TIME) \
		--csv var/loadtest/locust --html var/loadtest/report.html --only-summary

# Stops a cluster left running in var/pg first, so no server outlives its directory.
clean:
	@if [ -x $(PY) ] && [ -f var/pg/postmaster.pid ]; then $(PY) -m app.dev.cluster stop var/pg; fi
	rm -rf var $(VENV)
