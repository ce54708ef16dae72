"""Process-wide counters behind :func:`posthog_errors.stats`.

Every exception that reaches an entry point is counted once as ``captured`` and, once it has
left the pipeline, once more under exactly one outcome, so that after a flush::

    captured == sent + deduplicated + rate_limited + filtered + dropped

``dropped`` covers every loss that is not a decision (queue full, no client, an internal
error while building). ``internal_errors`` counts the library's own bugs that the guard
swallowed; ``invalid_input`` counts run-time bad input that was given a safe fallback.
"""

from __future__ import annotations

import threading

__all__ = ["COUNTER_NAMES", "Stats"]

COUNTER_NAMES = (
    "captured",
    "sent",
    "deduplicated",
    "rate_limited",
    "filtered",
    "dropped",
    "internal_errors",
    "invalid_input",
)


class Stats:
    """Thread-safe integer counters.

    A lock rather than bare ``+=``: increments come from the app's threads and the worker at
    once, and a lost increment would break the accounting identity above.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    def _after_fork_in_child(self) -> None:
        # The parent may have held the lock at fork time; a child must never wait on it.
        self._lock = threading.Lock()


STATS = Stats()
