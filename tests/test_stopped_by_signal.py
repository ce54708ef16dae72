"""Stopped by a signal: nothing captured in the last seconds is lost, the exit is unchanged.

Real servers and scripts in child processes, their posthog client at its defaults (a 5 s
``flush_interval``): each fails 2, 1, 0.5 and 0 s before ``SIGTERM`` (what Kubernetes,
Docker and systemd send), in one run, and every event must arrive, with the exit status
the same process has without posthog-errors (``EXPECTED_STATUS``; run this file with
``POSTHOG_ERRORS_BASELINE=1`` to check those statuses without the library: then only the
statuses are asserted). Each child has a faulthandler watchdog and a bounded wait: a hang
fails with every thread's stack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from posthog_errors.capture_server import CaptureServer
from tests.redis_server import redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HANG_AFTER = 40  # seconds before a child dumps its threads and exits
BASELINE = os.environ.get("POSTHOG_ERRORS_BASELINE") == "1"
# Failures this long before the signal: the gaps between them, then the signal at once.
GAPS = (1.0, 0.5, 0.5)
NAMES = ("2s", "1s", "0.5s", "0s")

PRELUDE = f"""
import faulthandler, os, sys
faulthandler.dump_traceback_later({HANG_AFTER}, exit=True)
import posthog, posthog_errors
client = posthog.Posthog("phc_test", host=os.environ["CAPTURE_URL"], max_retries=0)
if os.environ.get("POSTHOG_ERRORS_BASELINE") != "1":
    posthog_errors.install(client)
"""

FASTAPI_APP = """
from fastapi import FastAPI

app = FastAPI()

@app.get("/ok")
async def ok():
    return {"ok": True}

@app.get("/fail/{name}")
async def fail(name: str):
    raise RuntimeError(f"failed {name} before the signal")

if os.environ.get("ASGI_MIDDLEWARE") == "1":
    from posthog_errors.middleware import ASGIMiddleware
    app.add_middleware(ASGIMiddleware)
"""

FLASK_APP = """
from flask import Flask

app = Flask(__name__)

@app.get("/ok")
def ok():
    return "ok"

@app.get("/fail/<name>")
def fail(name):
    raise RuntimeError(f"failed {name} before the signal")
"""

CELERY_APP = """
from celery import Celery

app = Celery("celery_app", broker=os.environ["BROKER_URL"])
app.conf.update(
    result_backend=os.environ["BROKER_URL"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)

@app.task
def fail(name):
    raise RuntimeError(f"failed {name} before the signal")
"""

CELERY_PRODUCER = f"""
import faulthandler, sys, time
faulthandler.dump_traceback_later({HANG_AFTER}, exit=True)
from celery_app import fail
for name, gap in zip({NAMES!r}, {GAPS!r} + (0,)):
    fail.delay(name).get(timeout=20, propagate=False)
    time.sleep(gap)
print("done", flush=True)
"""

SCRIPT = f"""
import logging, time
# SETUP
print("ready", flush=True)
for name, gap in zip({NAMES!r}, {GAPS!r} + (0,)):
    try:
        raise RuntimeError(f"failed {{name}} before the signal")
    except RuntimeError:
        logging.getLogger("app").exception("job failed")
    time.sleep(gap)
print("signal me", flush=True)
time.sleep(60)
"""

OWN_HANDLER = """
import signal
def on_term(signum, frame):
    print("own handler ran", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
"""

# Measured with POSTHOG_ERRORS_BASELINE=1: how each ends without posthog-errors.
EXPECTED_STATUS = {
    "uvicorn": -signal.SIGTERM,  # uvicorn re-raises the signal after its graceful shutdown
    "uvicorn --workers 2": 0,
    "gunicorn sync": 0,
    "gunicorn gevent": 0,
    "gunicorn uvicorn worker": 0,
    "script": -signal.SIGTERM,
    "script with its own handler": 3,
    "celery worker": 0,
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(tmp_path: Path, capture_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env["PYTHONFAULTHANDLER"] = "1"
    env["CAPTURE_URL"] = capture_url
    env.update(extra)
    return env


class Child:
    """A child process, its output in a file; ``stop`` signals it and waits, bounded."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
        self.log_path = tmp_path / "child.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def wait_for_line(self, line: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never printed {line!r}:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(HANG_AFTER)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not end on {signal.Signals(signum).name}:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _wait_until_serving(child: Child, base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if _get(f"{base}/ok") == 200:
                return
        except OSError:
            pass
        if child.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the server never answered:\n{child.log()}")
        time.sleep(0.05)


def _fail_then_stop(child: Child, base: str) -> int:
    """A failing request 2, 1, 0.5 and 0 s before SIGTERM."""
    for name, gap in zip(NAMES, (*GAPS, 0.0), strict=True):
        assert _get(f"{base}/fail/{name}") == 500, child.log()
        time.sleep(gap)
    return child.stop()


def _assert_outcome(server: CaptureServer, scenario: str, status: int, child: Child) -> None:
    assert status == EXPECTED_STATUS[scenario], f"exit status {status}:\n{child.log()}"
    if BASELINE:
        return
    expected = sorted(f"failed {name} before the signal" for name in NAMES)
    try:
        events = server.wait_for_events(len(NAMES), timeout=5)
    except Exception:
        events = server.exception_events()
    values = sorted(e["properties"]["$exception_list"][0]["value"] for e in events)
    assert values == expected, f"{values!r}\n{child.log()}"


SERVERS = {
    "uvicorn": (FASTAPI_APP, ["uvicorn", "app:app"], {}),
    "uvicorn --workers 2": (
        FASTAPI_APP,
        ["uvicorn", "app:app", "--workers", "2"],
        {"ASGI_MIDDLEWARE": "1"},
    ),
    "gunicorn sync": (FLASK_APP, ["gunicorn", "app:app", "-w", "2"], {}),
    "gunicorn gevent": (FLASK_APP, ["gunicorn", "app:app", "-k", "gevent"], {}),
    "gunicorn uvicorn worker": (
        FASTAPI_APP,
        ["gunicorn", "app:app", "-k", "uvicorn.workers.UvicornWorker"],
        {},
    ),
}


@pytest.mark.parametrize("scenario", list(SERVERS))
def test_a_server_stopped_by_sigterm_delivers_its_last_failures(
    scenario: str, capture_server: CaptureServer, tmp_path: Path, children: list[Child]
) -> None:
    app, command, extra = SERVERS[scenario]
    (tmp_path / "app.py").write_text(PRELUDE + textwrap.dedent(app))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    if command[0] == "uvicorn":
        args = [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        args = [*command, "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10"]
    child = Child(
        [str(BIN / args[0]), *args[1:]], tmp_path, _env(tmp_path, capture_server.url, **extra)
    )
    children.append(child)
    _wait_until_serving(child, base)
    status = _fail_then_stop(child, base)
    _assert_outcome(capture_server, scenario, status, child)


@pytest.mark.parametrize(
    ("scenario", "setup"),
    [("script", ""), ("script with its own handler", OWN_HANDLER)],
)
def test_a_script_stopped_by_sigterm_delivers_its_last_failures(
    scenario: str,
    setup: str,
    capture_server: CaptureServer,
    tmp_path: Path,
    children: list[Child],
) -> None:
    (tmp_path / "job.py").write_text(PRELUDE + SCRIPT.replace("# SETUP", setup))
    child = Child([sys.executable, "job.py"], tmp_path, _env(tmp_path, capture_server.url))
    children.append(child)
    child.wait_for_line("signal me")
    status = child.stop()
    _assert_outcome(capture_server, scenario, status, child)
    if setup:
        assert "own handler ran" in child.log()


def test_a_celery_worker_warm_shutdown_delivers_its_last_failures(
    capture_server: CaptureServer,
    tmp_path: Path,
    children: list[Child],
    redis_url: str,  # noqa: F811
) -> None:
    (tmp_path / "celery_app.py").write_text(PRELUDE + textwrap.dedent(CELERY_APP))
    (tmp_path / "producer.py").write_text(textwrap.dedent(CELERY_PRODUCER))
    env = _env(tmp_path, capture_server.url, BROKER_URL=redis_url.rsplit("/", 1)[0] + "/5")
    worker = Child(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        tmp_path,
        env,
    )  # fmt: skip
    children.append(worker)
    produced = subprocess.run(
        [sys.executable, "producer.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_AFTER + 10,
    )
    assert produced.stdout.strip() == "done", f"{produced.stderr[-3000:]}\n{worker.log()}"
    status = worker.stop()
    _assert_outcome(capture_server, "celery worker", status, worker)
