"""The manual entry point, and the process-wide controls: flush and stats."""

from __future__ import annotations

import sys
from typing import Any

from posthog_errors._delivery import worker
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
    """
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            STATS.add("invalid_input")
            return None
    elif not isinstance(exc, BaseException):
        STATS.add("invalid_input")
        return None
    return default_reporter().capture(
        exc,
        level=level,
        handled=True,
        mechanism="generic",
        source="python.manual",
        distinct_id=distinct_id,
        properties=properties,
        fingerprint=fingerprint,
    )


def flush(timeout: float | None = 5.0) -> bool:
    """Send everything captured so far; True if it all went out within ``timeout`` seconds.

    "Went out" means handed to the posthog client and drained from its queue, with no
    upload reported failed by the client since the last flush.
    """
    return worker().flush(timeout)


def stats() -> dict[str, int]:
    """Counters since start: captured, sent, deduplicated, rate_limited, filtered, dropped,
    internal_errors, invalid_input. After a flush, captured equals the sum of the outcomes
    sent + deduplicated + rate_limited + filtered + dropped."""
    return STATS.snapshot()
