"""CancelledError, KeyboardInterrupt and SystemExit pass through every guard untouched:
the guards catch Exception only, so a cancellation or an interrupt raised while the library
runs on the app's thread reaches the app, and is never reported as a failure."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pytest
import structlog

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._reporter import Reporter
from posthog_errors.middleware import ASGIMiddleware
from posthog_errors.structlog import PostHogProcessor

EXITS = [asyncio.CancelledError, KeyboardInterrupt, SystemExit]


def raising_client(kind: type[BaseException]) -> Any:
    def client() -> Any:
        raise kind()

    return client


@pytest.mark.parametrize("kind", EXITS)
def test_through_capture_exception_the_handler_and_the_processor(
    kind: type[BaseException],
) -> None:
    reporter = Reporter(raising_client(kind))  # the client is resolved on the app's thread
    posthog_errors._reporter.set_default_reporter(reporter)
    with pytest.raises(kind):
        posthog_errors.capture_exception(ValueError("x"))

    logger = logging.getLogger("test.passthrough")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        with pytest.raises(kind):
            logger.error("boom", exc_info=ValueError("y"))
    finally:
        logger.handlers = []

    processor = PostHogProcessor(reporter=reporter)
    with pytest.raises(kind):
        processor(None, "error", {"event": "boom", "exc_info": ValueError("z")})
    structlog.reset_defaults()
    assert posthog_errors.stats()["internal_errors"] == 0


@pytest.mark.parametrize("kind", EXITS)
def test_asgi_middleware_neither_reports_nor_swallows_them(kind: type[BaseException]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise kind()

    async def call() -> None:
        scope = {"type": "http", "headers": [], "path": "/", "method": "GET"}
        await ASGIMiddleware(app, client=raising_client(RuntimeError))(scope, None, None)

    with pytest.raises(kind):
        asyncio.run(call())
    assert posthog_errors.stats()["captured"] == 0


def test_middleware_identify_raising_cancelled_error_propagates() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    def identify(scope: Any) -> str:
        raise asyncio.CancelledError

    async def call() -> None:
        scope = {"type": "http", "headers": [], "path": "/", "method": "GET"}
        await ASGIMiddleware(app, identify=identify)(scope, None, None)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())


def test_asyncio_hook_never_reports_a_cancellation() -> None:
    from posthog_errors.testing import capture_exceptions

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_exception_handler({"message": "cancelled", "exception": asyncio.CancelledError()})
        loop.call_exception_handler({"message": "real", "exception": LookupError("real")})

    loop_output = io.StringIO()
    handler = logging.StreamHandler(loop_output)
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler)
    try:
        with (
            capture_exceptions() as events,
            posthog_errors.install(logs=False, excepthooks=False, unraisable=False),
        ):
            asyncio.run(main())
    finally:
        asyncio_logger.removeHandler(handler)
    assert [e["properties"]["$exception_list"][0]["type"] for e in events] == ["LookupError"]
