"""The whole event against the size budget: exception list and user properties together.

The posthog client drops an event over 900 KiB of JSON in its consumer thread, after
``capture()`` returned its uuid; nothing tells the caller. So the event is measured whole
and shrunk here (big user properties first, the exception list only after), and one that
still cannot fit is dropped and counted as ``dropped``, never as ``sent``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import PostHogHandler, exception_properties
from posthog_errors._bounded import CUT_VALUE, QUEUED_BUDGET
from posthog_errors._frames import FrameBuilder
from posthog_errors._options import PayloadOptions
from posthog_errors._payload import build_properties_sized
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors._snapshot import EventSnapshot, walk_exceptions
from posthog_errors.capture_server import CaptureServer

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol

CLIENT_LIMIT = 900 * 1024
BUDGET = PayloadOptions().max_event_bytes


def failing_import(batch: str) -> None:
    rows_seen = 3  # noqa: F841 (a local: code variables show it)
    raise ValueError(f"import of {batch} failed")


def megabyte_of_rows() -> list[dict[str, str]]:
    """About 1 MB of JSON that passes the per-piece caps (100 items, 1,024 characters)."""
    rows = [{f"field{j}": chr(ord("a") + j) * 1000 for j in range(10)} for _ in range(100)]
    assert len(json.dumps(rows)) > 1_000_000
    return rows


@pytest.fixture
def logger(posthog_client: posthog.Posthog) -> Iterator[logging.Logger]:
    log = logging.getLogger("test.event_size")
    handler = PostHogHandler(reporter=Reporter(posthog_client, capture_code_variables=True))
    log.addHandler(handler)
    log.propagate = False
    yield log
    log.removeHandler(handler)
    log.propagate = True


def test_a_megabyte_of_log_extras_is_cut_and_the_event_arrives_whole_otherwise(
    capture_server: CaptureServer, logger: logging.Logger
) -> None:
    try:
        failing_import("batch-7")
    except ValueError as exc:
        logger.exception(
            "import failed", extra={"failed_rows": megabyte_of_rows(), "order_id": "A-1"}
        )
        expected = exception_properties(exc, capture_code_variables=True)["$exception_list"]
    assert posthog_errors.flush(10)

    [event] = capture_server.exception_events()
    assert len(json.dumps(event)) < CLIENT_LIMIT
    props = event["properties"]
    assert len(json.dumps(props)) <= BUDGET
    # The big property was cut on the caller's thread, before it was queued (each queued
    # event holds at most QUEUED_BUDGET characters of the app's values): its first rows
    # whole, the rest marked; the small properties after it are kept.
    rows = props["failed_rows"]
    assert isinstance(rows, list) and len(rows) == 100
    assert rows[0] == {f"field{j}": chr(ord("a") + j) * 1000 for j in range(10)}
    assert rows[-1] == CUT_VALUE
    assert len(json.dumps(rows)) < QUEUED_BUDGET + 100 * len(CUT_VALUE) + 4096
    assert props["order_id"] == "A-1"
    assert props["log_message"] == "import failed"
    # The exception list is intact: frames, context lines and code variables.
    [entry] = props["$exception_list"]
    assert (entry["type"], entry["value"]) == ("ValueError", "import of batch-7 failed")
    assert entry["stacktrace"] == expected[0]["stacktrace"]
    innermost = entry["stacktrace"]["frames"][-1]
    assert innermost["function"] == "failing_import"
    assert innermost["pre_context"] and innermost["context_line"]
    assert innermost["code_variables"]["rows_seen"] == 3
    stats = posthog_errors.stats()
    assert (stats["sent"], stats["dropped"]) == (1, 0)


def test_an_event_still_over_the_client_limit_is_dropped_and_counted_dropped(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    def enlarge(properties: dict[str, Any]) -> dict[str, Any]:
        properties["attachment"] = "y" * CLIENT_LIMIT  # after our shrinking
        return properties

    set_default_reporter(Reporter(posthog_client, before_send=enlarge))
    try:
        failing_import("batch-8")
    except ValueError as exc:
        assert posthog_errors.capture_exception(exc) is not None
    posthog_errors.flush(10)

    assert capture_server.exception_events() == []
    stats = posthog_errors.stats()
    assert (stats["captured"], stats["sent"], stats["dropped"]) == (1, 0, 1)

    # The next event, within the limit, goes out as usual.
    set_default_reporter(Reporter(posthog_client))
    try:
        failing_import("batch-9")
    except ValueError as exc:
        posthog_errors.capture_exception(exc)
    assert posthog_errors.flush(10)
    [event] = capture_server.exception_events()
    assert event["properties"]["$exception_list"][0]["value"] == "import of batch-9 failed"
    assert posthog_errors.stats()["sent"] == 1


def test_a_client_that_adds_too_much_gets_no_event_over_its_limit(
    capture_server: CaptureServer,
) -> None:
    client = posthog.Posthog(
        "phc_test_key",
        host=capture_server.url,
        flush_interval=0.05,
        max_retries=0,
        super_properties={"deploy_notes": "z" * (CLIENT_LIMIT - 2000)},
    )
    try:
        set_default_reporter(Reporter(client))
        try:
            failing_import("batch-10")
        except ValueError as exc:
            posthog_errors.capture_exception(exc)
        posthog_errors.flush(10)
        assert capture_server.exception_events() == []
        stats = posthog_errors.stats()
        assert (stats["sent"], stats["dropped"]) == (0, 1)
    finally:
        client.shutdown()


def test_several_big_properties_are_cut_largest_first_until_it_fits() -> None:
    big = ["b" * 1000] * 100  # ~100 KB
    bigger = ["c" * 1020] * 100
    try:
        failing_import("batch-11")
    except ValueError as exc:
        exceptions = walk_exceptions(exc, max_exceptions=50, max_frames=100, max_value_length=8192)
    options = PayloadOptions(max_event_bytes=150 * 1024)
    snapshot = EventSnapshot(
        uuid="",
        timestamp=0.0,
        exceptions=exceptions,
        level="error",
        handled=True,
        mechanism="generic",
        source=None,
        properties={"big": big, "bigger": bigger, "small": "kept"},
    )
    properties, size = build_properties_sized(snapshot, FrameBuilder(options))

    assert size == len(json.dumps(properties))
    assert size <= 150 * 1024
    assert isinstance(properties["bigger"], str)  # the largest went first...
    assert properties["big"] == big  # ...and that was enough
    assert properties["small"] == "kept"
    assert properties["$exception_list"][0]["stacktrace"]["frames"][-1]["pre_context"]


def test_a_typed_key_too_big_is_removed_not_turned_into_a_string(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    fields = ("debug_id", "code_file", "image_addr", "arch")
    images = [{field: field[0] * 1000 for field in fields} for _ in range(100)]  # ~400 KB
    try:
        failing_import("batch-12")
    except ValueError as exc:
        posthog_errors.capture_exception(
            exc,
            properties={
                "$debug_images": images,
                "rows": [["r" * 1000] * 100] * 2,  # ~200 KB
            },
        )
    assert posthog_errors.flush(10)
    [event] = capture_server.exception_events()
    props = event["properties"]
    # The largest goes first; a string in its place would reject the whole event.
    assert "$debug_images" not in props
    # The rest is cut before it is queued (QUEUED_BUDGET): rows arrive, their head whole.
    assert props["rows"][0][:10] == ["r" * 1000] * 10


def test_a_huge_int_in_extras_does_not_break_the_event(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    try:
        failing_import("batch-13")
    except ValueError as exc:
        posthog_errors.capture_exception(exc, properties={"checksum": 7**6000, "small": 12})
    assert posthog_errors.flush(10)
    [event] = capture_server.exception_events()
    props = event["properties"]
    assert props["checksum"] == f"<int with {(7**6000).bit_length()} bits>"
    assert props["small"] == 12
    assert posthog_errors.stats()["sent"] == 1
