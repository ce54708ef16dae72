"""The copy-paste set-up of each integration page runs, and sends what the page promises.

Each page's main set-up block follows a ``<!-- setup: NAME -->`` marker (an HTML comment,
invisible on the site) right before its ```` ```python ```` fence. ``SETUPS`` says, for each
name, which page holds it, the few driver lines the test appends (a framework's test client
hitting a failing route, a log call, an RQ job run by a burst ``SimpleWorker``) and the
``$exception`` the capture server must receive. The page's markers and ``SETUPS`` must
agree: a marker the table does not know, or a name the page no longer marks, fails.

Every block runs as a program in a child process (``sys.executable -X faulthandler``, a
watchdog, a time limit) with the environment the block reads: ``POSTHOG_API_KEY`` and
``POSTHOG_HOST`` (the test's loopback capture server) and, for RQ, ``REDIS_URL`` (the module's
loopback Redis). A guard run before the block refuses any connection that is not to
127.0.0.1. The children inherit the suite's strict mode (``POSTHOG_ERRORS_STRICT``) and report
posthog-errors' recorded internal errors at exit; any fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from posthog_errors.capture_server import CaptureServer
from tests.conftest import API_KEY
from tests.redis_server import redis_url

__all__ = ["redis_url"]  # the module-scoped fixture, used by the rq set-up

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = ("context.md", "structlog.md", "loguru.md", "rq.md")
MARKER = re.compile(r"<!-- setup: (?P<name>[a-z0-9-]+) -->")
WATCHDOG_SECONDS = 20
TIMEOUT_SECONDS = 30
REFUSED = "docs setup refused a connection to"
HEALTH = "docs setup, posthog-errors at exit: "

# Run before the block: a watchdog that dumps every thread's stack and exits if the child
# hangs, no network but 127.0.0.1, and a report of posthog-errors' internal errors at exit.
GUARD = f"""
import atexit as _atexit
import faulthandler as _faulthandler
import socket as _socket
import sys as _sys

_faulthandler.dump_traceback_later({WATCHDOG_SECONDS}, exit=True)
_LOOPBACK = {{"127.0.0.1", "localhost", "::1", "testserver", None}}
_getaddrinfo = _socket.getaddrinfo
_connect = _socket.socket.connect


def _refuse(host):
    _sys.stderr.write("{REFUSED} %r\\n" % (host,))
    raise OSError("docs set-ups stay on 127.0.0.1, not %r" % (host,))


def _loopback_getaddrinfo(host, *args, **kwargs):
    if (host.decode() if isinstance(host, bytes) else host) not in _LOOPBACK:
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)


def _loopback_connect(self, address):
    if self.family in (_socket.AF_INET, _socket.AF_INET6) and address[0] not in _LOOPBACK:
        _refuse(address[0])
    return _connect(self, address)


_socket.getaddrinfo = _loopback_getaddrinfo
_socket.socket.connect = _loopback_connect


def _report_library_health():
    # Registered first, so it runs last: after the exit flushes.
    if "posthog_errors" in _sys.modules:
        import json
        from posthog_errors import _guard

        failures = [repr(error) for error in _guard.strict_failures()]
        _sys.stderr.write("{HEALTH}" + json.dumps(failures) + "\\n")


_atexit.register(_report_library_health)
# -- the page's block --
"""


# -- the pages' set-up blocks -----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: str
    name: str
    code: str
    line: int  # of the opening fence, 1-based


def read_setups(page: str) -> tuple[dict[str, Block], list[str]]:
    """The page's marked set-up blocks by name, and what is wrong with its markers."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    blocks: dict[str, Block] = {}
    problems: list[str] = []
    for index, line in enumerate(lines):
        marker = MARKER.fullmatch(line.strip())
        if marker is None:
            if "<!-- setup:" in line:
                problems.append(f"{page}:{index + 1}: a malformed setup marker: {line!r}")
            continue
        name = marker["name"]
        fence = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if fence != "```python":
            problems.append(f"{page}:{index + 1}: setup {name} is not followed by ```python")
            continue
        end = next((j for j in range(index + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{page}:{index + 2}: setup {name}'s block is never closed")
            continue
        if name in blocks:
            problems.append(f"{page}:{index + 1}: a second setup named {name}")
            continue
        code = textwrap.dedent("\n".join(lines[index + 2 : end])) + "\n"
        blocks[name] = Block(page, name, code, index + 2)
    return blocks, problems


# -- what each set-up must do -----------------------------------------------------------------

HEADERS = {"X-POSTHOG-DISTINCT-ID": "user-42", "X-POSTHOG-SESSION-ID": "session-1"}

FASTAPI_DRIVER = f"""
from fastapi.testclient import TestClient


@app.get("/orders/{{order_id}}")
def get_order(order_id: int):
    raise RuntimeError(f"order {{order_id}} failed")


response = TestClient(app, raise_server_exceptions=False).get("/orders/7", headers={HEADERS!r})
assert response.status_code == 500, response.status_code
"""

FLASK_DRIVER = f"""
@app.route("/orders/<int:order_id>")
def get_order(order_id):
    raise RuntimeError(f"order {{order_id}} failed")


response = app.test_client().get("/orders/7", headers={HEADERS!r})
assert response.status_code == 500, response.status_code
"""

DJANGO_DRIVER = f"""
import django
from django.conf import settings
from django.test import Client
from django.urls import path


def get_order(request, order_id):
    raise RuntimeError(f"order {{order_id}} failed")


urlpatterns = [path("orders/<int:order_id>", get_order)]
settings.configure(
    DEBUG=False,
    SECRET_KEY="docs-setup",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=MIDDLEWARE,
    INSTALLED_APPS=[],
    DATABASES={{}},
)
django.setup()
response = Client(raise_request_exception=False).get("/orders/7", headers={HEADERS!r})
assert response.status_code == 500, response.status_code
"""

STRUCTLOG_DRIVER = """
structlog.contextvars.bind_contextvars(distinct_id="user-42")
try:
    raise ValueError("card declined")
except ValueError:
    log.exception("checkout failed", order_id=7)
"""

LOGURU_DRIVER = """
with logger.contextualize(distinct_id="user-42", session_id="session-1"):
    try:
        raise ValueError("card declined")
    except ValueError:
        logger.bind(order_id=7).exception("checkout failed")
"""

RQ_DRIVER = """
import json

from redis import Redis
from rq import Queue, SimpleWorker

redis = Redis.from_url(REDIS_URL)
redis.flushdb()
queue = Queue(QUEUES[0], connection=redis)
with posthog_errors.bind("user-42", session_id="session-1", properties={"plan": "pro"}):
    job = queue.enqueue(json.loads, "not json")
SimpleWorker([queue], connection=redis).work(burst=True)
assert job.get_status(refresh=True) == "failed", job.get_status()
"""


@dataclass(frozen=True)
class Setup:
    """A page's set-up block, the driver lines run after it, and the $exception it sends."""

    page: str
    driver: str
    type: str  # the $exception_list's type
    message: str  # and value
    source: str  # $exception_source
    properties: dict[str, Any]  # each must be sent, with this value
    distinct_id: str = "user-42"
    needs_redis: bool = False


def web(page: str, driver: str, source: str, route: str) -> Setup:
    """A web framework's set-up: a failing route, hit with posthog-js's tracing headers."""
    properties = {
        "$session_id": "session-1",
        "$request_method": "GET",
        "$request_path": "/orders/7",
        "$request_route": route,
    }
    return Setup(page, driver, "RuntimeError", "order 7 failed", source, properties)


SETUPS: dict[str, Setup] = {
    "fastapi": web("context.md", FASTAPI_DRIVER, "asgi.middleware", "/orders/{order_id}"),
    "flask": web(
        "context.md", FLASK_DRIVER, "flask.got_request_exception", "/orders/<int:order_id>"
    ),
    "django": web("context.md", DJANGO_DRIVER, "django.middleware", "orders/<int:order_id>"),
    "structlog": Setup(
        page="structlog.md",
        driver=STRUCTLOG_DRIVER,
        type="ValueError",
        message="card declined",
        source="structlog.processor",
        properties={"order_id": 7},
    ),
    "loguru": Setup(
        page="loguru.md",
        driver=LOGURU_DRIVER,
        type="ValueError",
        message="card declined",
        source="loguru.sink",
        properties={"order_id": 7, "log_message": "checkout failed", "$session_id": "session-1"},
    ),
    "rq": Setup(
        page="rq.md",
        driver=RQ_DRIVER,
        type="JSONDecodeError",
        message="Expecting value: line 1 column 1 (char 0)",
        source="rq.exception_handler",
        properties={
            "$session_id": "session-1",
            "plan": "pro",
            "rq_job_func": "json.loads",
            "rq_queue": "default",
            "rq_retries": 0,
            "$exception_handled": False,
        },
        needs_redis=True,
    ),
}


# -- running a set-up --------------------------------------------------------------------------


def run_setup(block: Block, setup: Setup, tmp_path: Path, env: dict[str, str]) -> str:
    """Run the block and its driver in a child process; its stderr."""
    script = tmp_path / f"setup_{block.name}.py"
    script.write_text(GUARD + block.code + "\n# -- the test's driver --\n" + setup.driver)
    child_env = dict(os.environ)
    child_env.update(env)
    child_env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    try:
        result = subprocess.run(
            [sys.executable, "-X", "faulthandler", str(script)],
            cwd=tmp_path,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{block.page} setup {block.name} did not finish: {error.stderr!r}")
    where = f"{block.page}:{block.line} setup {block.name}"
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    assert REFUSED not in result.stderr, f"{where} reached for the network:\n{result.stderr}"
    health = [line for line in result.stderr.splitlines() if line.startswith(HEALTH)]
    assert health, f"{where}: posthog-errors was never imported?\n{result.stderr}"
    failures = json.loads(health[-1][len(HEALTH) :])
    assert not failures, f"{where}: internal errors of posthog-errors: {failures}"
    return result.stderr


def test_pages_and_table_agree() -> None:
    problems: list[str] = []
    found: dict[str, str] = {}
    for page in PAGES:
        blocks, page_problems = read_setups(page)
        problems += page_problems
        found.update({name: page for name in blocks})
    expected = {name: setup.page for name, setup in SETUPS.items()}
    assert not problems, problems
    assert found == expected, "the pages' <!-- setup: NAME --> markers and SETUPS disagree"


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_setup_runs_and_reports(
    name: str, capture_server: CaptureServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    setup = SETUPS[name]
    blocks, problems = read_setups(setup.page)
    assert name in blocks, f"{setup.page} has no <!-- setup: {name} --> block ({problems})"
    block = blocks[name]
    env = {"POSTHOG_API_KEY": API_KEY, "POSTHOG_HOST": capture_server.url}
    if setup.needs_redis:
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    stderr = run_setup(block, setup, tmp_path, env)

    events = capture_server.wait_for_events(1, timeout=5)
    assert len(events) == 1, f"expected one $exception, got {events!r}\n{stderr}"
    event = events[0]
    props = event["properties"]
    exception = props["$exception_list"][0]
    assert (exception["type"], exception["value"]) == (setup.type, setup.message)
    assert props["$exception_source"] == setup.source
    assert event["distinct_id"] == setup.distinct_id
    assert props.get("$process_person_profile") is not False
    for key, value in setup.properties.items():
        assert props.get(key) == value, f"{key}: {props.get(key)!r}, not {value!r}"
