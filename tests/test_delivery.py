"""capture_exception end to end: the real posthog client, a loopback server, the wire JSON."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import _rate_limit
from posthog_errors._delivery import worker
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer, Fault

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol


def fail_deep(depth: int) -> None:
    if depth == 0:
        raise ValueError("payment declined")
    fail_deep(depth - 1)


def test_captured_exception_arrives_with_frames_and_context(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    try:
        fail_deep(3)
    except ValueError as exc:
        event_uuid = posthog_errors.capture_exception(exc, distinct_id="user-1")
    assert event_uuid is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["uuid"] == event_uuid
    assert event["distinct_id"] == "user-1"
    props = event["properties"]
    assert "$exception_source" not in props  # a manual capture names no integration
    assert props["$exception_level"] == "error"
    assert props["$exception_handled"] is True
    assert "$process_person_profile" not in props
    [entry] = props["$exception_list"]
    assert entry["type"] == "ValueError"
    assert entry["value"] == "payment declined"
    frames = entry["stacktrace"]["frames"]
    assert [f["function"] for f in frames][1:] == ["fail_deep"] * 4
    assert frames[-1]["context_line"].strip() == 'raise ValueError("payment declined")'
    assert frames[-1]["filename"] == "tests/test_delivery.py"
    assert all(f["in_app"] is True for f in frames)
    assert posthog_errors.stats()["sent"] == 1


def test_same_exception_is_sent_once(capture_server: CaptureServer, reporter: Reporter) -> None:
    try:
        fail_deep(0)
    except ValueError as exc:
        first = posthog_errors.capture_exception(exc)
        second = posthog_errors.capture_exception(exc)
    assert first is not None and second is None
    assert posthog_errors.flush(5)
    assert len(capture_server.wait_for_events(1)) == 1
    counts = posthog_errors.stats()
    assert (counts["captured"], counts["sent"], counts["deduplicated"]) == (2, 1, 1)


def test_dedupe_honours_and_sets_posthog_pythons_mark(
    capture_server: CaptureServer, reporter: Reporter, posthog_client: posthog.Posthog
) -> None:
    # Sent by posthog-python first: this library must skip it.
    try:
        fail_deep(0)
    except ValueError as exc:
        assert posthog_client.capture_exception(exc, distinct_id="u") is not None
        assert posthog_errors.capture_exception(exc) is None
    # Sent here first: posthog-python must skip it.
    try:
        fail_deep(1)
    except ValueError as exc:
        ours = posthog_errors.capture_exception(exc)
        assert ours is not None
        assert posthog_client.capture_exception(exc, distinct_id="u") is None
        assert getattr(exc, "__posthog_exception_uuid") == ours
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert len(events) == 2
    assert posthog_errors.stats()["deduplicated"] == 1


def test_no_distinct_id_makes_a_personless_event(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    try:
        fail_deep(0)
    except ValueError:
        posthog_errors.capture_exception()
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$process_person_profile"] is False
    assert uuid.UUID(event["distinct_id"]).version == 4


def test_posthog_context_supplies_the_distinct_and_session_id(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with posthog.new_context():
        posthog.identify_context("ctx-user")
        posthog.set_context_session("ctx-session")
        try:
            fail_deep(0)
        except ValueError as exc:
            posthog_errors.capture_exception(exc)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["distinct_id"] == "ctx-user"
    assert event["properties"]["$session_id"] == "ctx-session"


def test_properties_travel_and_cannot_overwrite_the_payload(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    try:
        fail_deep(0)
    except ValueError as exc:
        posthog_errors.capture_exception(
            exc,
            level="warning",
            properties={"plan": "pro", "$exception_list": "oops"},
            fingerprint="checkout-declined",
        )
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    props = event["properties"]
    assert props["plan"] == "pro"
    assert props["$exception_level"] == "warning"
    assert props["$exception_fingerprint"] == "checkout-declined"
    assert props["$exception_list"][0]["type"] == "ValueError"


def test_bad_runtime_input_gets_a_fallback_and_is_counted(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    assert posthog_errors.capture_exception() is None  # nothing is being handled
    assert posthog_errors.capture_exception("not an exception") is None  # type: ignore[arg-type]
    try:
        fail_deep(0)
    except ValueError as exc:
        assert posthog_errors.capture_exception(exc, level="catastrophic") is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_level"] == "error"
    assert posthog_errors.stats()["invalid_input"] == 3


def test_before_send_can_change_or_drop_and_ignore_skips_types(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    def before_send(props: dict[str, Any]) -> dict[str, Any] | None:
        if props["$exception_list"][0]["value"] == "drop me":
            return None
        props["reviewed"] = True
        return props

    set_default_reporter(Reporter(posthog_client, before_send=before_send, ignore=[KeyError]))
    for exc in (ValueError("drop me"), ValueError("keep me"), KeyError("ignored")):
        posthog_errors.capture_exception(exc)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_list"][0]["value"] == "keep me"
    assert event["properties"]["reviewed"] is True
    counts = posthog_errors.stats()
    assert (counts["captured"], counts["sent"], counts["filtered"]) == (3, 1, 2)


def test_queue_is_bounded_and_drops_are_counted(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow_before_send(props: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return props

    set_default_reporter(Reporter(posthog_client, before_send=slow_before_send))
    _rate_limit.configure(None)  # 51 failures of one site: only the queue may drop them
    queue = worker()
    old_size, queue.max_queue = queue.max_queue, 20
    try:
        posthog_errors.capture_exception(ValueError("first"))
        assert entered.wait(5)  # the worker is now busy with the first event
        results = [posthog_errors.capture_exception(ValueError(f"e{i}")) for i in range(50)]
    finally:
        queue.max_queue = old_size
        release.set()
    assert results.count(None) == 30
    assert posthog_errors.flush(10)
    assert len(capture_server.wait_for_events(21)) == 21
    counts = posthog_errors.stats()
    assert (counts["captured"], counts["sent"], counts["dropped"]) == (51, 21, 30)


def test_nothing_the_library_does_while_delivering_is_captured_again(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    def capturing_before_send(props: dict[str, Any]) -> dict[str, Any]:
        # A user callback that reports failures from inside the worker: must be ignored.
        assert posthog_errors.capture_exception(RuntimeError("from the worker")) is None
        return props

    set_default_reporter(Reporter(posthog_client, before_send=capturing_before_send))
    posthog_errors.capture_exception(ValueError("original"))
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(1)
    assert [e["properties"]["$exception_list"][0]["value"] for e in events] == ["original"]
    assert posthog_errors.stats()["captured"] == 1


def test_keyboard_interrupt_in_user_callback_passes_through(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    set_default_reporter(Reporter(posthog_client))
    # A KeyboardInterrupt from user code reached while capturing is not swallowed by the
    # guard: str() runs on the caller's thread, where the interrupt reaches the app.
    with pytest.raises(KeyboardInterrupt):
        posthog_errors.capture_exception(Hostile())
    client_source_error = None
    try:
        Reporter(client=lambda: (_ for _ in ()).throw(KeyboardInterrupt())).capture(ValueError())
    except KeyboardInterrupt as error:
        client_source_error = error
    assert isinstance(client_source_error, KeyboardInterrupt)


SUBPROCESS_HANG = """
import sys, time
import posthog, posthog_errors
from posthog_errors import _reporter
from posthog_errors import _rate_limit
from posthog_errors._delivery import worker
client = posthog.Posthog("phc_test", host=sys.argv[1], timeout=60, max_retries=0,
                         flush_interval=0.01)
_reporter.set_default_reporter(_reporter.Reporter(client))
worker().shutdown_timeout = 1.0
started = time.monotonic()
try:
    1 / 0
except ZeroDivisionError as exc:
    event_uuid = posthog_errors.capture_exception(exc)
print("capture returned after", time.monotonic() - started, "uuid", event_uuid, flush=True)
"""


def test_a_server_that_never_answers_blocks_neither_capture_nor_exit() -> None:
    with CaptureServer(fault=Fault(hang=True)) as server:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", SUBPROCESS_HANG, server.url],
            capture_output=True,
            text=True,
            timeout=50,
        )
        elapsed = time.monotonic() - started
        requests = server.requests
    assert result.returncode == 0, result.stderr
    returned_after = float(result.stdout.split()[3])
    # The client would wait 60 s for an answer. Capture must not wait at all, and exit
    # must take the 1 s exit flush plus posthog's own 1 s, not the request's 60 s.
    assert returned_after < 1.0
    assert elapsed < 20
    assert "uuid None" not in result.stdout
    assert requests and requests[0].status == 0  # the event really was on its way


def test_a_list_fingerprint_is_joined_and_counted(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    try:
        fail_deep(0)
    except ValueError as exc:
        fingerprint: Any = ["checkout", "declined"]  # not a string: a fallback, counted
        assert posthog_errors.capture_exception(exc, fingerprint=fingerprint) is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_fingerprint"] == "checkout/declined"
    assert posthog_errors.stats()["invalid_input"] == 1


def test_a_client_whose_flush_raised_once_does_not_poison_later_flushes(
    capture_server: CaptureServer,
    posthog_client: posthog.Posthog,
    reporter: Reporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_flush = posthog_client.flush
    calls: list[str] = []

    def flush_that_breaks_once(*args: Any, **kwargs: Any) -> None:
        # The prompt flusher's own flush (about 0.3 s after the hand-off) may come first on
        # a slow machine: only the flushes posthog_errors.flush() makes count here.
        if threading.current_thread().name != "posthog-errors-flusher":
            calls.append("flush")
            if len(calls) == 1:
                raise OSError("the client could not flush this time")
        real_flush(*args, **kwargs)

    monkeypatch.setattr(posthog_client, "flush", flush_that_breaks_once)
    monkeypatch.setenv("POSTHOG_ERRORS_STRICT", "0")  # the client's failure is counted
    posthog_errors.capture_exception(ValueError("before the failed flush"))
    assert posthog_errors.flush(5) is False  # this flush could not confirm delivery
    posthog_errors.capture_exception(ValueError("after the failed flush"))
    assert posthog_errors.flush(5) is True  # ...and the next one is not haunted by it
    assert posthog_errors.flush(5) is True
    assert len(capture_server.wait_for_events(2)) == 2
