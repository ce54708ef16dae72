"""Shared fixtures: a loopback capture server, a real posthog client pointed at it, and a
default reporter using that client. Every ``$exception`` that reaches any capture server
in the suite is checked against exception-event.md at teardown."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

# Internal errors re-raise (caller's thread) or are recorded (worker) under our own tests.
os.environ["POSTHOG_ERRORS_STRICT"] = "1"

import posthog
import pytest

from posthog_errors import _guard, _rate_limit, _reporter
from posthog_errors._delivery import upload_failures, worker
from posthog_errors._logs_delivery import LOGS
from posthog_errors._stats import STATS
from posthog_errors.capture_server import CaptureServer
from tests.conformance import assert_event_conforms

API_KEY = "phc_test_key"
# The posthog client reads POSTHOG_CAPTURE_MODE itself (and child processes inherit it):
# the whole suite runs against either protocol; CI runs it in both.
CAPTURE_MODE = os.environ.get("POSTHOG_CAPTURE_MODE", "v0").strip().lower() or "v0"


@pytest.fixture(autouse=True)
def _clean_library_state() -> Iterator[None]:
    STATS.reset()
    # An upload that an earlier test's client failed after that test ended is not this
    # test's: flush() reports failures since the last flush, process-wide.
    delivery = worker()
    delivery._failures_seen = upload_failures()
    # The same for PostHog Logs: a send that failed after an earlier test's last flush, and
    # that test's rate-cap window, are not this test's.
    LOGS._ok = True
    LOGS._window_start, LOGS._window_count = 0.0, 0
    _rate_limit.configure((_rate_limit.DEFAULT_BURST, _rate_limit.DEFAULT_PER_SECOND))
    previous = _reporter.set_default_reporter(None)
    failures = _guard.strict_failures()
    del failures[:]
    yield
    _reporter.set_default_reporter(previous)
    assert not failures, f"internal errors were swallowed during the test: {failures!r}"


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server
        refused = [r for r in server.requests if r.status in (400, 401)]
        assert not refused, f"PostHog's capture would have refused: {refused!r}"
        for event in server.exception_events():
            props = event["properties"]
            if "$exception_source" in props or "$exception_handled" in props:
                assert_event_conforms(event)  # ours (posthog-python's own send neither key)


def make_client(server: CaptureServer, **kwargs: Any) -> posthog.Posthog:
    options: dict[str, Any] = {"flush_interval": 0.05, "max_retries": 0, "timeout": 5}
    options.update(kwargs)
    return posthog.Posthog(API_KEY, host=server.url, **options)


@pytest.fixture
def logs_server(capture_server: CaptureServer) -> Iterator[CaptureServer]:
    """``capture_server``; at the end, every PostHog Logs body it received must be what an
    OpenTelemetry collector accepts (``tests/logs_wire.py``)."""
    yield capture_server
    from tests.logs_wire import assert_collector_accepts

    assert_collector_accepts(capture_server)


@pytest.fixture
def posthog_client(capture_server: CaptureServer) -> Iterator[posthog.Posthog]:
    client = make_client(capture_server)
    yield client
    client.shutdown()


@pytest.fixture
def reporter(posthog_client: posthog.Posthog) -> _reporter.Reporter:
    """The default reporter (what ``capture_exception`` uses), sending to the server."""
    reporter = _reporter.Reporter(posthog_client)
    _reporter.set_default_reporter(reporter)
    return reporter
