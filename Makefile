# Two entry points for a fresh machine with nothing but Python 3.11+:
#   make run   - create .venv with guardian and its runtime dependencies only, run it against its simulator
#   make test  - the same plus the test tools (and, as root, the Debian packages the tests use); every gate
# Both install exact versions with hashes from requirements/*.txt; `make lock` refreshes those files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:8787
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
# guardian itself: built from the checkout with the setuptools of the lock (no unhashed build environment).
INSTALL_GUARDIAN := $(PIP) install --no-deps --no-build-isolation --editable .

.PHONY: run test lint typecheck unit tools lock clean
.DEFAULT_GOAL := test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime only. A venv that already has the test tools keeps them (it is a superset).
$(VENV)/.run: requirements/run.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps --requirement requirements/run.txt
	$(INSTALL_GUARDIAN)
	$(PIP) check
	touch $@

$(VENV)/.test: requirements/test.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps --requirement requirements/test.txt
	$(INSTALL_GUARDIAN)
	$(PIP) check
	touch $@ $(VENV)/.run

run: $(VENV)/.run
	$(BIN)/guardian run --sim --listen $(LISTEN)

# Debian packages the tests run for real: a Prometheus server and promtool (metrics and alert tests),
# Alertmanager and amtool (its config is checked; a fired alert goes through it to a webhook),
# systemd-analyze (the unit's tests; it installs and works without systemd as PID 1), chromium (the status
# page's tests drive it with Playwright: no browser is downloaded), and podman with runc, catatonit (compose's
# `init: true`) and debootstrap (tests/test_container.py builds the image over a debootstrapped Debian and runs
# it; runc and debootstrap are in /usr/sbin).
tools:
	@missing=""; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing=" prometheus"; \
	command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing="$$missing runc"; \
	command -v catatonit >/dev/null || missing="$$missing catatonit"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "the tests need:$$missing (sudo apt-get install$$missing)" >&2; exit 1; \
	  fi; }

lint: $(VENV)/.test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(VENV)/.test
	$(BIN)/mypy guardian

# Two workers (pytest-xdist), each taking whole test files: most of the suite's time is waiting (switch
# timers, real subprocesses, podman), so two run in about half the time on two cores. In collection order
# (not xdist's largest-file-first): tests/conftest.py puts the files that take minutes first.
unit: $(VENV)/.test tools
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --cov --cov-report=term $(PYTEST_ARGS)

test: lint typecheck unit

# Re-resolve both lock files from pyproject.toml (and requirements/build.in) for every platform, Python 3.11,
# keeping every version that still fits; `make lock UPGRADE=1` takes the newest versions allowed instead.
# The test lock is resolved first and constrains the runtime lock (a test tool may pin a transitive runtime
# dependency, as ccxt does): `make run` installs exactly the versions the tests ran.
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: $(VENV)/.test
	$(LOCK) pyproject.toml requirements/build.in --extra test --output-file requirements/test.txt
	$(LOCK) pyproject.toml requirements/build.in --constraint requirements/test.txt \
	  --output-file requirements/run.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
