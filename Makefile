# Two commands for a newcomer: `make demo` runs the main job, `make test` runs the whole check.
# Both create (or reuse) a local virtualenv in .venv and install what they need into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

demo: $(STAMP)
	$(BIN)/python -m posthog_errors demo

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check posthog_errors tests benchmarks
	$(BIN)/ruff format --check posthog_errors tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict posthog_errors

unit: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_capture.py --write-doc
	$(BIN)/python benchmarks/bench_logging.py --write-doc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
