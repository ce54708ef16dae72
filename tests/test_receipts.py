"""Per-event receipts: what PostHog answered reaches stats() and flush(), in both modes.

The real posthog client, in capture v1 and v0, against the loopback capture server
answering chosen verdicts and statuses. An event PostHog dropped, or that ran out of
retries, must never be counted ``sent``; the user's own ``on_error`` must keep seeing
every failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import _receipts
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer, Fault
from tests.conftest import make_client
from tests.scripts import run_script

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol

OUTCOMES = ("sent", "deduplicated", "rate_limited", "filtered", "dropped", "rejected",
            "undelivered")  # fmt: skip


def boom(message: str = "card declined") -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def balanced(counts: dict[str, int]) -> bool:
    return counts["captured"] == sum(counts[name] for name in OUTCOMES)


@pytest.fixture
def errors_seen() -> list[tuple[Exception, list[dict[str, Any]]]]:
    return []


@pytest.fixture(params=["v0", "v1"])
def client(
    request: pytest.FixtureRequest,
    capture_server: CaptureServer,
    errors_seen: list[tuple[Exception, list[dict[str, Any]]]],
) -> Iterator[posthog.Posthog]:
    """A client of each capture mode, with an ``on_error`` of the user's own."""
    client = make_client(
        capture_server,
        capture_mode=request.param,
        on_error=lambda error, batch: errors_seen.append((error, batch)),
    )
    set_default_reporter(Reporter(client))
    yield client
    client.shutdown()


def test_accepted_events_are_sent_and_flush_is_true(
    capture_server: CaptureServer, client: posthog.Posthog, errors_seen: list[Any]
) -> None:
    uuids = [posthog_errors.capture_exception(boom(f"e{i}")) for i in range(3)]
    assert posthog_errors.flush(10) is True
    assert sorted(e["uuid"] for e in capture_server.wait_for_events(3)) == sorted(uuids)
    counts = posthog_errors.stats()
    assert (counts["sent"], counts["rejected"], counts["undelivered"]) == (3, 0, 0)
    assert balanced(counts) and errors_seen == []


def test_v1_event_posthog_drops_is_rejected_not_sent(
    capture_server: CaptureServer, errors_seen: list[Any]
) -> None:
    capture_server.set_fault(Fault(verdict="drop"))
    client = make_client(
        capture_server, capture_mode="v1", on_error=lambda e, b: errors_seen.append((e, b))
    )
    set_default_reporter(Reporter(client))
    try:
        uuid = posthog_errors.capture_exception(boom())
        assert posthog_errors.flush(10) is False
    finally:
        client.shutdown()

    counts = posthog_errors.stats()
    assert (counts["sent"], counts["rejected"], counts["undelivered"]) == (0, 1, 0)
    assert balanced(counts)
    assert capture_server.events == []
    assert capture_server.requests[0].results == {uuid: "drop"}
    # The user's on_error still saw the drop, with the batch, unchanged.
    ((error, batch),) = errors_seen
    assert [uid for uid, _details in error.drops] == [uuid]
    assert [msg["uuid"] for msg in batch] == [uuid]
    assert posthog_errors.flush(1) is True  # the failure was reported once, not for ever


def test_v1_event_that_runs_out_of_retries_is_undelivered(capture_server: CaptureServer) -> None:
    capture_server.set_fault(Fault(verdict="retry"))
    client = make_client(capture_server, capture_mode="v1", max_retries=0)
    set_default_reporter(Reporter(client))
    try:
        uuid = posthog_errors.capture_exception(boom())
        assert posthog_errors.flush(10) is False
    finally:
        client.shutdown()
    counts = posthog_errors.stats()
    assert (counts["sent"], counts["rejected"], counts["undelivered"]) == (0, 0, 1)
    assert capture_server.requests[0].results == {uuid: "retry"}


def test_v1_retry_then_accepted_is_sent_once(capture_server: CaptureServer) -> None:
    capture_server.set_fault(Fault(verdict="retry", verdict_attempts=1))
    client = make_client(capture_server, capture_mode="v1", max_retries=1)
    set_default_reporter(Reporter(client))
    try:
        uuid = posthog_errors.capture_exception(boom())
        assert posthog_errors.flush(15) is True
    finally:
        client.shutdown()
    assert [e["uuid"] for e in capture_server.events] == [uuid]  # once, after its retry
    counts = posthog_errors.stats()
    assert (counts["sent"], counts["rejected"], counts["undelivered"]) == (1, 0, 0)


@pytest.mark.parametrize(
    ("status", "outcome"), [(500, "undelivered"), (400, "rejected"), (413, "rejected")]
)
def test_failed_request_counts_its_events_lost(
    capture_server: CaptureServer,
    client: posthog.Posthog,
    errors_seen: list[Any],
    status: int,
    outcome: str,
) -> None:
    capture_server.set_fault(Fault(status=status))
    posthog_errors.capture_exception(boom("one"))
    posthog_errors.capture_exception(boom("two"))
    assert posthog_errors.flush(10) is False
    counts = posthog_errors.stats()
    assert counts[outcome] == 2 and counts["sent"] == 0
    assert balanced(counts)
    assert errors_seen and all(getattr(e, "status", None) == status for e, _ in errors_seen)
    capture_server.set_fault(None)
    capture_server.clear()  # the server refused them on purpose: no conformance complaint


def test_only_our_events_are_counted(capture_server: CaptureServer, errors_seen: list[Any]) -> None:
    """A batch that also holds the app's own events: only ours move out of ``sent``."""
    capture_server.set_fault(Fault(verdict="drop"))
    client = make_client(
        capture_server,
        capture_mode="v1",
        flush_at=100,
        flush_interval=0.5,
        on_error=lambda e, b: errors_seen.append((e, b)),
    )
    set_default_reporter(Reporter(client))
    try:
        client.capture("page_view", distinct_id="u")
        client.capture_exception(boom("the app's own"), distinct_id="u")
        posthog_errors.capture_exception(boom("ours"))
        assert posthog_errors.flush(10) is False
    finally:
        client.shutdown()
    counts = posthog_errors.stats()
    assert (counts["rejected"], counts["sent"]) == (1, 0)
    assert sum(len(batch) for _, batch in errors_seen) == 3  # the user saw all of them


def test_a_raising_user_on_error_still_counts(capture_server: CaptureServer) -> None:
    capture_server.set_fault(Fault(verdict="drop"))

    def on_error(error: Exception, batch: list[dict[str, Any]]) -> None:
        raise RuntimeError("the user's callback is broken")

    client = make_client(capture_server, capture_mode="v1", on_error=on_error)
    set_default_reporter(Reporter(client))
    try:
        posthog_errors.capture_exception(boom())
        assert posthog_errors.flush(10) is False
    finally:
        client.shutdown()
    assert posthog_errors.stats()["rejected"] == 1


def test_receipts_are_chained_once_and_the_ledger_stays_small(
    capture_server: CaptureServer, client: posthog.Posthog
) -> None:
    for i in range(30):
        posthog_errors.capture_exception(boom(f"e{i}"))
    assert posthog_errors.flush(10)
    ledger = _receipts.watch(client)
    assert ledger is not None
    ledger.add("0192e7c4-0000-4000-8000-00000000ffff")  # the lane is idle: earlier ones go
    assert list(ledger.pending) == ["0192e7c4-0000-4000-8000-00000000ffff"]
    lane = client._analytics_lane
    assert isinstance(lane.on_error, _receipts._Receipt)
    assert lane.on_error.ledger is ledger
    assert not isinstance(lane.on_error.replaced, _receipts._Receipt)  # not stacked
    assert lane.consumers and all(c.on_error is lane.on_error for c in lane.consumers)


def test_the_ledger_is_bounded() -> None:
    class Idle:
        class queue:
            unfinished_tasks = 1

    ledger = _receipts._Ledger(Idle())
    for i in range(_receipts.LEDGER_LIMIT + 50):
        ledger.add(f"uuid-{i}")
    assert len(ledger.pending) == _receipts.LEDGER_LIMIT
    assert next(iter(ledger.pending)) == "uuid-50"  # the oldest went first


def test_install_in_a_child_process_reports_a_drop(capture_server: CaptureServer) -> None:
    """As production runs it: install() at startup, a v1 client, PostHog dropping."""
    capture_server.set_fault(Fault(verdict="drop"))
    result = run_script(
        """
        import json
        client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01,
                                 max_retries=0, capture_mode="v1")
        posthog_errors.install(client=client, logs=False)
        try:
            {}["missing"]
        except KeyError as exc:
            posthog_errors.capture_exception(exc)
        print(json.dumps({"flushed": posthog_errors.flush(10),
                          "stats": posthog_errors.stats()}))
        """,
        capture_server.url,
        hang_after=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["flushed"] is False
    assert report["stats"]["rejected"] == 1 and report["stats"]["sent"] == 0
    assert capture_server.requests[0].results is not None
    assert list(capture_server.requests[0].results.values()) == ["drop"]
