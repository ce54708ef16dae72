"""Rate limiting: on by default, per failure site, a burst then a steady refill."""

from __future__ import annotations

import logging

import pytest

import posthog_errors
from posthog_errors import PostHogHandler, _rate_limit
from posthog_errors._rate_limit import RateLimiter
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer


def hot_loop_failure(i: int) -> None:
    raise ValueError(f"failure {i}")


def other_site_failure() -> None:
    raise ValueError("elsewhere")


def test_one_site_in_a_hot_loop_is_limited_across_doors(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    logger = logging.getLogger("test.hotloop")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        for i in range(200):
            try:
                hot_loop_failure(i)
            except ValueError as exc:
                if i % 2:
                    logger.exception("logged")
                else:
                    posthog_errors.capture_exception(exc)
        try:
            other_site_failure()
        except ValueError:
            logger.exception("another site has its own bucket")
    finally:
        logger.handlers = []
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(_rate_limit.DEFAULT_BURST + 1)
    assert len(events) == _rate_limit.DEFAULT_BURST + 1
    counts = posthog_errors.stats()
    assert counts["rate_limited"] == 200 - _rate_limit.DEFAULT_BURST
    assert counts["captured"] == counts["sent"] + counts["rate_limited"]


def test_messages_are_limited_per_template(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    logger = logging.getLogger("test.hotmessages")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        for i in range(50):
            logger.error("retrying job %s", i)
    finally:
        logger.handlers = []
    assert posthog_errors.flush(5)
    assert len(capture_server.wait_for_events(10)) == 10
    assert posthog_errors.stats()["rate_limited"] == 40


def test_bucket_refills_steadily(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(_rate_limit.time, "monotonic", lambda: now[0])
    limiter = RateLimiter(burst=3, per_second=0.5)
    assert [limiter.allow("site") for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0  # half a token
    assert not limiter.allow("site")
    now[0] += 1.0  # a whole token since the last success
    assert limiter.allow("site") and not limiter.allow("site")
    now[0] += 100.0  # never more than the burst
    assert [limiter.allow("site") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("another site")


def test_rate_limit_can_be_turned_off(capture_server: CaptureServer, reporter: Reporter) -> None:
    _rate_limit.configure(None)
    for i in range(30):
        try:
            hot_loop_failure(i)
        except ValueError as exc:
            posthog_errors.capture_exception(exc)
    assert posthog_errors.flush(5)
    assert len(capture_server.wait_for_events(30)) == 30


def test_a_held_back_exception_keeps_no_mark_of_an_event_never_sent(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    _rate_limit.configure((1, 0.0))  # one event per site, no refill
    exceptions = []
    for i in range(2):
        try:
            hot_loop_failure(i)
        except ValueError as exc:
            exceptions.append(exc)
            posthog_errors.capture_exception(exc)
    sent, held_back = exceptions
    assert getattr(sent, "__posthog_exception_uuid", None) is not None
    assert not hasattr(held_back, "__posthog_exception_captured")
    assert not hasattr(held_back, "__posthog_exception_uuid")
    assert posthog_errors.flush(5)
    assert len(capture_server.wait_for_events(1)) == 1
    assert posthog_errors.stats()["rate_limited"] == 1
