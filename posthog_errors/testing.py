"""Testing helpers for your own test suite.

``capture_exceptions()`` is the counterpart of ``structlog.testing.capture_logs``: inside the
block, every capture from any door (``capture_exception``, the logging handler, the hooks,
the structlog processor, the middlewares, Sentry) lands in a list of the ``$exception``
events that would have been sent, instead of the network. No client is needed.

.. code-block:: python

    from posthog_errors.testing import capture_exceptions

    def test_checkout_failure_is_reported():
        with capture_exceptions() as events:
            client.post("/checkout", headers={"X-POSTHOG-DISTINCT-ID": "user-1"})
        [event] = events
        assert event["distinct_id"] == "user-1"
        assert event["properties"]["$exception_list"][0]["type"] == "PaymentError"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from posthog_errors._delivery import worker
from posthog_errors._snapshot import EventSnapshot
from posthog_errors._stats import STATS

__all__ = ["capture_exceptions"]


@contextmanager
def capture_exceptions() -> Iterator[list[dict[str, Any]]]:
    """Collect the events captured inside the block; yields the (growing) list.

    Events are built at once, on the capturing thread, with your ``before_send`` applied.
    Rate limiting is off inside the block, so every capture is there to assert on;
    deduplication still applies (one exception object is one event). Not meant to be used
    from several threads' tests at once: the redirection is process-wide.
    """
    events: list[dict[str, Any]] = []

    def collect(snapshot: EventSnapshot) -> None:
        event = snapshot.reporter.build_event(snapshot)
        if event is not None:
            event["timestamp"] = event["timestamp"].isoformat()
            events.append(event)
            STATS.add("sent")

    delivery = worker()
    previous_sink = delivery.redirect(collect)
    try:
        yield events
    finally:
        delivery.redirect(previous_sink)
