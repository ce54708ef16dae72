"""Exception steps: what the app logged before it failed, on the wire as $exception_steps.

The real logging module, the real posthog client and the loopback capture server; the
scenarios a production app runs: a script, threads, asyncio tasks, an explicit handler
beside install(), bursts of logging (bounds), steps off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import _steps
from posthog_errors.capture_server import CaptureServer
from tests.scripts import run_script


@pytest.fixture
def installed(posthog_client: posthog.Posthog) -> Iterator[logging.Logger]:
    """install() with its defaults, and a logger at INFO (the root stays at WARNING)."""
    logger = logging.getLogger("test.steps")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the test's output stays quiet; the hook sees every logger
    with posthog_errors.install(posthog_client, excepthooks=False, asyncio=False):
        token = _steps.start_trail()  # this test's trail, not an earlier test's
        yield logger
        _steps.end_trail(token)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def messages(event: dict[str, Any]) -> list[str]:
    return [step["$message"] for step in event["properties"].get("$exception_steps", [])]


def fail(message: str = "checkout failed") -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as error:
        return error


def test_three_info_lines_then_a_failure(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    installed.info("cart %s opened", "c-1", extra={"items": 3, "password": "hunter2-secret"})
    installed.debug("below steps_levels: not a step")
    installed.warning("payment provider slow")
    installed.info("retrying payment")
    try:
        raise ValueError("card declined")
    except ValueError:
        installed.exception("checkout failed")
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    steps = event["properties"]["$exception_steps"]
    assert messages(event) == ["cart c-1 opened", "payment provider slow", "retrying payment"]
    assert [s["level"] for s in steps] == ["info", "warning", "info"]
    assert {s["logger"] for s in steps} == {"test.steps"}
    assert steps[0]["items"] == 3 and steps[0]["password"] == "[Filtered]"
    stamps = [s["$timestamp"] for s in steps]
    assert stamps == sorted(stamps)


def test_add_step_and_a_callers_own_steps_win(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    posthog_errors.add_step("user clicked pay", button="pay", token="sk_live_" + "a" * 24)
    posthog_errors.capture_exception(fail("with steps"))
    mine = [{"$message": "my own", "$timestamp": 1_700_000_000}]
    posthog_errors.capture_exception(fail("own steps"), properties={"$exception_steps": mine})
    assert posthog_errors.flush(5)
    by_value = {
        e["properties"]["$exception_list"][0]["value"]: e for e in capture_server.wait_for_events(2)
    }
    [step] = by_value["with steps"]["properties"]["$exception_steps"]
    assert (step["$message"], step["button"], step["token"]) == (
        "user clicked pay",
        "pay",
        "[Filtered]",
    )
    assert by_value["own steps"]["properties"]["$exception_steps"] == mine


def test_each_thread_sees_only_its_own_steps(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    installed.info("main thread step")
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        installed.info("%s: step", name)
        barrier.wait(5)  # both threads logged before either fails
        posthog_errors.capture_exception(fail(name))

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    steps = {e["properties"]["$exception_list"][0]["value"]: messages(e) for e in events}
    assert steps == {"a": ["a: step"], "b": ["b: step"]}


def test_a_task_sees_its_parents_steps_up_to_its_start_then_its_own(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    async def child() -> None:
        installed.info("child step")
        await asyncio.sleep(0)
        posthog_errors.capture_exception(fail("child"))

    async def parent() -> None:
        installed.info("parent before the task")
        task = asyncio.ensure_future(child())
        installed.info("parent after the task started")
        await task
        posthog_errors.capture_exception(fail("parent"))

    asyncio.run(parent())
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    steps = {e["properties"]["$exception_list"][0]["value"]: messages(e) for e in events}
    assert steps["child"] == ["parent before the task", "child step"]
    assert steps["parent"] == ["parent before the task", "parent after the task started"]


def test_an_explicit_handler_beside_install_adds_each_record_once(
    capture_server: CaptureServer, installed: logging.Logger, posthog_client: posthog.Posthog
) -> None:
    handler = posthog_errors.PostHogHandler(client=posthog_client)
    installed.addHandler(handler)
    try:
        installed.info("seen by the hook and by the handler")
        posthog_errors.capture_exception(fail())
    finally:
        installed.removeHandler(handler)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert messages(event) == ["seen by the hook and by the handler"]


def test_a_trail_is_bounded_by_count_and_bytes(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    for i in range(5 * _steps.MAX_STEPS):
        installed.info("step %d %s", i, "x" * 200)
    held = _steps.nodes(_steps.current())
    assert _steps.MAX_STEPS <= len(held) <= 2 * _steps.MAX_STEPS  # memory: bounded nodes
    posthog_errors.capture_exception(fail())
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    steps = event["properties"]["$exception_steps"]
    assert len(json.dumps(steps).encode()) <= _steps.MAX_STEP_BYTES
    assert steps[-1]["$message"].startswith(f"step {5 * _steps.MAX_STEPS - 1} ")  # newest kept
    numbers = [int(s["$message"].split()[1]) for s in steps]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # oldest dropped


def test_steps_off_and_other_levels(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    logger = logging.getLogger("test.steps.levels")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        with posthog_errors.install(posthog_client, steps=False, excepthooks=False):
            token = _steps.start_trail()
            logger.info("no steps at all")
            posthog_errors.capture_exception(fail("off"))
            _steps.end_trail(token)
        with posthog_errors.install(posthog_client, steps_levels="debug", excepthooks=False):
            token = _steps.start_trail()
            logger.debug("a debug step")
            logger.info("info is not in steps_levels")
            posthog_errors.capture_exception(fail("debug"))
            _steps.end_trail(token)
    finally:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    steps = {e["properties"]["$exception_list"][0]["value"]: messages(e) for e in events}
    assert steps == {"off": [], "debug": ["a debug step"]}


def test_a_script_sends_its_story(capture_server: CaptureServer) -> None:
    """A plain script, its own logging configured after install(), failing uncaught."""
    result = run_script(
        """
        import logging
        posthog_errors.install(client, release="shop@1.4.2")
        logging.basicConfig(level=logging.INFO)
        log = logging.getLogger("shop")
        log.info("loaded %d orders", 3)
        log.warning("order %s has no address", "o-2")
        raise RuntimeError("could not ship")
        """,
        capture_server.url,
        hang_after=30,
    )
    assert result.returncode == 1
    assert "INFO:shop:loaded 3 orders" in result.stderr  # the app's own output unchanged
    [event] = capture_server.wait_for_events(1)
    assert messages(event) == ["loaded 3 orders", "order o-2 has no address"]
    assert event["properties"]["$release_id"] == "shop@1.4.2"


# -- what only the caller's thread knows, and the release --------------------------------


def test_posthog_context_tags_and_the_otel_span_arrive(
    capture_server: CaptureServer, reporter: Any
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with posthog.new_context(), tracer.start_as_current_span("checkout") as span:
        posthog.tag("tenant", "acme")
        posthog.tag("$request_path", "/checkout")  # as posthog-python's middlewares tag
        posthog_errors.capture_exception(fail("in a context"), properties={"tenant": "mine"})
        ids = span.get_span_context()
    posthog_errors.capture_exception(fail("outside"))
    assert posthog_errors.flush(5)
    by_value = {
        e["properties"]["$exception_list"][0]["value"]: e["properties"]
        for e in capture_server.wait_for_events(2)
    }
    inside = by_value["in a context"]
    assert inside["$trace_id"] == format(ids.trace_id, "032x")
    assert inside["$span_id"] == format(ids.span_id, "016x")
    assert inside["$request_path"] == "/checkout"
    assert inside["tenant"] == "mine"  # an explicit property wins over a context tag
    outside = by_value["outside"]
    assert "$trace_id" not in outside and "tenant" not in outside


def test_the_release_from_the_option_or_the_environment(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, monkeypatch: Any
) -> None:
    from posthog_errors._reporter import Reporter

    monkeypatch.setenv("POSTHOG_RELEASE_ID", "from-env")
    Reporter(posthog_client).capture(fail("env"))
    Reporter(posthog_client, release="from-option").capture(fail("option"))
    Reporter(posthog_client, release="from-option").capture(
        fail("explicit"), properties={"$release_id": "explicit"}
    )
    assert posthog_errors.flush(5)
    releases = {
        e["properties"]["$exception_list"][0]["value"]: e["properties"]["$release_id"]
        for e in capture_server.wait_for_events(3)
    }
    assert releases == {"env": "from-env", "option": "from-option", "explicit": "explicit"}
    with pytest.raises(TypeError, match="release"):
        Reporter(posthog_client, release=123)  # type: ignore[arg-type]


# -- requests: each starts empty, and concurrent ones never mix -------------------------


def test_concurrent_requests_each_send_their_own_three_steps(
    capture_server: CaptureServer, installed: logging.Logger, posthog_client: posthog.Posthog
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from posthog_errors import _rate_limit
    from posthog_errors.middleware import ASGIMiddleware

    _rate_limit.configure(None)  # ten failures from one site

    async def checkout(request: Request) -> JSONResponse:
        order = request.query_params["order"]
        for step in ("cart loaded", "address checked", "payment started"):
            installed.info("%s: %s", order, step)
            await asyncio.sleep(0.001)  # the requests interleave
        raise RuntimeError(f"checkout {order} failed")

    app = ASGIMiddleware(Starlette(routes=[Route("/checkout", checkout)]), client=posthog_client)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
            installed.info("before any request: in no request's steps")
            responses = await asyncio.gather(
                *(c.get("/checkout", params={"order": f"o-{i}"}) for i in range(10))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [500] * 10
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(10)
    assert len(events) == 10
    for event in events:
        order = event["properties"]["$exception_list"][0]["value"].split()[1]
        assert messages(event) == [
            f"{order}: cart loaded",
            f"{order}: address checked",
            f"{order}: payment started",
        ]


def test_a_wsgi_thread_lends_no_steps_to_its_next_request(
    capture_server: CaptureServer, installed: logging.Logger, posthog_client: posthog.Posthog
) -> None:
    from posthog_errors.middleware import WSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        installed.info("request %s", environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/fail":
            raise RuntimeError("second request failed")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = WSGIMiddleware(app, client=posthog_client)
    for path in ("/ok", "/fail"):  # one thread serves both, as a WSGI worker does
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http",
                   "SERVER_NAME": "app.test", "SERVER_PORT": "80"}  # fmt: skip
        with contextlib.suppress(RuntimeError):
            list(wrapped(environ, lambda status, headers: None))
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert messages(event) == ["request /fail"]
