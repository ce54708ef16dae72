"""The unit suite on Python 3.10 to 3.13, each in both posthog capture modes (v0, v1).

Run it (after `make test`, which makes .venv) as:
  .venv/bin/nox                          every Python this machine has
  .venv/bin/nox -s tests-3.12            one Python
  .venv/bin/nox -- -k payload -x         arguments after `--` go to pytest
  TEST_CAPTURE_MODES=v1 .venv/bin/nox    one capture mode
"""

# `make test-all` runs lint, mypy and the docs build once and then this; `.ci/run` runs
# `make test-all`. One session per Python: its virtualenv (.nox/tests-3-XX) is made and
# installed once, then pytest runs in it once per capture mode, with POSTHOG_CAPTURE_MODE set
# (the posthog client reads it, so do the tests and the child processes they start); a mode
# that fails does not stop the other from running.
#
# Interpreters are found at run time, never written down: first `python3.X` on PATH if it
# runs and says it is 3.X (a pyenv shim for a version that is not selected does not), else
# pyenv's newest installed 3.X.N. A Python the machine lacks is skipped with a message; with
# CI_REQUIRE_ALL_PYTHONS=1 (set by .ci/run) every session fails at once instead, so a CI
# machine that lost an interpreter cannot pass on fewer Pythons.

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox
from nox.command import CommandFailed

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
CAPTURE_MODES = ("v0", "v1")

# Never fetch an interpreter from the internet: the ones found below, or a skip.
nox.options.download_python = "never"

# The setuptools backend's "Editable installation" notice, which pip 25+ shows for every
# editable install; any other warning or error still prints.
QUIET_EDITABLE = {"PYTHONWARNINGS": "ignore:Editable installation"}

_PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"


def _probe(executable: str, version: str) -> str | None:
    """The path `executable` reports for itself (sys.executable) if it runs as Python
    `version`, else None."""
    try:
        result = subprocess.run(
            [executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or lines[0] != version:
        return None
    return lines[1]


def _pyenv(*args: str) -> str:
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return ""
    try:
        result = subprocess.run(
            [pyenv, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def find_python(version: str) -> tuple[str | None, str]:
    """(interpreter path or None, where it came from or where we looked)."""
    on_path = shutil.which(f"python{version}")
    if on_path is not None:
        found = _probe(on_path, version)
        if found is not None:
            return found, f"python{version} on PATH"
    if shutil.which("pyenv") is None:
        return None, f"no working python{version} on PATH, and no pyenv"
    pattern = re.compile(rf"^{re.escape(version)}\.(\d+)$")
    patches = [
        (int(match.group(1)), line)
        for line in _pyenv("versions", "--bare").splitlines()
        if (match := pattern.match(line.strip()))
    ]
    if not patches:
        return None, f"no working python{version} on PATH, and pyenv has no {version}.N"
    pyenv_version = max(patches)[1]
    prefix = _pyenv("prefix", pyenv_version)
    if not prefix and (root := _pyenv("root")):
        prefix = str(Path(root, "versions", pyenv_version))
    found = _probe(str(Path(prefix, "bin", "python")), version) if prefix else None
    if found is None:
        return None, f"pyenv's {pyenv_version} does not run (prefix {prefix or '?'})"
    return found, f"pyenv {pyenv_version}"


def _capture_modes(session: nox.Session) -> list[str]:
    wanted = os.environ.get("TEST_CAPTURE_MODES", "").replace(",", " ").split()
    unknown = sorted(set(wanted) - set(CAPTURE_MODES))
    if unknown:
        session.error(f"TEST_CAPTURE_MODES: unknown {unknown}, the modes are {CAPTURE_MODES}")
    return [mode for mode in CAPTURE_MODES if not wanted or mode in wanted]


REQUIRE_ALL = os.environ.get("CI_REQUIRE_ALL_PYTHONS", "") not in ("", "0")
FOUND = {version: find_python(version) for version in PYTHONS}
MISSING = [version for version, (path, _) in FOUND.items() if path is None]


def _make_session(version: str) -> None:
    interpreter, origin = FOUND[version]

    @nox.session(
        name=f"tests-{version}",
        # An absolute path: nox (python-discovery) takes it as it is. False: no virtualenv,
        # for a session that only says why it does not run.
        python=interpreter if interpreter is not None else False,
        download_python="never",
        tags=["tests"],
    )
    def tests(session: nox.Session) -> None:
        if REQUIRE_ALL and MISSING:
            session.error(
                "CI_REQUIRE_ALL_PYTHONS=1 but Python "
                + ", ".join(f"{v} is missing ({FOUND[v][1]})" for v in MISSING)
            )
        if interpreter is None:
            session.skip(f"Python {version} not found: {origin}")
        modes = _capture_modes(session)
        session.log(f"Python {version}: {interpreter} ({origin})")
        session.install("-e", ".[dev]", env=QUIET_EDITABLE)
        failed = []
        for mode in modes:
            session.log(f"pytest on Python {version} with POSTHOG_CAPTURE_MODE={mode}")
            try:
                session.run(
                    "python", "-m", "pytest", *session.posargs, env={"POSTHOG_CAPTURE_MODE": mode}
                )
            except CommandFailed:
                failed.append(mode)
        if failed:
            message = f"pytest failed on Python {version} in mode(s) {', '.join(failed)}"
            session.warn(message)
            raise CommandFailed(message)


for _version in PYTHONS:
    _make_session(_version)
