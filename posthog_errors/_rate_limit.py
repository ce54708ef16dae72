"""Per-fingerprint rate limiting, on by default, shared by every entry point.

A token bucket per failure site: a burst, then a steady refill. One exception in a hot loop
then costs the app a dict lookup per hit and PostHog a handful of events, not millions.

No lock: a bucket is read and written back with single dict operations. Two threads
hitting the same site at the same instant may both take the last token (an event or two
over the limit), which is the price of a caller's path that a signal handler can always
enter and an asynchronous exception can never leave locked.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_PER_SECOND",
    "RateLimiter",
    "allow",
    "configure",
    "enabled",
]

DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 1.0
_MAX_KEYS = 10_000


class RateLimiter:
    """``allow(key)`` takes a token from ``key``'s bucket; False when it is empty."""

    def __init__(self, burst: int = DEFAULT_BURST, per_second: float = DEFAULT_PER_SECOND) -> None:
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"rate limit burst must be an int >= 1, got {burst!r}")
        if isinstance(per_second, bool) or not isinstance(per_second, (int, float)):
            raise ValueError(f"rate limit refill must be a number >= 0, got {per_second!r}")
        if per_second < 0:
            raise ValueError(f"rate limit refill must be a number >= 0, got {per_second!r}")
        self.burst = burst
        self.per_second = float(per_second)
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, last)

    def allow(self, key: Hashable) -> bool:
        now = time.monotonic()
        buckets = self._buckets
        tokens, last = buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(buckets) >= _MAX_KEYS and key not in buckets:
            # Bounded memory: forget every site (they start with a full burst again).
            buckets.clear()
        buckets[key] = (tokens, now)
        return allowed


_limiter: RateLimiter | None = RateLimiter()


def configure(limit: tuple[int, float] | None) -> None:
    """``(burst, per_second)`` for every entry point, or None to turn rate limiting off."""
    global _limiter
    _limiter = None if limit is None else RateLimiter(*limit)


def enabled() -> bool:
    return _limiter is not None


def allow(key: Hashable) -> bool:
    limiter = _limiter
    return limiter is None or limiter.allow(key)
