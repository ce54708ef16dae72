# Two commands for a newcomer: `make demo` runs the main job, `make test` runs the whole check.
# Both create (or reuse) a local virtualenv in .venv and install what they need into it, at
# the versions pinned in requirements/lock.txt (so a fresh clone today and in a month tests
# the same releases). `make test-all` is what CI runs: the whole check, then the unit suite on
# every supported Python, 3.10 to 3.15 (noxfile.py). `make test-latest` meets the newest
# releases of everything on purpose; `make lock` moves the pins (README, "Dependencies").

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# pip constraints for every package the tests install: the lock, or (test-latest) a fresh one.
PINS   ?= requirements/lock.txt
# pytest's workers: the suite waits on child processes and sockets more than it computes.
PYTEST_WORKERS ?= 2
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

.PHONY: demo test test-all test-latest lint typecheck unit matrix docs bench lock lock-upgrade clean FORCE

demo: $(STAMP)
	$(BIN)/python -m posthog_errors demo

test: $(STAMP) lint typecheck unit docs

# The README's `make test` itself (lint, mypy, pytest and the docs on $(PYTHON)), then the
# matrix: CI (.ci/run) runs the newcomer's command and more, never something else. The
# matrix leaves out the Python `make test` just ran on the same pins (MATRIX_COVERED).
test-all: test
	$(MAKE) matrix MATRIX_COVERED="$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

lint: $(STAMP)
	$(BIN)/ruff check posthog_errors tests benchmarks noxfile.py requirements
	$(BIN)/ruff format --check posthog_errors tests benchmarks noxfile.py requirements

typecheck: $(STAMP)
	$(BIN)/mypy --strict posthog_errors

# The suite in posthog's capture mode v0, then the tests whose subject is the capture
# protocol (marked capture_protocol) again in v1.
unit: $(STAMP)
	POSTHOG_CAPTURE_MODE=v0 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup
	POSTHOG_CAPTURE_MODE=v1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q -m capture_protocol

# pytest on each of Python 3.10 to 3.15 (3.10 with the oldest claimed releases,
# requirements/lowest.txt), in both posthog capture modes (noxfile.py says how).
matrix: $(STAMP)
	MATRIX_COVERED="$(MATRIX_COVERED)" $(BIN)/nox $(NOXFLAGS)

# The documentation site, into site/ (git-ignored); --strict turns every warning (a broken
# link or anchor, a reference the code no longer has) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_capture.py --write-doc
	$(BIN)/python benchmarks/bench_logging.py --write-doc
	$(BIN)/python benchmarks/bench_logs.py --write-doc

# PYTHONWARNINGS hides only setuptools' "Editable installation" notice, which pip 25+ prints
# on every editable install; other warnings and every error still show.
$(STAMP): pyproject.toml $(PINS)
	@test -n '$(PYTHON_ID)' || { echo "make: PYTHON=$(PYTHON) does not run here: name a Python 3.10 to 3.15 that does (with pyenv, e.g. PYTHON=\$$(pyenv prefix 3.12)/bin/python)" >&2; exit 1; }
	@if [ "$$(cat $@ 2>/dev/null)" = '$(PYTHON_ID)' ]; then rm -f $@; \
	else echo "(re)creating $(VENV) with $(PYTHON_ID)"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -c $(PINS) -e ".[dev]"
	echo '$(PYTHON_ID)' > $@

# The locks (requirements/): lock.txt for every supported Python at once (uv's universal
# resolution), lowest.txt the oldest claimed releases (requirements/lowest.in) on 3.10; both
# leave out the releases in requirements/known-bad.in.
# `make lock` keeps every pin that still fits pyproject.toml; `make lock-upgrade` moves all of
# them to the newest releases. Review the diff, run `make test` (and `make test-all`), commit.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --quiet \
	--custom-compile-command "make lock"

lock: $(STAMP)
	$(UV_COMPILE) --universal --python-version 3.10 -c requirements/known-bad.in \
		-o requirements/lock.txt $(UV_FLAGS)
	$(UV_COMPILE) --python-version 3.10 -c requirements/known-bad.in -c requirements/lowest.in \
		-o requirements/lowest.txt

lock-upgrade:
	$(MAKE) lock UV_FLAGS=--upgrade

# The newest release of everything (but the known-bad releases, which the lock leaves out too:
# this is what `make lock-upgrade` would give), in .venv-latest, through `make test`'s checks:
# first a lock resolved afresh for this Python (.latest-lock.txt, git-ignored) and what moved
# against ours.
LATEST      := .venv-latest
LATEST_LOCK := .latest-lock.txt

test-latest: $(STAMP)
	$(UV_COMPILE) --upgrade --python-version "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
		-c requirements/known-bad.in -o $(LATEST_LOCK)
	@echo "== what the newest releases change against requirements/lock.txt (on this Python):"
	@$(BIN)/python requirements/compare.py requirements/lock.txt $(LATEST_LOCK)
	$(MAKE) VENV=$(LATEST) PINS=$(LATEST_LOCK) test

FORCE:

clean:
	rm -rf $(VENV) $(LATEST) $(LATEST_LOCK) .nox .pytest_cache .mypy_cache .ruff_cache site
