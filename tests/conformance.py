"""exception-event.md as executable checks.

``assert_event_conforms`` is applied to every ``$exception`` event that reaches a capture
server in this suite (see conftest.py), and to every payload the payload tests build: the
required keys and their types, the keys the server reads as typed fields, each value within
the server's 10,000 UTF-8 bytes, every ``lineno``/``colno`` an unsigned 32-bit integer or
null, and JSON nested no deeper than the server takes.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

LEVELS = {"fatal", "error", "warning", "log", "info", "debug"}
# PostHog's SDK event spec (PostHog/sdk-specs exception-event-metadata), written out here
# rather than imported, so that the check does not take the library's word for it.
# The outermost entry's mechanism.type: a category, never the technology.
MECHANISM_CATEGORIES = {
    "generic",
    "logger",
    "onconsole",
    "onuncaughtexception",
    "onunhandledrejection",
    "middleware",
    "task",
    "panic",
    "signal",
    "crash_reporter",
}
# $exception_source: the spec's canonical names for Python's hooks and frameworks, and this
# project's own, each `<technology>.<hook>`. A manual capture sends none.
CANONICAL_SOURCES = {
    "python.sys_excepthook",
    "python.threading_excepthook",
    "django.middleware",
    "fastapi.exception_handler",
    "celery.task_failure",
}
SOURCES = CANONICAL_SOURCES | {
    "python.logging",
    "structlog.processor",
    "loguru.sink",
    "python.sys_unraisablehook",
    "python.asyncio_exception_handler",
    "python.multiprocessing_process",
    "python.sys_exit",
    "rq.exception_handler",
    "asgi.middleware",
    "wsgi.middleware",
    "flask.got_request_exception",
    "sentry.event_processor",
}
SOURCE_FORM = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
# A nested entry's relationship, when known (an unknown one is omitted).
RELATIONS = {"cause", "context", "unwrap", "member", "suppressed", "inner"}
# PostHog's ingestion derives these: an SDK never sends them.
PROCESSOR_OWNED = ("$exception_fingerprint_version", "$exception_release")
MAX_EVENT_BYTES = 900 * 1024
# The server rejects JSON nested deeper than about 64 levels, counted from the request
# body, where ``{"batch": [event]}`` adds two levels around each event.
MAX_EVENT_NESTING = 62
MAX_VALUE_BYTES = 10_000
U32 = 2**32

# Keys the server reads as typed fields (exception-event.md): a wrong type rejects the event.
STR_LIST_KEYS = ("$exception_types", "$exception_values", "$exception_sources")
STR_LIST_KEYS += ("$exception_functions",)
STR_KEYS = (
    "$exception_proposed_fingerprint",
    "$exception_fingerprint",
    "$issue_name",
    "$issue_description",
)
FINGERPRINT_RECORD_TYPES = {"frame", "exception", "custom", "manual"}


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
    assert json_depth(event) <= MAX_EVENT_NESTING, json_depth(event)


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 0, ``[]`` is 1); iterative."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def assert_typed_keys_conform(props: dict[str, Any]) -> None:
    """The keys the server deserializes into typed fields have their type, or are absent."""
    for key in STR_LIST_KEYS:
        if key in props:
            value = props[key]
            assert isinstance(value, list), (key, value)
            assert all(item is None or isinstance(item, str) for item in value), (key, value)
    for key in STR_KEYS:
        if key in props:
            assert isinstance(props[key], str), (key, props[key])
    if "$issue_name" in props:
        assert len(props["$issue_name"].encode("utf-8")) <= 255
    if "$exception_releases" in props:
        assert isinstance(props["$exception_releases"], dict)
    if "$exception_issue_id" in props:
        value = props["$exception_issue_id"]
        assert isinstance(value, str) and str(uuid.UUID(value)) == value.lower(), value
    if "$exception_fingerprint_record" in props:
        records = props["$exception_fingerprint_record"]
        assert isinstance(records, list), records
        for record in records:
            assert isinstance(record, dict), record
            assert record.get("type") in FINGERPRINT_RECORD_TYPES, record
    if "$debug_images" in props:
        images = props["$debug_images"]
        assert isinstance(images, list) and all(isinstance(i, dict) for i in images), images
    assert isinstance(props["$exception_handled"], bool)


def assert_properties_conform(props: dict[str, Any]) -> None:
    exceptions = props["$exception_list"]
    assert isinstance(exceptions, list) and 1 <= len(exceptions) <= 50
    assert props["$exception_level"] in LEVELS
    assert_names_conform(props)
    assert_typed_keys_conform(props)
    if "$session_id" in props:
        assert isinstance(props["$session_id"], str)
    if "$exception_steps" in props:
        assert_steps_conform(props["$exception_steps"])
    if "$release_id" in props:
        assert isinstance(props["$release_id"], str) and props["$release_id"]
    ids = set()
    for index, entry in enumerate(exceptions):
        assert_entry_conforms(entry, root=index == 0)
        mechanism = entry["mechanism"]
        ids.add(mechanism["exception_id"])
        if index:
            assert mechanism["parent_id"] in ids  # parents come before their children
    json.dumps(props, allow_nan=False).encode("utf-8")  # lone surrogates would raise here


def assert_names_conform(props: dict[str, Any]) -> None:
    """The spec's names: a category as the root's ``mechanism.type``, the technology as
    ``$exception_source`` (``<technology>.<hook>``, one this project knows), none for a
    manual capture (``generic``), and no key PostHog's ingestion owns."""
    root = props["$exception_list"][0]["mechanism"]
    assert root["type"] in MECHANISM_CATEGORIES, root["type"]
    assert "source" not in root, root  # the outermost entry has no parent
    if "$exception_source" in props:
        source = props["$exception_source"]
        assert isinstance(source, str) and SOURCE_FORM.fullmatch(source), source
        assert source in SOURCES, source
    else:
        assert root["type"] == "generic", root  # only a manual capture omits it
    for key in PROCESSOR_OWNED:
        assert key not in props, key


def assert_steps_conform(steps: Any) -> None:
    """``$exception_steps``: objects with a non-empty ``$message`` and an ISO 8601 or epoch
    ``$timestamp`` (the server skips others), within posthog-js's 32,768-byte budget."""
    assert isinstance(steps, list) and steps, steps
    for step in steps:
        assert isinstance(step, dict), step
        assert isinstance(step.get("$message"), str) and step["$message"], step
        stamp = step.get("$timestamp")
        if isinstance(stamp, str):
            datetime.datetime.fromisoformat(stamp)
        else:
            assert isinstance(stamp, (int, float)) and not isinstance(stamp, bool), step
    assert len(json.dumps(steps).encode()) <= 32_768


def assert_entry_conforms(entry: dict[str, Any], *, root: bool) -> None:
    assert isinstance(entry["type"], str) and entry["type"]
    assert isinstance(entry["value"], str)
    assert len(entry["value"].encode("utf-8")) <= MAX_VALUE_BYTES
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
        if "source" in mechanism:  # omitted when the relationship is unknown
            assert mechanism["source"] in RELATIONS, mechanism
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
    for key in ("lineno", "colno"):
        if key in frame or key == "lineno":
            number = frame[key]
            assert number is None or (type(number) is int and 0 <= number < U32), (key, number)
    for key in ("pre_context", "post_context"):
        assert isinstance(frame[key], list)
        assert all(isinstance(line, str) for line in frame[key]), frame[key]
        assert len(frame[key]) <= 5
    assert frame["context_line"] is None or isinstance(frame["context_line"], str)
    assert type(frame["in_app"]) is bool
