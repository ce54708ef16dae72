# Two commands for a newcomer: `make demo` runs the main job, `make test` runs the whole check.
# Both create (or reuse) a local virtualenv in .venv and install what they need into it.
# `make test-all` is what CI runs: the whole check, with the unit suite on every Python the
# machine has (3.10 to 3.13) in both posthog capture modes (noxfile.py).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Written last, only when the whole bootstrap succeeded, with the interpreter .venv was made
# from. No stamp (a bootstrap that failed halfway) or another interpreter: .venv is rebuilt
# from scratch. A newer pyproject.toml alone: reinstalled in place.
STAMP  := $(VENV)/.installed

# The interpreter $(PYTHON) names now: its real path and version (a pyenv shim resolves to the
# version it runs). So `make PYTHON=python3.12 test` after a 3.11 run does run on 3.12.
PYTHON_ID := $(shell $(PYTHON) -c 'import os, sys; \
	print(os.path.realpath(sys.executable), sys.version.split()[0])' 2>/dev/null)
ifneq ($(PYTHON_ID),$(shell cat $(STAMP) 2>/dev/null))
$(STAMP): FORCE
endif

# Options for nox in `make test-all`, e.g. NOXFLAGS="-s tests-3.12 -- -k payload".
NOXFLAGS ?=

.PHONY: demo test test-all lint typecheck unit matrix docs bench clean FORCE

demo: $(STAMP)
	$(BIN)/python -m posthog_errors demo

test: $(STAMP) lint typecheck unit docs

# The README's `make test` itself (lint, mypy, pytest and the docs on $(PYTHON)), then the
# matrix: CI (.ci/run) runs the newcomer's command and more, never something else.
test-all: test matrix

lint: $(STAMP)
	$(BIN)/ruff check posthog_errors tests benchmarks noxfile.py
	$(BIN)/ruff format --check posthog_errors tests benchmarks noxfile.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict posthog_errors

unit: $(STAMP)
	$(BIN)/python -m pytest

# pytest on each of Python 3.10 to 3.13, with POSTHOG_CAPTURE_MODE=v0 and then v1 (noxfile.py).
matrix: $(STAMP)
	$(BIN)/nox $(NOXFLAGS)

# The documentation site, into site/ (git-ignored); --strict turns every warning (a broken
# link or anchor, a reference the code no longer has) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_capture.py --write-doc
	$(BIN)/python benchmarks/bench_logging.py --write-doc

# PYTHONWARNINGS hides only setuptools' "Editable installation" notice, which pip 25+ prints
# on every editable install; other warnings and every error still show.
$(STAMP): pyproject.toml
	@test -n '$(PYTHON_ID)' || { echo "make: PYTHON=$(PYTHON) does not run here: name a Python 3.10 to 3.13 that does (with pyenv, e.g. PYTHON=\$$(pyenv prefix 3.12)/bin/python)" >&2; exit 1; }
	@if [ "$$(cat $@ 2>/dev/null)" = '$(PYTHON_ID)' ]; then rm -f $@; \
	else echo "(re)creating $(VENV) with $(PYTHON_ID)"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e ".[dev]"
	echo '$(PYTHON_ID)' > $@

FORCE:

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache site
