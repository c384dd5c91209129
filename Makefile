# Quick start: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all install sysdeps test unit lint demo bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[converter,dev]'
	touch $(STAMP)

install: $(STAMP)

sysdeps:
	sh .ci/sysdeps

lint: install
	$(PY) -m ruff check edge_agent converter deploy tests bench
	$(PY) -m mypy edge_agent converter deploy bench

test: install sysdeps lint
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

demo: install sysdeps
	$(PY) -m deploy.demo

bench: install sysdeps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-out
