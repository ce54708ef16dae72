"""Receipts: what becomes of an event after the posthog client took it.

``client.capture()`` returning a uuid means *queued*, not *delivered*. What PostHog then
answers reaches only the client's ``on_error(error, batch)`` callback, from its consumer
threads: in both capture modes when an upload fails for good (after the client's own
retries), and in capture v1 also per event, when PostHog answers ``drop`` for it or keeps
answering ``retry`` until the client gives up (:class:`posthog.capture_v1.CaptureV1Error`
names those uuids).

So the first time an event goes to a client, :func:`watch` puts a :class:`_Receipt` in
front of the ``on_error`` of its analytics lane (where ``capture()`` queues events) and of
that lane's consumers, which copy the lane's callback when they start. It counts the events
of ours that the error names, then calls the callback it replaced, the user's own, with
the same arguments: the user's ``on_error`` keeps working, and an exception from it goes
where it went before (the client logs it).

Only our events are counted: the lane's :class:`_Ledger` holds the uuids of the events
we handed to it that may still fail. It stays small without a timer: when a lane's queue
has no unfinished work, every event handed to it before has had its answer, so the ledger
is emptied before the next one goes in. It never holds more than ``LEDGER_LIMIT`` uuids.

This reads the client's private ``_analytics_lane`` and its ``on_error``, ``consumers``
and ``queue``. :func:`missing_internals` names whatever posthog-errors reads of a client
that it lacks; a client without it still works, with ``sent`` meaning "handed over" (said
once).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from posthog_errors import _guard
from posthog_errors._conform import warn_once
from posthog_errors._stats import STATS

__all__ = ["LEDGER_LIMIT", "failures", "missing_internals", "watch"]

# About a megabyte of uuid strings at most; more than a client queue holds by default.
LEDGER_LIMIT = 10_000

# Statuses after which retrying cannot help: PostHog refused the batch itself.
_REFUSED_STATUSES = frozenset({400, 401, 402, 403, 413, 415})
_FAILURES = itertools.count()  # our events reported lost, ever: flush() compares


class _Ledger:
    """The uuids of our events that one lane of one client has not answered for yet."""

    __slots__ = ("lane", "pending")

    def __init__(self, lane: Any) -> None:
        self.lane = lane
        self.pending: dict[str, None] = {}

    def add(self, uuid: str) -> None:
        """Note that the event ``uuid`` is about to go to the lane."""
        pending = self.pending
        if pending and not getattr(self.lane.queue, "unfinished_tasks", 1):
            pending.clear()  # the lane is idle: all of those had their answer
        while len(pending) >= LEDGER_LIMIT:
            try:
                del pending[next(iter(pending))]
            except (KeyError, RuntimeError, StopIteration):
                break  # a consumer thread changed it meanwhile
        pending[uuid] = None

    def claim(self, uuids: list[str]) -> list[str]:
        """The uuids among ``uuids`` that are ours, each claimed once."""
        return [uuid for uuid in uuids if self.pending.pop(uuid, False) is None]


class _Receipt:
    """Stands in for one ``on_error``: counts our lost events, then calls the replaced one."""

    __slots__ = ("ledger", "replaced")

    def __init__(self, ledger: _Ledger, replaced: Callable[..., Any] | None) -> None:
        self.ledger = ledger
        self.replaced = replaced

    def __call__(self, error: Exception, batch: Any) -> Any:
        try:
            _count(self.ledger, error, batch)
        except Exception as internal:
            _guard.internal_error(internal, reraise=False)
        if self.replaced is not None:
            return self.replaced(error, batch)
        return None


def _count(ledger: _Ledger, error: Exception, batch: Any) -> None:
    """Count the events of ours that ``error`` says were lost: ``rejected`` when PostHog
    refused them, ``undelivered`` when the client ran out of retries or of network."""
    uuids = [msg.get("uuid") for msg in batch if isinstance(msg, dict)]
    status = getattr(error, "status", None)
    dropped = [uuid for uuid, _details in getattr(error, "drops", None) or ()]
    exhausted = list(getattr(error, "retry_exhausted", None) or ())
    if isinstance(status, int) and 200 <= status < 300 and (dropped or exhausted):
        # A v1 answer that accepted the rest: only the named events were lost.
        rejected, undelivered = ledger.claim(dropped), ledger.claim(exhausted)
    else:
        # The whole batch failed (a refused or failed request, a broken answer); events
        # PostHog dropped on an earlier attempt of it are still its refusals.
        rejected = ledger.claim(dropped)
        rest = ledger.claim([uuid for uuid in uuids if isinstance(uuid, str)])
        if isinstance(status, int) and status in _REFUSED_STATUSES:
            rejected += rest
            undelivered = []
        else:
            undelivered = rest
    if rejected:
        STATS.add("rejected", len(rejected))
    if undelivered:
        STATS.add("undelivered", len(undelivered))
    for _ in range(len(rejected) + len(undelivered)):
        next(_FAILURES)


def failures() -> int:
    """How many of our events were reported lost so far (for ``flush()``'s answer)."""
    text = repr(_FAILURES)  # "count(7)"
    return int(text[text.index("(") + 1 : -1])


def missing_internals(client: Any) -> list[str]:
    """What of the client's private structure posthog-errors reads is missing (empty: all
    there). The test suite asserts it is empty for the installed posthog."""
    missing = []
    lanes = getattr(client, "_lanes", None)
    if not isinstance(lanes, (list, tuple)) or not lanes:
        missing.append("client._lanes")  # read by flush(): is anything still in flight?
    lane = getattr(client, "_analytics_lane", None)
    if lane is None:
        return [*missing, "client._analytics_lane"]
    for name in ("on_error", "consumers", "queue", "max_msg_size"):
        if not hasattr(lane, name):
            missing.append(f"client._analytics_lane.{name}")
    if not hasattr(getattr(lane, "queue", None), "unfinished_tasks"):
        missing.append("client._analytics_lane.queue.unfinished_tasks")
    return missing


def watch(client: Any) -> _Ledger | None:
    """Put a receipt in front of the ``on_error`` of the client's analytics lane (where
    ``capture()`` puts events) and of each of its consumers, once; the lane's ledger, or
    None for a client we cannot watch."""
    try:
        lane = client._analytics_lane
        receipt = lane.on_error
        if not isinstance(receipt, _Receipt):
            if not hasattr(lane.queue, "unfinished_tasks"):
                raise AttributeError("unfinished_tasks")
            receipt = lane.on_error = _Receipt(_Ledger(lane), receipt)
        for consumer in lane.consumers:
            current = consumer.on_error
            if current is receipt or isinstance(current, _Receipt):
                continue
            if current is receipt.replaced:
                consumer.on_error = receipt
            else:  # a consumer given a callback of its own: keep it, behind the same ledger
                consumer.on_error = _Receipt(receipt.ledger, current)
        return receipt.ledger
    except (AttributeError, TypeError):
        warn_once(
            "client internals",
            "this posthog client (%s) lacks %s: uploads that fail after capture() are not "
            "counted, and stats()['sent'] means handed to the client",
            type(client).__name__,
            ", ".join(missing_internals(client)) or "the lanes posthog-errors knows",
        )
        return None
