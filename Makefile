# Two commands for a newcomer: `make demo` runs the main job, `make test` runs the whole check.
# Both create (or reuse) a local virtualenv in .venv and install what they need into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit docs bench clean

demo: $(STAMP)
	$(BIN)/python -m posthog_errors demo

test: $(STAMP) lint typecheck unit docs

lint: $(STAMP)
	$(BIN)/ruff check posthog_errors tests benchmarks
	$(BIN)/ruff format --check posthog_errors tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict posthog_errors

unit: $(STAMP)
	$(BIN)/python -m pytest

# The documentation site, into site/ (git-ignored); --strict turns every warning (a broken
# link or anchor, a reference the code no longer has) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_capture.py --write-doc
	$(BIN)/python benchmarks/bench_logging.py --write-doc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
