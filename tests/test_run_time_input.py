"""Bad run-time input keeps the event and says so once per kind; ``value`` is what Python
prints (message and notes), cut at the server's 10,000 UTF-8 bytes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import posthog_errors
from posthog_errors import _conform
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    _conform.reset_warnings()
    yield
    _conform.reset_warnings()


def caught(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as error:
        return error


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "posthog_errors"]


def test_a_bogus_level_is_sent_as_error_with_one_warning(
    capture_server: CaptureServer, reporter: Reporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for level in ("bogus", "bogus", 3):
            level_arg: Any = level
            assert posthog_errors.capture_exception(caught(ValueError()), level=level_arg)
        assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(3)
    assert [e["properties"]["$exception_level"] for e in events] == ["error"] * 3
    stats = posthog_errors.stats()
    assert (stats["sent"], stats["invalid_input"], stats["internal_errors"]) == (3, 3, 0)
    [warning] = warnings_of(caplog)
    assert "'bogus'" in warning and "error" in warning


@pytest.mark.parametrize("properties", ["x", 42, ["a", "b"], {"a", "b"}])
def test_properties_that_are_not_a_mapping_are_left_out_and_the_event_sent(
    capture_server: CaptureServer,
    reporter: Reporter,
    caplog: pytest.LogCaptureFixture,
    properties: Any,
) -> None:
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for _ in range(2):
            exc = caught(ValueError("sent anyway"))
            assert posthog_errors.capture_exception(exc, properties=properties) is not None
        assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert [e["properties"]["$exception_list"][0]["value"] for e in events] == ["sent anyway"] * 2
    stats = posthog_errors.stats()
    assert (stats["sent"], stats["invalid_input"], stats["internal_errors"]) == (2, 2, 0)
    [warning] = warnings_of(caplog)
    assert "properties must be a mapping" in warning


def test_a_non_exception_is_not_sent_counted_and_said_once(
    capture_server: CaptureServer, reporter: Reporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for bad in ("something failed", 42, None):
            bad_arg: Any = bad
            assert posthog_errors.capture_exception(bad_arg) is None
        # Straight to a reporter (a door that found no exception object): the same.
        assert reporter.capture("oops") is None  # type: ignore[arg-type]
        assert posthog_errors.flush(5)
    stats = posthog_errors.stats()
    assert (stats["captured"], stats["invalid_input"], stats["internal_errors"]) == (0, 4, 0)
    warned = warnings_of(caplog)
    assert len(warned) == 2, warned  # a non-exception, once; nothing being handled, once
    assert any("got str" in w for w in warned)
    assert capture_server.exception_events() == []


def test_value_is_the_message_and_its_notes_as_python_prints_them(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    exc = ValueError("payment declined")
    exc.__notes__ = ["while charging order 42", "retry 3 of 3\nthen gave up"]
    assert posthog_errors.capture_exception(caught(exc)) is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    value = event["properties"]["$exception_list"][0]["value"]
    assert value == "payment declined\nwhile charging order 42\nretry 3 of 3\nthen gave up"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="built-in exception groups")
def test_an_exception_group_value_is_its_message_without_the_count(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    group = ExceptionGroup("batch failed", [ValueError("a"), KeyError("b"), OSError("c")])  # noqa: F821
    group.add_note("batch 7")
    assert str(group) == "batch failed (3 sub-exceptions)"
    assert posthog_errors.capture_exception(caught(group)) is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    entries = event["properties"]["$exception_list"]
    assert entries[0]["value"] == "batch failed\nbatch 7"
    assert [e["value"] for e in entries[1:]] == ["a", "'b'", "c"]


@pytest.mark.parametrize("char", ["m", "é", "€", "😀"])
def test_value_is_cut_at_10000_utf8_bytes_on_a_character_boundary(
    capture_server: CaptureServer, reporter: Reporter, char: str
) -> None:
    exc = ValueError(char * 30_000)
    exc.__notes__ = ["never reached"]
    assert posthog_errors.capture_exception(caught(exc)) is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    value = event["properties"]["$exception_list"][0]["value"]
    encoded = value.encode("utf-8")
    assert value.endswith("...") and set(value[:-3]) == {char}
    assert 10_000 - len(char.encode()) < len(encoded) <= 10_000
