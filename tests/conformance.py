"""exception-event.md as executable checks.

``assert_event_conforms`` is applied to every ``$exception`` event that reaches a capture
server in this suite (see conftest.py), and to every payload the payload tests build.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

LEVELS = {"fatal", "error", "warning", "log", "info", "debug"}
SOURCES = {
    "python.logging",
    "python.structlog",
    "python.sys_excepthook",
    "python.threading_excepthook",
    "python.asyncio",
    "python.unraisablehook",
    "python.sys_exit",
    "python.multiprocessing",
    "python.manual",
    "python.asgi",
    "python.wsgi",
    "python.django",
    "sentry",
}
MAX_EVENT_BYTES = 900 * 1024


def assert_event_conforms(event: dict[str, Any]) -> None:
    """A whole wire event: envelope fields plus properties."""
    assert event["event"] == "$exception"
    assert isinstance(event["distinct_id"], str) and event["distinct_id"]
    uuid.UUID(event["uuid"])
    assert isinstance(event["timestamp"], str)
    props = event["properties"]
    assert_properties_conform(props)
    if props.get("$process_person_profile") is False:
        uuid.UUID(event["distinct_id"])  # personless events get a random uuid4
    assert len(json.dumps(event).encode()) < MAX_EVENT_BYTES


def assert_properties_conform(props: dict[str, Any]) -> None:
    exceptions = props["$exception_list"]
    assert isinstance(exceptions, list) and 1 <= len(exceptions) <= 50
    assert props["$exception_level"] in LEVELS
    assert props.get("$exception_source") in SOURCES
    assert isinstance(props["$exception_handled"], bool)
    if "$exception_fingerprint" in props:
        assert isinstance(props["$exception_fingerprint"], str)
    if "$session_id" in props:
        assert isinstance(props["$session_id"], str)
    ids = set()
    for index, entry in enumerate(exceptions):
        assert_entry_conforms(entry, root=index == 0)
        mechanism = entry["mechanism"]
        ids.add(mechanism["exception_id"])
        if index:
            assert mechanism["parent_id"] in ids  # parents come before their children
    json.dumps(props, allow_nan=False).encode("utf-8")  # lone surrogates would raise here


def assert_entry_conforms(entry: dict[str, Any], *, root: bool) -> None:
    assert isinstance(entry["type"], str) and entry["type"]
    assert isinstance(entry["value"], str)
    assert entry["module"] is None or isinstance(entry["module"], str)
    mechanism = entry["mechanism"]
    assert isinstance(mechanism["type"], str)
    assert isinstance(mechanism["synthetic"], bool)
    assert isinstance(mechanism["exception_id"], int)
    if root:
        assert mechanism["exception_id"] == 0
        assert isinstance(mechanism["handled"], bool)
        assert "parent_id" not in mechanism
    else:
        assert mechanism["type"] == "chained"
        assert "handled" not in mechanism
        assert mechanism["source"] in {"cause", "context", "member"}
        assert isinstance(mechanism["parent_id"], int)
    if "stacktrace" in entry:
        stack = entry["stacktrace"]
        assert stack["type"] == "raw"
        assert isinstance(stack["frames"], list) and stack["frames"]
        for frame in stack["frames"]:
            assert_frame_conforms(frame)


def assert_frame_conforms(frame: dict[str, Any]) -> None:
    assert frame["platform"] == "python"
    assert isinstance(frame["filename"], str) and frame["filename"]
    assert frame["abs_path"] is None or isinstance(frame["abs_path"], str)
    assert isinstance(frame["function"], str) and frame["function"]
    assert frame["module"] is None or isinstance(frame["module"], str)
    assert frame["lineno"] is None or (isinstance(frame["lineno"], int) and frame["lineno"] >= 0)
    for key in ("pre_context", "post_context"):
        assert isinstance(frame[key], list)
        assert all(isinstance(line, str) for line in frame[key]), frame[key]
        assert len(frame[key]) <= 5
    assert frame["context_line"] is None or isinstance(frame["context_line"], str)
    assert type(frame["in_app"]) is bool
