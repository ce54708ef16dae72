"""The loopback Sentry server against the real sentry_sdk: what it records, and cleanup."""

from __future__ import annotations

import gzip
import http.client
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import pytest
import sentry_sdk

from tests.sentry_server import (
    SENTRY_SDK_MAJOR,
    SentryServer,
    parse_envelope,
    sentry_initialised,
)


@pytest.fixture
def server() -> Iterator[SentryServer]:
    with SentryServer() as srv:
        yield srv


def _post(url: str, body: bytes, encoding: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    if encoding:
        request.add_header("Content-Encoding", encoding)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _envelope(event: Mapping[str, object]) -> bytes:
    payload = json.dumps(event).encode()
    item = json.dumps({"type": "event", "length": len(payload)}).encode()
    return b"\n".join([b'{"event_id": "%s"}' % str(event["event_id"]).encode(), item, payload])


def test_dsn_points_at_the_bound_port(server: SentryServer) -> None:
    assert server.dsn == f"http://public@127.0.0.1:{server.port}/42"
    assert SentryServer(project_id=7).dsn.endswith("/7")


def test_capture_exception_arrives(server: SentryServer) -> None:
    with sentry_initialised(server.dsn) as client:
        assert client.is_active()
        try:
            raise ValueError("boom")
        except ValueError as exc:
            event_id = sentry_sdk.capture_exception(exc)
        sentry_sdk.flush(5)
        events = server.wait_for_events(1, timeout=5)
    assert len(events) == 1
    event = events[0]
    assert event_id is not None and event["event_id"] == event_id
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "ValueError"
    assert exception["value"] == "boom"
    assert exception["stacktrace"]["frames"][-1]["function"] == "test_capture_exception_arrives"
    (envelope,) = [e for e in server.envelopes if e["headers"].get("event_id") == event_id]
    assert envelope["headers"]["trace"]["public_key"] == "public"
    (item,) = envelope["items"]
    assert item["headers"]["type"] == "event" and item["payload"] == event


def test_capture_message_arrives(server: SentryServer) -> None:
    with sentry_initialised(server.dsn):
        event_id = sentry_sdk.capture_message("hello")
        sentry_sdk.flush(5)
        (event,) = server.wait_for_events(1, timeout=5)
    assert event["event_id"] == event_id
    assert event["message"] == "hello"
    assert event["level"] == "info"
    assert server.transactions == []


def test_uncompressed_bodies_and_traces(server: SentryServer) -> None:
    """A trace arrives as the installed line sends it: 2.x a ``transaction`` event, 3.x
    (span streaming only, no ``start_transaction``) ``span`` items, the root a segment."""
    options = {"traces_sample_rate": 1.0, "_experiments": {"transport_compression_level": 0}}
    with sentry_initialised(server.dsn, **options):
        if SENTRY_SDK_MAJOR >= 3:
            assert not hasattr(sentry_sdk, "start_transaction")
            with sentry_sdk.start_span(name="checkout", attributes={"sentry.op": "task"}):
                sentry_sdk.capture_message("inside")
        else:
            with sentry_sdk.start_transaction(name="checkout", op="task"):
                sentry_sdk.capture_message("inside")
        sentry_sdk.flush(5)
        deadline = time.monotonic() + 5
        while not (server.transactions or server.spans) and time.monotonic() < deadline:
            time.sleep(0.02)
    [event] = server.events
    assert event["message"] == "inside"
    assert event["transaction"] == "checkout"
    assert event["contexts"]["trace"]["op"] == "task"
    if SENTRY_SDK_MAJOR >= 3:
        assert server.transactions == []
        (span,) = server.spans
        assert span["name"] == "checkout" and span["is_segment"] is True
        assert span["attributes"]["sentry.op"]["value"] == "task"
        assert span["trace_id"] == event["contexts"]["trace"]["trace_id"]
    else:
        assert server.spans == []
        (transaction,) = server.transactions
        assert transaction["transaction"] == "checkout"
        assert transaction["contexts"]["trace"]["op"] == "task"
        assert (
            transaction["contexts"]["trace"]["trace_id"] == (event["contexts"]["trace"]["trace_id"])
        )


def test_helper_leaves_no_active_client(server: SentryServer) -> None:
    with sentry_initialised(server.dsn):
        assert sentry_sdk.get_client().dsn == server.dsn
    client = sentry_sdk.get_client()
    assert not client.is_active()
    assert client.dsn is None
    assert sentry_sdk.capture_message("dropped") is None
    assert server.wait_for_events(1, timeout=0.3) == []


def test_helper_patches_nothing_process_wide(server: SentryServer) -> None:
    def patchable() -> list[object]:
        return [
            logging.Logger.callHandlers,
            sys.excepthook,
            threading.excepthook,
            threading.Thread.start,
            http.client.HTTPConnection.putrequest,
            subprocess.Popen.__init__,
        ]

    before = patchable()
    with sentry_initialised(server.dsn):
        sentry_sdk.capture_message("patch check")
    assert patchable() == before


def test_helper_cleans_up_when_the_block_raises(server: SentryServer) -> None:
    with pytest.raises(RuntimeError), sentry_initialised(server.dsn):
        raise RuntimeError("test failure inside the block")
    assert not sentry_sdk.get_client().is_active()


def test_wait_for_events_times_out_quietly_and_clear_forgets(server: SentryServer) -> None:
    event = {"event_id": "a" * 32, "message": "one"}
    assert _post(f"http://127.0.0.1:{server.port}/api/42/envelope/", _envelope(event)) == (
        200,
        b"{}",
    )
    started = time.monotonic()
    assert server.wait_for_events(2, timeout=0.2) == [event]
    assert time.monotonic() - started < 2
    server.clear()
    assert server.events == [] and server.envelopes == []


def test_encodings_store_endpoint_and_other_paths(server: SentryServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    body = _envelope({"event_id": "b" * 32, "message": "zipped"})
    assert _post(f"{base}/api/42/envelope/", gzip.compress(body), "gzip")[0] == 200
    store = json.dumps({"event_id": "c" * 32, "message": "legacy"}).encode()
    assert _post(f"{base}/api/42/store/", store)[0] == 200
    assert _post(f"{base}/api/42/envelope/", b"not an envelope")[0] == 400
    assert _post(f"{base}/api/42/envelope/", gzip.compress(body)[:-5], "gzip")[0] == 400
    assert _post(f"{base}/api/42/security/", b"x")[0] == 200
    with urllib.request.urlopen(f"{base}/", timeout=5) as response:
        assert response.status == 200
    status = _post(f"{base}/api/42/envelope/", body, "br")[0]
    if importlib.util.find_spec("brotli") is None:
        assert status == 400  # cannot decode; the SDK never sends br without brotli either
    assert [e["message"] for e in server.events] == ["zipped", "legacy"]


def test_parse_envelope_items_with_and_without_length() -> None:
    raw = (
        b'{"event_id":"d"}\n'
        b'{"type":"attachment","length":5}\n\x00\x01\n\x02\x03\n'
        b'{"type":"event"}\n{"message":"m"}\n'
        b'{"type":"client_report","length":2}\n{}'
    )
    envelope = parse_envelope(raw)
    assert envelope["headers"] == {"event_id": "d"}
    assert [item["headers"]["type"] for item in envelope["items"]] == [
        "attachment",
        "event",
        "client_report",
    ]
    assert [item["payload"] for item in envelope["items"]] == [
        b"\x00\x01\n\x02\x03",
        {"message": "m"},
        {},
    ]
    with pytest.raises(ValueError):
        parse_envelope(b'{}\n{"type":"event","length":99}\n{}')


def test_stop_is_bounded_with_an_idle_connection_open() -> None:
    server = SentryServer().start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        time.sleep(0.1)  # let a handler thread block reading the request line
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 4
    finally:
        idle.close()
    with pytest.raises(RuntimeError):
        server.start()
