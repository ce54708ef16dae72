"""The capture server against the real posthog client: what it records, and how it fails."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

from posthog_errors.capture_server import V1_PATH, CaptureServer, Fault
from tests.conftest import CAPTURE_MODE

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol

API_KEY = "phc_test_capture_server"


def make_client(server: CaptureServer, **kwargs: Any) -> posthog.Posthog:
    """The real client, sending each event at once and never retrying."""
    options: dict[str, Any] = {"flush_at": 1, "flush_interval": 0.05, "max_retries": 0}
    return posthog.Posthog(API_KEY, host=server.url, **{**options, **kwargs})


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
    assert all(r.status == 200 and r.capture_mode == CAPTURE_MODE for r in requests)
    if CAPTURE_MODE == "v0":
        assert {r.path for r in requests} == {"/batch/"}
        assert all(r.body["api_key"] == API_KEY for r in requests)
        assert all((r.headers.get("Content-Encoding") == "gzip") is gzip for r in requests)
    else:  # v1 compresses by capture_compression, not gzip=, and authenticates by header
        assert {r.path for r in requests} == {V1_PATH}
        assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in requests)
        assert all("api_key" not in r.body for r in requests)


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


# -- capture v1 (posthog-python's capture_mode="v1", the only mode of posthog-python 8) --


def v1_client(server: CaptureServer, **kwargs: Any) -> posthog.Posthog:
    return make_client(server, capture_mode="v1", **kwargs)


def test_v1_events_cross_the_wire_in_v1_shape_and_read_as_ingested(
    server: CaptureServer,
) -> None:
    client = v1_client(server)
    try:
        client.capture(
            "$exception",
            distinct_id="user-1",
            properties={"$session_id": "s-1", "$window_id": "w-1", "n": 1},
        )
        client.capture("ping", distinct_id="anon", properties={"$process_person_profile": False})
        assert client.flush() is not False
    finally:
        client.shutdown()

    wire = [event for request in server.requests for event in request.body["batch"]]
    assert [r.path for r in server.requests] == [V1_PATH] * len(server.requests)
    first, second = wire
    # On the wire: the session is top level, the person flag an option, no $lib.
    assert (first["session_id"], first["window_id"]) == ("s-1", "w-1")
    assert "$session_id" not in first["properties"] and "$lib" not in first["properties"]
    assert second["options"] == {"process_person_profile": False}
    assert all(r.results == {e["uuid"]: "ok" for e in r.body["batch"]} for r in server.requests)
    headers = server.requests[0].headers
    assert headers["PostHog-Sdk-Info"].startswith("posthog-python/")

    # As ingestion reads them: the same properties a v0 event carries.
    exception, ping = server.events
    assert exception["properties"]["$session_id"] == "s-1"
    assert exception["properties"]["$window_id"] == "w-1"
    assert exception["properties"]["$lib"] == "posthog-python"
    assert exception["properties"]["$lib_version"] == posthog.VERSION
    assert ping["properties"]["$process_person_profile"] is False
    assert exception["uuid"] == first["uuid"]


@pytest.mark.parametrize(
    ("verdict", "accepted"), [("ok", 1), ("warning", 1), ("drop", 0), ("retry", 0)]
)
def test_v1_verdicts_reach_the_client(server: CaptureServer, verdict: str, accepted: int) -> None:
    server.set_fault(Fault(verdict=verdict))
    errors: list[Exception] = []
    client = v1_client(server, on_error=lambda exc, batch: errors.append(exc))
    try:
        uuid = client.capture("$exception", distinct_id="user-1")
        client.flush()
    finally:
        client.shutdown()

    assert len(server.events) == accepted
    assert server.requests[0].results == {uuid: verdict}
    if accepted:
        assert errors == []
        return
    (error,) = errors
    assert type(error).__name__ == "CaptureV1Error"
    if verdict == "drop":
        assert [uid for uid, _ in error.drops] == [uuid]  # type: ignore[attr-defined]
    else:
        assert error.retry_exhausted == [uuid]  # type: ignore[attr-defined]


def test_v1_retry_verdict_for_the_first_attempt_then_accepted(server: CaptureServer) -> None:
    server.set_fault(Fault(verdict="retry", verdict_attempts=1))
    client = v1_client(server, max_retries=1)
    try:
        uuid = client.capture("$exception", distinct_id="user-1")
        client.flush()
    finally:
        client.shutdown()

    assert [r.headers["PostHog-Attempt"] for r in server.requests] == ["1", "2"]
    assert [r.results for r in server.requests] == [{uuid: "retry"}, {uuid: "ok"}]
    assert [e["uuid"] for e in server.events] == [uuid]


def _post(server: CaptureServer, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.url + V1_PATH,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


_GOOD_HEADERS = {"Authorization": "Bearer phc_x", "PostHog-Sdk-Info": "posthog-python/9.9.9"}
_GOOD_EVENT = {
    "event": "$exception",
    "uuid": "0192e7c4-0000-4000-8000-000000000001",
    "distinct_id": "u",
    "timestamp": "2026-11-30T00:00:00+00:00",
    "options": {},
    "properties": {},
}


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({}, 200),
        ({"headers": {"Authorization": ""}}, 401),
        ({"headers": {"Authorization": "phc_x"}}, 401),
        ({"headers": {"PostHog-Sdk-Info": ""}}, 400),
        ({"event": {"options": {"process_person_profile": "false"}}}, 400),
        ({"event": {"session_id": 5}}, 400),
        ({"event": {"properties": None}}, 400),
        ({"event": {"uuid": None}}, 400),
        ({"body": {"created_at": None}}, 400),
    ],
)
def test_v1_refuses_what_posthog_refuses(
    server: CaptureServer, change: dict[str, Any], status: int
) -> None:
    headers = {**_GOOD_HEADERS, **change.get("headers", {})}
    headers = {name: value for name, value in headers.items() if value}
    event = {**_GOOD_EVENT, **change.get("event", {})}
    body = {"created_at": "2026-11-30T00:00:00+00:00", "batch": [event], **change.get("body", {})}
    answered, payload = _post(server, body, headers)
    assert answered == status
    if status == 200:
        assert payload == {"results": {_GOOD_EVENT["uuid"]: {"result": "ok"}}}
        assert len(server.events) == 1
    else:
        assert server.events == [] and server.requests[-1].status == status


def test_v0_batch_without_an_api_key_is_refused(server: CaptureServer) -> None:
    request = urllib.request.Request(
        server.url + "/batch/",
        data=json.dumps({"batch": [{"event": "x", "distinct_id": "u"}]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert server.events == []


def test_fault_rejects_an_unknown_verdict() -> None:
    with pytest.raises(ValueError, match="verdict"):
        Fault(verdict="maybe")
