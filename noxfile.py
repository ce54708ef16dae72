"""The unit suite on every supported Python, 3.10 to 3.15, with pinned dependencies.

Run it (after `make test`, which makes .venv) as:
  .venv/bin/nox                          every Python (CI: all of them, or it fails)
  .venv/bin/nox -s tests-3.12            one Python
  .venv/bin/nox -- -k payload -x         arguments after `--` go to pytest
  .venv/bin/nox -l                       the sessions, with the mode and pins of each

`make test-all` runs lint, mypy, the docs build and the suite on .venv's Python once
(`make test`), then this; `.ci/run` runs `make test-all`.
"""

# What each session runs. Every session installs the project from a lock in requirements/
# (pip constraints), so a fresh clone today and in a month tests the same versions:
#
#   tests-3.10   requirements/lowest.txt: the oldest releases the project claims (posthog,
#                sentry-sdk 2.x, structlog, loguru, ...), on the oldest Python
#   tests-3.11.. requirements/lock.txt: the locked releases (sentry-sdk 3.x, ...)
#
# The suite runs in full in one posthog capture mode (POSTHOG_CAPTURE_MODE, which the client,
# the tests and their child processes read), alternating from one Python to the next, and the
# tests marked `capture_protocol` (those whose subject is the wire protocol itself) run again
# in the other mode. So both modes meet every Python, and each test meets both modes, at
# about 1.1 runs of the suite per Python instead of 2. TEST_CAPTURE_MODES=v0,v1 runs the full
# suite in both modes, as CI once did.
#
# Interpreters are found at run time, never written down: first `python3.X` on PATH if it
# runs and says it is 3.X (a pyenv shim for a version that is not selected does not), else
# pyenv's newest installed 3.X.N, else (3.14 and 3.15, which pyenv here cannot download)
# Debian's packages in a root that `.ci/debian-python` builds once and reuses (it needs root).
# A Python the machine lacks is skipped with a message; with CI_REQUIRE_ALL_PYTHONS=1 (set by
# .ci/run) every session fails at once instead, so CI cannot pass on fewer Pythons.

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import nox
from nox.command import CommandFailed

HERE = Path(__file__).resolve().parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14", "3.15")
CAPTURE_MODES = ("v0", "v1")
LOCK = "requirements/lock.txt"
LOWEST = "requirements/lowest.txt"
# The Python that runs the oldest claimed releases instead of the lock.
LOWEST_PYTHON = "3.10"
# Pythons that may come from the Debian root (.ci/debian-python) when the machine lacks them.
DEBIAN_PYTHONS = ("3.14", "3.15")
DEBIAN_SCRIPT = HERE / ".ci" / "debian-python"
# pytest's workers in each run: the suite waits on child processes and sockets more than it
# computes, so two workers on a 2-core machine nearly halve its time.
PYTEST_WORKERS = os.environ.get("PYTEST_WORKERS", "2")

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


def _debian_usable() -> bool:
    return os.name == "posix" and os.geteuid() == 0 and DEBIAN_SCRIPT.exists()


def _modes(version: str) -> tuple[str, str | None]:
    """(the mode the whole suite runs in, the mode the `capture_protocol` tests run in
    again, or None), alternating by Python so each mode meets every other Python."""
    wanted = os.environ.get("TEST_CAPTURE_MODES", "").replace(",", " ").split()
    unknown = sorted(set(wanted) - set(CAPTURE_MODES))
    if unknown:
        raise SystemExit(f"TEST_CAPTURE_MODES: unknown {unknown}, the modes are {CAPTURE_MODES}")
    minor = int(version.split(".")[1])
    primary, secondary = ("v1", "v0") if minor % 2 == 0 else ("v0", "v1")
    if len(wanted) == 1:
        return wanted[0], None
    return primary, secondary


def _pytest_runs(version: str, posargs: list[str]) -> list[tuple[str, list[str]]]:
    """Each pytest run of a session: (capture mode, pytest arguments)."""
    full_both = sorted(os.environ.get("TEST_CAPTURE_MODES", "").replace(",", " ").split())
    # loadgroup: a module whose tests share one expensive fixture keeps them on one worker.
    workers = (
        ["-n", PYTEST_WORKERS, "--dist", "loadgroup"] if PYTEST_WORKERS not in ("", "0") else []
    )
    if full_both == list(CAPTURE_MODES):
        return [(mode, [*workers, *posargs]) for mode in CAPTURE_MODES]
    primary, secondary = _modes(version)
    runs = [(primary, [*workers, *posargs])]
    if secondary is not None:
        runs.append((secondary, [*workers, "-m", "capture_protocol", *posargs]))
    return runs


def _pins(version: str) -> str:
    return LOWEST if version == LOWEST_PYTHON else LOCK


REQUIRE_ALL = os.environ.get("CI_REQUIRE_ALL_PYTHONS", "") not in ("", "0")
# The Python `make test` has just run the suite on, with the lock and the same modes
# (`make test-all` sets it): its session would repeat that run, and says so instead.
COVERED = os.environ.get("MATRIX_COVERED", "").strip()
FOUND = {version: find_python(version) for version in PYTHONS}
for _version in DEBIAN_PYTHONS:
    if FOUND[_version][0] is None and _debian_usable():
        FOUND[_version] = ("debian", "Debian's package, in the root .ci/debian-python makes")
MISSING = [version for version, (path, _) in FOUND.items() if path is None]


def _run_pytest(session: nox.Session, version: str, python: list[str]) -> None:
    failed = []
    for mode, arguments in _pytest_runs(version, list(session.posargs)):
        which = "the capture_protocol tests" if "capture_protocol" in arguments else "the suite"
        session.log(f"{which} on Python {version} with POSTHOG_CAPTURE_MODE={mode}")
        try:
            session.run(
                *python,
                "-m",
                "pytest",
                *arguments,
                env={"POSTHOG_CAPTURE_MODE": mode},
                external=True,
                # 5: no test selected, when the arguments name files without any
                # capture_protocol test (the full run in the first mode still counts).
                success_codes=[0, 5] if "capture_protocol" in arguments else [0],
            )
        except CommandFailed:
            failed.append(mode)
    if failed:
        message = f"pytest failed on Python {version} in mode(s) {', '.join(failed)}"
        session.warn(message)
        raise CommandFailed(message)


def _debian_session(session: nox.Session, version: str) -> None:
    """A virtualenv inside the Debian root (in .nox/, which the root sees at the same path),
    installed from the pins and reused while they and pyproject.toml are unchanged."""
    script = str(DEBIAN_SCRIPT)
    venv = f".nox/debian-{version}"
    pins = _pins(version)
    digest = hashlib.sha256(
        (HERE / pins).read_bytes() + (HERE / "pyproject.toml").read_bytes()
    ).hexdigest()
    stamp = HERE / venv / ".installed"
    session.run(script, "ensure", external=True)
    if not stamp.exists() or stamp.read_text().strip() != digest:
        shutil.rmtree(HERE / venv, ignore_errors=True)
        session.run(script, "run", f"python{version}", "-m", "venv", venv, external=True)
        session.run(
            script,
            "run",
            f"{venv}/bin/python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            pins,
            "-e",
            ".[dev]",
            external=True,
            env=QUIET_EDITABLE,
        )
        stamp.write_text(digest + "\n")
    _run_pytest(session, version, [script, "run", f"{venv}/bin/python"])


def _make_session(version: str) -> None:
    interpreter, origin = FOUND[version]
    debian = interpreter == "debian"
    primary, secondary = _modes(version)
    described = f"Python {version}, pins {_pins(version)}, suite in {primary}" + (
        f", capture_protocol tests in {secondary} too" if secondary else ""
    )

    @nox.session(
        name=f"tests-{version}",
        # An absolute path: nox (python-discovery) takes it as it is. False: no virtualenv
        # (a session that only says why it does not run, or one in the Debian root).
        python=interpreter if interpreter is not None and not debian else False,
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
        if version == COVERED and _pins(version) == LOCK and _modes(version)[0] == "v0":
            session.skip(f"Python {version}: make test ran the suite here with the same pins")
        session.log(f"{described}: {interpreter} ({origin})")
        if debian:
            _debian_session(session, version)
            return
        session.install("-c", _pins(version), "-e", ".[dev]", env=QUIET_EDITABLE)
        _run_pytest(session, version, ["python"])

    tests.__doc__ = described


for _version in PYTHONS:
    _make_session(_version)
