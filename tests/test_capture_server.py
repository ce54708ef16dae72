"""The capture server against the real posthog client: what it records, and how it fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

from posthog_errors.capture_server import CaptureServer, Fault

API_KEY = "phc_test_capture_server"


def make_client(server: CaptureServer, **kwargs: Any) -> posthog.Posthog:
    """The real client, sending each event at once and never retrying."""
    return posthog.Posthog(
        API_KEY, host=server.url, flush_at=1, flush_interval=0.05, max_retries=0, **kwargs
    )


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    with CaptureServer() as srv:
        yield srv


@pytest.mark.parametrize("gzip", [False, True])
def test_events_arrive_with_properties(gzip: bool) -> None:
    seen: list[str] = []
    with CaptureServer(on_event=lambda e: seen.append(e["event"])) as server:
        client = make_client(server, gzip=gzip)
        try:
            client.capture(
                "$exception", distinct_id="user-1", properties={"$exception_level": "error"}
            )
            client.capture("page_view", distinct_id="user-1", properties={"n": 2})
            client.flush()
        finally:
            client.shutdown()

    events = server.events
    assert [e["event"] for e in events] == ["$exception", "page_view"]
    assert seen == ["$exception", "page_view"]
    assert events[0]["distinct_id"] == "user-1"
    assert events[0]["properties"]["$exception_level"] == "error"
    assert events[1]["properties"]["n"] == 2
    assert [e["event"] for e in server.exception_events()] == ["$exception"]

    requests = server.requests
    assert requests, "the client posted nothing"
    assert {r.path for r in requests} == {"/batch/"}
    assert all(r.status == 200 and r.body["api_key"] == API_KEY for r in requests)
    assert all((r.headers.get("Content-Encoding") == "gzip") is gzip for r in requests)


def test_error_status_records_requests_but_no_events(server: CaptureServer) -> None:
    server.set_fault(Fault(status=500, retry_after=2))
    errors: list[Exception] = []
    client = make_client(server, on_error=lambda exc, batch: errors.append(exc))
    try:
        client.capture("$exception", distinct_id="user-1")
        client.flush()
    finally:
        client.shutdown()

    assert server.events == []
    assert server.request_count == 1
    (request,) = server.requests
    assert request.status == 500
    assert request.body["batch"][0]["event"] == "$exception"
    assert [getattr(e, "status", None) for e in errors] == [500]
    assert [getattr(e, "retry_after", None) for e in errors] == [2.0]

    server.set_fault(None)  # back to healthy: the same client path now records events
    client = make_client(server)
    client.capture("$exception", distinct_id="user-1")
    client.flush()
    client.shutdown()
    assert len(server.exception_events()) == 1


def test_stop_is_prompt_while_a_request_hangs() -> None:
    server = CaptureServer(fault=Fault(hang=True)).start()
    client = make_client(server, timeout=1)
    flushed = threading.Thread(target=client.flush, daemon=True)
    try:
        client.capture("$exception", distinct_id="user-1")
        flushed.start()
        deadline = time.monotonic() + 2
        while server.request_count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.request_count == 1, "the hanging request never arrived"

        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.5
        server.stop()  # idempotent
        flushed.join(2)
        assert not flushed.is_alive()
    finally:
        client.shutdown()
        server.stop()

    assert server.events == []
    assert [r.status for r in server.requests] == [0]


def test_wait_for_events_times_out_with_what_it_has(server: CaptureServer) -> None:
    client = make_client(server)
    try:
        client.capture("$exception", distinct_id="user-1")
        client.capture("other", distinct_id="user-1")
        client.flush()
    finally:
        client.shutdown()

    started = time.monotonic()
    got = server.wait_for_events(2, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1
    assert [e["event"] for e in got] == ["$exception"]
    assert len(server.wait_for_events(2, timeout=0.2, event=None)) == 2

    server.clear()
    assert server.events == [] and server.request_count == 0
