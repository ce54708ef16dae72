"""before_send fails closed, gets a copy, and a dropped event releases the captured mark."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import _conform, _dedupe
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer
from tests.conformance import json_depth
from tests.scripts import run_script


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    _conform.reset_warnings()
    yield
    _conform.reset_warnings()


class OrderError(ValueError):
    """Defined in Python: takes weak references (a built-in ``ValueError`` does not)."""


def fail_here(kind: type[ValueError] = ValueError) -> None:
    raise kind("failed at the same line every time")


def caught(kind: type[ValueError] = ValueError) -> ValueError:
    try:
        fail_here(kind)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def use(client: posthog.Posthog, hook: Any) -> Reporter:
    reporter = Reporter(client, before_send=hook)
    set_default_reporter(reporter)
    return reporter


def test_a_hook_that_edits_nested_structures_changes_no_later_event(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    calls: list[int] = []

    def scrub(props: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            for entry in props["$exception_list"]:
                for frame in entry["stacktrace"]["frames"]:
                    frame["pre_context"].clear()
                    frame["post_context"].append("scrubbed")
                    frame["context_line"] = "scrubbed"
                    frame["function"] = "scrubbed"
                entry["stacktrace"]["frames"].append({"not": "a frame"})
            props["nested"]["list"].append("changed")
        return props

    use(posthog_client, scrub)
    nested = {"list": ["kept"]}
    for _ in range(2):
        assert posthog_errors.capture_exception(caught(), properties={"nested": nested})
        assert posthog_errors.flush(5)
    first, second = capture_server.wait_for_events(2)
    assert nested == {"list": ["kept"]}  # the app's own object: untouched
    assert first["properties"]["nested"] == {"list": ["kept", "changed"]}
    assert second["properties"]["nested"] == {"list": ["kept"]}
    first_frames = first["properties"]["$exception_list"][0]["stacktrace"]["frames"]
    assert first_frames[-2]["function"] == "scrubbed"
    assert first_frames[-1]["function"] == "<unknown>"  # the appended non-frame, made valid
    frames = second["properties"]["$exception_list"][0]["stacktrace"]["frames"]
    assert frames[-1]["function"] == "fail_here"
    assert "raise kind(" in frames[-1]["context_line"]
    assert "scrubbed" not in frames[-1]["post_context"]
    assert frames[-1]["pre_context"]


def test_a_hook_that_raises_half_way_drops_the_event_and_is_logged_once(
    capture_server: CaptureServer,
    posthog_client: posthog.Posthog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def half_edit(props: dict[str, Any]) -> dict[str, Any]:
        props["$exception_list"][0]["value"] = "half edited"
        raise RuntimeError("the hook broke")

    use(posthog_client, half_edit)
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for _ in range(3):
            assert posthog_errors.capture_exception(caught()) is not None
        assert posthog_errors.flush(5)
    stats = posthog_errors.stats()
    assert (stats["captured"], stats["sent"], stats["dropped"]) == (3, 0, 3)
    assert stats["invalid_input"] == 3 and stats["internal_errors"] == 0
    records = [r for r in caplog.records if "before_send raised" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None and "the hook broke" in str(records[0].exc_info[1])
    assert capture_server.exception_events() == []


@pytest.mark.parametrize(
    "returned",
    [
        "not a dict",
        ["a", "list"],
        {"$exception_list": None},
        {"$exception_list": []},
        {"$exception_list": [{"value": "no type"}]},
        {"$exception_list": ["not an object"]},
    ],
)
def test_a_hook_returning_something_unusable_drops_the_event(
    capture_server: CaptureServer,
    posthog_client: posthog.Posthog,
    caplog: pytest.LogCaptureFixture,
    returned: Any,
) -> None:
    def bad(props: dict[str, Any]) -> Any:
        if isinstance(returned, dict):
            return {**props, **returned}
        return returned

    use(posthog_client, bad)
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for _ in range(2):
            assert posthog_errors.capture_exception(caught()) is not None
        assert posthog_errors.flush(5)
    stats = posthog_errors.stats()
    assert (stats["sent"], stats["dropped"], stats["invalid_input"]) == (0, 2, 2)
    assert len([r for r in caplog.records if "before_send" in r.getMessage()]) == 1
    assert capture_server.exception_events() == []


@pytest.mark.parametrize("kind", [ValueError, OrderError])
def test_returning_none_is_filtered_and_releases_the_mark(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, kind: type[ValueError]
) -> None:
    verdicts = [None]  # drop the first, keep the rest

    def first_dropped(props: dict[str, Any]) -> dict[str, Any] | None:
        return verdicts.pop() if verdicts else props

    use(posthog_client, first_dropped)
    exc = caught(kind)
    assert posthog_errors.capture_exception(exc) is not None
    assert posthog_errors.flush(5)
    if kind is OrderError:
        # Released through the weak reference: posthog-python sees it unmarked too.
        assert not hasattr(exc, _dedupe.CAPTURED_ATTR)
    # Dropped by before_send on the worker: the exception is not "already captured".
    assert posthog_errors.capture_exception(exc) is not None, posthog_errors.stats()
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_list"][0]["value"] == str(exc)
    stats = posthog_errors.stats()
    assert (stats["filtered"], stats["sent"], stats["deduplicated"]) == (1, 1, 0)


def test_the_snapshot_does_not_keep_the_exception_alive(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold(props: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        assert release.wait(10)
        return props

    use(posthog_client, hold)
    assert posthog_errors.capture_exception(caught()) is not None  # blocks the worker
    assert entered.wait(5)
    exc = caught(OrderError)
    reference = weakref.ref(exc)
    assert posthog_errors.capture_exception(exc) is not None  # queued behind the first
    del exc
    gc.collect()
    assert reference() is None
    release.set()
    assert posthog_errors.flush(5)
    assert len(capture_server.wait_for_events(2)) == 2


def test_what_the_hook_returns_is_made_to_meet_the_server_types(
    capture_server: CaptureServer,
    posthog_client: posthog.Posthog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def deep(levels: int) -> Any:
        value: Any = "bottom"
        for _ in range(levels):
            value = [value]
        return value

    def wrong(props: dict[str, Any]) -> dict[str, Any]:
        frames = props["$exception_list"][0]["stacktrace"]["frames"]
        frames[0]["lineno"] = True
        frames[-1]["lineno"] = 2**32
        frames[-1]["colno"] = -1
        props["$exception_list"][0]["value"] = "é" * 20_000
        props["$exception_level"] = "catastrophic"
        props["$exception_handled"] = "yes"
        props["$exception_types"] = "ValueError"
        props["$exception_issue_id"] = "not a uuid"
        props["$exception_fingerprint"] = ["a", 1]
        props["$issue_name"] = "n" * 1000
        props["$debug_images"] = [{"ok": 1}, "bad"]
        props["deep"] = deep(200)
        return props

    use(posthog_client, wrong)
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        assert posthog_errors.capture_exception(caught()) is not None
        assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)  # conforms: checked at teardown too
    props = event["properties"]
    entry = props["$exception_list"][0]
    frames = entry["stacktrace"]["frames"]
    assert frames[0]["lineno"] is None and frames[-1]["lineno"] is None
    assert frames[-1]["colno"] is None
    assert len(entry["value"].encode()) <= 10_000 and entry["value"].endswith("...")
    assert props["$exception_level"] == "error"
    assert props["$exception_handled"] is True
    assert "$exception_types" not in props and "$exception_issue_id" not in props
    assert props["$exception_fingerprint"] == "a/1"
    assert props["$issue_name"] == "n" * 252 + "..."  # the server's 255 bytes
    assert props["$debug_images"] == [{"ok": 1}]
    assert json_depth(event) <= 62
    assert posthog_errors.stats()["sent"] == 1
    messages = " ".join(r.getMessage() for r in caplog.records)
    for key in ("$exception_level", "$exception_handled", "$exception_types", "$debug_images"):
        assert key in messages


CRASH_AFTER_LOGGING = """  # a built-in exception type: no weak reference
import logging

def drop_logged(props):
    return None if props["$exception_source"] == "python.logging" else props

posthog_errors.install(client, before_send=drop_logged)
log = logging.getLogger("app")

def work():
    raise KeyError("lost order")

try:
    work()
except KeyError:
    log.exception("work failed")  # dropped by before_send on the worker
    raise                          # the same exception crashes the process
"""


def test_a_crash_after_a_dropped_log_of_the_same_exception_is_reported(
    capture_server: CaptureServer,
) -> None:
    result = run_script(CRASH_AFTER_LOGGING, capture_server.url, hang_after=30)
    assert result.returncode == 1, result.stderr
    assert "KeyError: 'lost order'" in result.stderr  # the app's usual traceback
    [event] = capture_server.wait_for_events(1)
    props = event["properties"]
    assert props["$exception_source"] == "python.sys_excepthook"
    assert props["$exception_level"] == "fatal"
    assert props["$exception_list"][0]["type"] == "KeyError"
