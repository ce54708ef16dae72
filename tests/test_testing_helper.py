"""posthog_errors.testing.capture_exceptions: every door lands in a list, no network."""

from __future__ import annotations

import io
import logging
import sys
import threading

import pytest
import structlog

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors.structlog import PostHogProcessor
from posthog_errors.testing import capture_exceptions
from tests.conformance import assert_event_conforms


def fail(message: str) -> None:
    raise ValueError(message)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_every_door_lands_in_the_list_without_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTHOG_API_KEY", "POSTHOG_PROJECT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("test.testing.helper")
    logger.handlers = [PostHogHandler()]
    logger.propagate = False
    structlog.configure(
        processors=[PostHogProcessor(), structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
    )
    original_hook = threading.excepthook
    try:
        with capture_exceptions() as events:
            with posthog_errors.bind("tester"):
                try:
                    fail("manual")
                except ValueError as exc:
                    posthog_errors.capture_exception(exc)
                try:
                    fail("logged")
                except ValueError:
                    logger.exception("handler door")
                try:
                    fail("structlog")
                except ValueError:
                    structlog.get_logger().exception("processor door")
            threading.excepthook = lambda args: None  # keep the thread's traceback quiet
            with posthog_errors.install(logs=False, asyncio=False, unraisable=False):
                thread = threading.Thread(target=fail, args=("thread hook",))
                thread.start()
                thread.join()
    finally:
        threading.excepthook = original_hook
        logger.handlers = []
        structlog.reset_defaults()
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert set(by_value) == {"manual", "logged", "structlog", "thread hook"}
    assert by_value["manual"]["distinct_id"] == "tester"
    assert by_value["logged"]["properties"]["$exception_source"] == "python.logging"
    assert by_value["structlog"]["properties"]["$exception_source"] == "structlog.processor"
    assert by_value["thread hook"]["properties"]["$exception_source"] == (
        "python.threading_excepthook"
    )
    for event in events:
        assert_event_conforms(event)
    # Outside the block, nothing is collected any more (and there is no client here).
    with pytest.warns(RuntimeWarning, match="no PostHog client"):
        assert posthog_errors.capture_exception(ValueError("after the block")) is None
    assert len(events) == 4


def test_before_send_applies_and_rate_limiting_is_off() -> None:
    def scrub(properties: dict) -> dict | None:  # type: ignore[type-arg]
        properties["scrubbed"] = True
        return properties

    with (
        capture_exceptions() as events,
        posthog_errors.install(
            before_send=scrub, logs=False, excepthooks=False, asyncio=False, unraisable=False
        ),
    ):
        for i in range(30):
            try:
                fail(f"hot loop {i}")
            except ValueError as exc:
                posthog_errors.capture_exception(exc)
    assert len(events) == 30
    assert all(e["properties"]["scrubbed"] is True for e in events)
    assert "pytest" in sys.modules  # (the helper is for test suites)
