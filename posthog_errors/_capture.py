"""The manual entry point, and the process-wide controls: flush and stats."""

from __future__ import annotations

import sys
import time
from typing import Any

from posthog_errors._conform import bad_input
from posthog_errors._delivery import worker
from posthog_errors._logs_delivery import flush_logs
from posthog_errors._reporter import default_reporter
from posthog_errors._stats import STATS

__all__ = ["capture_exception", "flush", "stats"]


def capture_exception(
    exc: BaseException | None = None,
    *,
    level: str = "error",
    distinct_id: Any = None,
    properties: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> str | None:
    """Report ``exc`` (default: the exception being handled) to PostHog.

    Returns the event uuid at once; the payload is built and sent in the background. Returns
    None when nothing will be sent: already captured (by any door, or by posthog-python),
    ignored, rate-limited, the queue is full, or no client is configured.

    Bad input never raises and never drops the event when it can be sent: a ``level`` that
    is not one of PostHog's is sent as ``error``, ``properties`` that are not a mapping are
    left out, each said once (a warning on the ``posthog_errors`` logger) and counted in
    ``stats()["invalid_input"]``. Something that is not an exception (a string) is not
    sent, as posthog-python's ``capture_exception`` does: None, a warning, counted.
    """
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            bad_input(
                "capture with no exception",
                "capture_exception() was called with no exception and none is being handled: "
                "nothing is sent",
            )
            return None
    elif not isinstance(exc, BaseException):
        bad_input(
            "capture of a non-exception",
            "capture_exception() takes an exception, got %s: nothing is sent",
            type(exc).__name__,
        )
        return None
    return default_reporter().capture(
        exc,
        level=level,
        handled=True,
        mechanism="generic",
        source=None,  # the spec: a manual capture sends no $exception_source
        distinct_id=distinct_id,
        properties=properties,
        fingerprint=fingerprint,
    )


def flush(timeout: float | None = 5.0) -> bool:
    """Send everything captured so far; True if it all went out within ``timeout`` seconds.

    "Went out" means handed to the posthog client and drained from its queue, with no
    upload reported failed by the client since the last flush (with capture v1, no event of
    ours that PostHog answered ``drop`` for, or that ran out of retries); and every PostHog
    Logs record queued so far sent (or given up), in the same ``timeout``.
    """
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    events = worker().flush(timeout)
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    return flush_logs(remaining) and events


def stats() -> dict[str, int]:
    """Counters since start: captured, sent, deduplicated, rate_limited, filtered, dropped,
    rejected, undelivered, internal_errors, invalid_input; and PostHog Logs' ``logs_*``
    (queued, sent, filtered, rate_limited, dropped, dropped_queue_full, rejected,
    undelivered: docs/logs.md).

    After a flush, captured equals the sum of the outcomes sent + deduplicated +
    rate_limited + filtered + dropped + rejected + undelivered. ``sent`` is handed to the
    posthog client and not reported lost since: an event the client's ``on_error`` reports
    refused by PostHog (with capture v1, per event) moves to ``rejected``, one it gave up
    sending to ``undelivered``."""
    return STATS.snapshot()
