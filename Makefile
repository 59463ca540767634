# Two commands do all set-up on a fresh machine:
#   make demo   -> install, then run Stile on the embedded default (SQLite-free core, bundled upstreams)
#   make test   -> install (Python + Node tooling), then lint, type-check and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: install tools demo test lint typecheck pytest bench-smoke clean

$(BIN)/stile: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(BIN)/stile

install: $(BIN)/stile

tools:
	bash tools/install-node.sh

demo: install
	$(BIN)/stile demo --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install tools
	STILE_REQUIRE_CONFORMANCE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10

test: lint typecheck pytest

clean:
	rm -rf $(VENV) tools/node22 tools/conf-legacy tools/conf-modern tools/everything
