"""Whatever the user passes, every event on the wire meets the server's types
(exception-event.md, "Keys the server reads as typed fields")."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import posthog
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posthog_errors
from posthog_errors import _conform, _rate_limit
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.handler import PostHogHandler
from tests.conformance import assert_event_conforms, json_depth
from tests.conftest import make_client

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol

TYPED_KEYS = sorted(_conform.TYPED_KEYS)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    _conform.reset_warnings()
    yield
    _conform.reset_warnings()


def caught() -> ValueError:
    try:
        raise ValueError("checkout failed")
    except ValueError as exc:
        return exc


def test_wrong_typed_keys_are_dropped_or_coerced_and_said_once_per_key(
    capture_server: CaptureServer, reporter: Reporter, caplog: pytest.LogCaptureFixture
) -> None:
    issue = uuid.uuid4()
    wrong = {
        "$exception_types": "ValueError",  # dropped: not a list
        "$exception_values": ["ok", None, 3],  # dropped: an item is not a string
        "$exception_functions": ["handler", None],  # valid: kept
        "$exception_releases": ["1.0"],  # dropped: not an object
        "$exception_issue_id": issue.hex.upper(),  # valid: sent in its canonical form
        "$exception_proposed_fingerprint": 12,  # coerced to "12"
        "$issue_name": {"a": 1},  # dropped
        "$issue_description": None,  # dropped
        "$exception_fingerprint_record": [{"type": "manual"}, {"type": "bogus"}, "x"],
        "$debug_images": {"not": "a list"},  # dropped
        "$exception_handled": "no",  # the payload's own value wins
        "plan": "pro",
    }
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for _ in range(2):
            assert posthog_errors.capture_exception(caught(), properties=wrong) is not None
        assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    for event in events:
        assert_event_conforms(event)
        props = event["properties"]
        for key in (
            "$exception_types",
            "$exception_values",
            "$exception_releases",
            "$issue_name",
            "$issue_description",
            "$debug_images",
        ):
            assert key not in props, key
        assert props["$exception_functions"] == ["handler", None]
        assert props["$exception_issue_id"] == str(issue)
        assert props["$exception_proposed_fingerprint"] == "12"
        assert props["$exception_fingerprint_record"] == [{"type": "manual"}]
        assert props["$exception_handled"] is True
        assert props["plan"] == "pro"
    # Eight keys needed a fix, in each of two events; each key is logged once.
    stats = posthog_errors.stats()
    assert stats["invalid_input"] == 16 and stats["internal_errors"] == 0
    assert stats["sent"] == 2
    warned = [r.getMessage() for r in caplog.records if r.name == "posthog_errors"]
    assert len(warned) == 8, warned


def test_a_sentry_derived_line_number_is_an_unsigned_32_bit_int_or_null(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    def frame(lineno: Any) -> dict[str, Any]:
        return {
            "platform": "python",
            "filename": "app.py",
            "abs_path": "/srv/app.py",
            "function": "handler",
            "module": "app",
            "lineno": lineno,
            "pre_context": [],
            "context_line": None,
            "post_context": [],
            "in_app": True,
        }

    entry = {
        "type": "ValueError",
        "value": "bad \ud800 " + "é" * 20_000,
        "module": None,
        "mechanism": {"type": "generic", "handled": True, "synthetic": False, "exception_id": 0},
        "stacktrace": {
            "type": "raw",
            "frames": [frame(True), frame(2**32), frame(2**32 - 1), frame(-1), frame(7)],
        },
    }
    assert reporter.capture_prebuilt([entry], source="sentry.event_processor") is not None
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    sent = event["properties"]["$exception_list"][0]
    assert [f["lineno"] for f in sent["stacktrace"]["frames"]] == [None, None, 2**32 - 1, None, 7]
    assert len(sent["value"].encode("utf-8")) <= 10_000 and "\ud800" not in sent["value"]
    assert entry["stacktrace"]["frames"][0]["lineno"] is True  # the given list: not edited


def test_deeply_nested_user_properties_are_bounded(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    deep: Any = "bottom"
    for _ in range(500):
        deep = {"next": [deep]}
    assert posthog_errors.capture_exception(caught(), properties={"deep": deep}) is not None
    with posthog_errors.bind(properties={"bound": deep}):
        assert posthog_errors.capture_exception(caught()) is not None
    assert posthog_errors.flush(5)
    for event in capture_server.wait_for_events(2):
        assert json_depth(event) <= 62


# -- property-based: arbitrary user input, every door, every event conforms --------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=10),
    st.uuids(),
    st.builds(object),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(TYPED_KEYS)), inner),
    ),
    max_leaves=20,
)
_properties = st.dictionaries(
    st.one_of(st.sampled_from(TYPED_KEYS), st.text(max_size=12)), _values, max_size=8
)


# Keys a LogRecord owns cannot be passed as ``extra``.
_OWNED = {*logging.LogRecord("n", 0, "p", 0, "m", None, None).__dict__, "message", "asctime"}


@pytest.fixture(scope="module")
def server() -> Iterator[CaptureServer]:
    with CaptureServer() as capture:
        yield capture


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(manual=_properties, extra=_properties, bound=_properties)
def test_every_event_conforms_whatever_the_user_properties(
    server: CaptureServer, manual: dict[str, Any], extra: dict[str, Any], bound: dict[str, Any]
) -> None:
    _rate_limit.configure(None)  # the same two lines, every example
    client: posthog.Posthog = make_client(server)
    previous = set_default_reporter(Reporter(client))
    log = logging.getLogger("tests.typed_keys.hypothesis")
    handler = PostHogHandler(client=client)
    log.addHandler(handler)
    log.propagate = False
    before = len(server.exception_events())
    try:
        with posthog_errors.bind(properties=bound):
            posthog_errors.capture_exception(caught(), properties=manual)
            try:
                raise KeyError("logged")
            except KeyError:
                log.exception("failed", extra={k: v for k, v in extra.items() if k not in _OWNED})
        assert posthog_errors.flush(5)
        events = server.wait_for_events(before + 2)[before:]
    finally:
        log.removeHandler(handler)
        set_default_reporter(previous)
        client.shutdown()
    assert len(events) == 2
    for event in events:
        assert_event_conforms(event)
    assert posthog_errors.stats()["internal_errors"] == 0
