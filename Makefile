# tenantpool developer commands (DESIGN section 2). `make test` is what CI runs.
# `make bench` and `make loadtest` come with the benchmark and load-test work.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The interpreter the venv is made from: 3.11 when present, else the default python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PIP_FLAGS := --disable-pip-version-check --no-input --quiet

.PHONY: help run test lint clean

help:
	@echo "make run    local PostgreSQL + migrations + demo tenants + gunicorn (Ctrl-C stops all)"
	@echo "make test   lint, then the whole pytest suite (PYTEST_ARGS=... passes options)"
	@echo "make lint   ruff check, ruff format --check, mypy, hadolint docker/Dockerfile"
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
	$(PY) -m app.devserver

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/hadolint docker/Dockerfile

# Stops a cluster left running in var/pg first, so no server outlives its directory.
clean:
	@if [ -x $(PY) ] && [ -f var/pg/postmaster.pid ]; then $(PY) -m app.devcluster stop var/pg; fi
	rm -rf var $(VENV)
