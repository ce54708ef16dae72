"""What posthog-errors reads of the posthog client that is not its public API.

Each of these is read defensively (a client without it still works, with less), so a
posthog release that renames one would not break an app: it would quietly make stats()
and flush() less exact. These tests make that loud instead: they fail, naming the
attribute, the day the installed posthog stops having it. See the compatibility note in
CHANGELOG.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import posthog
import pytest

from posthog_errors import _receipts
from posthog_errors._dedupe import CAPTURED_ATTR, UUID_ATTR
from posthog_errors._reporter import _client_limit
from posthog_errors.capture_server import CaptureServer
from tests.conftest import make_client

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol


@pytest.fixture(params=["v0", "v1", "sync"])
def client(
    request: pytest.FixtureRequest, capture_server: CaptureServer
) -> Iterator[posthog.Posthog]:
    if request.param == "sync":
        built = make_client(capture_server, sync_mode=True)
    else:
        built = make_client(capture_server, capture_mode=request.param)
    yield built
    built.shutdown()


def test_lanes_consumers_and_queues_are_where_receipts_read_them(
    client: posthog.Posthog,
) -> None:
    client.capture("warm_up", distinct_id="u")  # lazy lanes start their consumers now
    assert _receipts.missing_internals(client) == []
    assert _receipts.watch(client) is not None
    for consumer in client._analytics_lane.consumers:
        assert callable(consumer.on_error)  # ours, in front of the user's (None here)
    assert client.flush() is not False


def test_the_per_event_size_limit_is_the_clients_own(client: posthog.Posthog) -> None:
    lane_limit = client._analytics_lane.max_msg_size
    assert isinstance(lane_limit, int) and lane_limit > 0
    assert _client_limit(client) == lane_limit


def test_capture_v1_error_names_the_lost_events() -> None:
    from posthog.capture_v1 import CaptureV1Error

    error = CaptureV1Error(200, "dropped", drops=[("u-1", "why")], retry_exhausted=["u-2"])
    assert (error.status, error.drops, error.retry_exhausted) == (200, [("u-1", "why")], ["u-2"])


def test_http_sessions_replaced_after_fork_are_where_we_replace_them() -> None:
    request = importlib.import_module("posthog.request")
    for name in ("_session", "_flags_session", "_build_session", "_build_flags_session"):
        assert hasattr(request, name), f"posthog.request.{name} is gone"
    assert hasattr(request, "_socket_options")
    assert callable(request.reset_sessions)


def test_the_captured_mark_is_posthog_pythons(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    try:
        raise ValueError("marked by posthog-python")
    except ValueError as exc:
        uuid = posthog_client.capture_exception(exc, distinct_id="u")
        assert getattr(exc, CAPTURED_ATTR) is True
        assert getattr(exc, UUID_ATTR) == uuid


def test_the_lazy_os_description_is_warmed_where_it_lives() -> None:
    from posthog.utils import system_context

    assert isinstance(system_context(), dict)


def test_a_client_without_them_still_sends_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client-like object with only the public API: events still go, with one warning
    naming what is missing, and ``sent`` meaning handed over."""
    import logging

    import posthog_errors
    from posthog_errors._reporter import Reporter, set_default_reporter

    class PublicOnly:
        def __init__(self) -> None:
            self.captured: list[str] = []

        def capture(self, event: str, **kwargs: object) -> object:
            self.captured.append(str(kwargs["uuid"]))
            return kwargs["uuid"]

        def flush(self, timeout: float | None = None) -> None:
            pass

    from posthog_errors._conform import reset_warnings

    reset_warnings()
    client = PublicOnly()
    assert _receipts.missing_internals(client) == ["client._lanes", "client._analytics_lane"]
    set_default_reporter(Reporter(client))
    with caplog.at_level(logging.WARNING, logger="posthog_errors"):
        for message in ("one", "two"):
            try:
                raise ValueError(message)
            except ValueError as exc:
                posthog_errors.capture_exception(exc)
        assert posthog_errors.flush(5)
    assert len(client.captured) == 2 and posthog_errors.stats()["sent"] == 2
    warnings = [r.getMessage() for r in caplog.records if "client._lanes" in r.getMessage()]
    assert len(warnings) == 1 and "handed to the client" in warnings[0]
