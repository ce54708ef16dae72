"""Process-wide counters behind :func:`posthog_errors.stats`.

Every exception that reaches an entry point is counted once as ``captured`` and, once it has
left the pipeline, once more under exactly one outcome, so that after a flush::

    captured == sent + deduplicated + rate_limited + filtered + dropped
                + rejected + undelivered

``dropped`` covers every loss that is not a decision (queue full, no client, an internal
error while building). ``rejected`` and ``undelivered`` are events the posthog client took
and then reported lost: PostHog refused them (capture v1's per-event ``drop``, or a refused
request), or the client gave up on retries or the network. They were counted ``sent`` when
handed over and leave ``sent`` when the report comes, so ``sent`` never includes an event
known lost. ``internal_errors`` counts the library's own bugs that the guard swallowed;
``invalid_input`` counts run-time bad input that was given a safe fallback. The ``logs_*``
counters are PostHog Logs' own (``_logs_delivery`` says how they add up).
"""

from __future__ import annotations

import itertools

__all__ = ["COUNTER_NAMES", "Stats"]

COUNTER_NAMES = (
    "captured",
    "sent",
    "deduplicated",
    "rate_limited",
    "filtered",
    "dropped",
    "rejected",
    "undelivered",
    "internal_errors",
    "invalid_input",
    # PostHog Logs (``_logs_delivery``): after a flush, logs_queued == logs_sent +
    # logs_filtered + logs_rate_limited + logs_dropped + logs_rejected + logs_undelivered;
    # logs_dropped_queue_full were never queued (the byte budget was spent).
    "logs_queued",
    "logs_sent",
    "logs_filtered",
    "logs_rate_limited",
    "logs_dropped",
    "logs_dropped_queue_full",
    "logs_rejected",
    "logs_undelivered",
)


class Stats:
    """Integer counters that need no lock.

    Each counter is an :func:`itertools.count`: ``next()`` on it is one C call, so an
    increment is never lost to another thread, and never torn by a signal handler that
    captures while the interrupted code was counting (a lock there could be re-entered by
    the handler, or left held by an exception the handler raised). The value is read back
    from the counter's ``repr``, which is cheap and only done by :meth:`snapshot`.
    """

    def __init__(self) -> None:
        self._counters = {name: itertools.count() for name in COUNTER_NAMES}

    def add(self, name: str, amount: int = 1) -> None:
        counter = self._counters[name]
        for _ in range(amount):
            next(counter)

    def snapshot(self) -> dict[str, int]:
        counters = self._counters
        values = {name: _value(counter) for name, counter in counters.items()}
        # "sent" counts hand-overs; the lost ones reported since leave it here.
        values["sent"] = max(0, values["sent"] - values["rejected"] - values["undelivered"])
        return values

    def reset(self) -> None:
        self._counters = {name: itertools.count() for name in COUNTER_NAMES}

    def _after_fork_in_child(self) -> None:
        """Nothing to re-create: no lock. The child keeps the parent's counts."""


def _value(counter: itertools.count[int]) -> int:
    text = repr(counter)  # "count(7)"
    return int(text[text.index("(") + 1 : -1])


STATS = Stats()
