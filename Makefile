# Quick start: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all install sysdeps test unit lint demo bench mutate pi-check device-check clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[converter,dev]'
	touch $(STAMP)

install: $(STAMP)

# Mutation testing of the modules that guard data and security (docs/testing.md); slow, so not
# part of `test`. Writes docs/mutation-report.md and fails when a module scores under 85 %.
# MUTANTS='edge_agent.messaging.outbox.*' re-runs only those mutants and keeps the other results.
MUTANTS ?=
mutate: install
	@if [ -z "$(MUTANTS)" ]; then rm -rf mutants; fi
	@start=$$(date +%s); \
	$(VENV)/bin/mutmut run --max-children 2 $(MUTANTS) && \
	$(PY) -m tools.mutation_report --seconds $$(( $$(date +%s) - start )) --out docs/mutation-report.md \
		--mutmut $(VENV)/bin/mutmut --fail-under 85

sysdeps:
	sh .ci/sysdeps

lint: install
	$(PY) -m ruff check edge_agent converter deploy tests bench tools
	$(PY) -m mypy edge_agent converter deploy bench tools

# pytest-xdist workers for `test` (two on the 2-core CI machine; `make test WORKERS=1` runs in one
# process). --dist loadscope keeps a module's tests, and its module fixtures, on one worker.
WORKERS ?= 2

test: install sysdeps lint
	$(PY) -m pytest -q -n $(WORKERS) --dist loadscope

unit: install
	$(PY) -m pytest -q tests/unit

demo: install sysdeps
	$(PY) -m deploy.demo

bench: install sysdeps
	$(PY) -m bench.run

# The device install on an emulated Raspberry Pi 4 and 5 (Debian 12 arm64 under qemu-user),
# every frame's result compared with the host's (docs/raspberry-pi.md). Needs root for the
# chroot; the rootfs, wheels and bundle are cached ($EDGE_PI_CACHE, else /var/cache/edge-pi-check).
pi-check: install sysdeps
	$(PY) -m tools.pi_check

# The agent as a real systemd service in a Debian 12 box (systemd-nspawn, systemd as PID 1),
# installed with edge-deploy install-agent --wheelhouse and driven from the host only
# (docs/device-check.md). Needs root; the rootfs and bundles are cached ($EDGE_DEVICE_CACHE,
# else /var/cache/edge-device-check).
device-check: install sysdeps
	$(PY) -m tools.device_check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-out mutants
