"""capture_exception end to end: the real posthog client, a loopback server, the wire JSON."""

from __future__ import annotations

import posthog_errors
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer


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
    assert props["$exception_source"] == "python.manual"
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
