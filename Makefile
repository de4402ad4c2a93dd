# Two entry points for a fresh machine with nothing but Python 3.11+:
#   make run   - create .venv, install guardian, run it against its built-in exchange simulator
#   make test  - create .venv, install guardian with its test tools, run every gate and the suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:8787

.PHONY: run test lint typecheck unit tools clean
.DEFAULT_GOAL := test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/guardian run --sim --listen $(LISTEN)

# A real Prometheus scrapes the daemon in the tests; Debian's package brings prometheus and promtool.
# The deployment tests run systemd-analyze (verify, security) on the unit: Debian's systemd package. It
# installs and works without systemd running as PID 1 (a container).
tools:
	@missing=""; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing=" prometheus"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "the tests need:$$missing (sudo apt-get install$$missing)" >&2; exit 1; \
	  fi; }

lint: $(BIN)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy guardian

unit: $(BIN)/.installed tools
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
