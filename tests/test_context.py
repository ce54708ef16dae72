"""Who hit the failure: bind(), the fallback chain, threads, tasks, tenants."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import sys
import threading
from collections.abc import Iterator

import posthog
import pytest
import sentry_sdk
import structlog

import posthog_errors
from posthog_errors import _rate_limit
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer
from tests.conftest import make_client


def fail(message: str) -> None:
    raise ValueError(message)


def capture_failure(message: str) -> str | None:
    try:
        fail(message)
    except ValueError as exc:
        return posthog_errors.capture_exception(exc)
    return None


def events_by_value(server: CaptureServer, count: int) -> dict[str, dict]:  # type: ignore[type-arg]
    assert posthog_errors.flush(10)
    events = server.wait_for_events(count)
    assert len(events) == count
    return {e["properties"]["$exception_list"][0]["value"]: e for e in events}


@pytest.fixture
def many_sites() -> None:
    _rate_limit.configure(None)  # hundreds of failures from one site, all wanted


# -- bind and its relatives --------------------------------------------------------------


def test_bind_nests_and_restores() -> None:
    assert posthog_errors.get_distinct_id() is None
    with posthog_errors.bind("outer", session_id="s-1", properties={"plan": "pro"}) as outer:
        assert outer.properties == {"plan": "pro"}
        with posthog_errors.bind("inner", properties={"team": 7}) as inner:
            assert posthog_errors.get_distinct_id() == "inner"
            assert posthog_errors.get_session_id() == "s-1"
            assert inner.properties == {"plan": "pro", "team": 7}
        assert posthog_errors.get_distinct_id() == "outer"
    assert posthog_errors.get_distinct_id() is None


def test_bind_as_sync_and_async_decorator() -> None:
    @posthog_errors.bind("sync-user")
    def sync_work() -> str | None:
        return posthog_errors.get_distinct_id()

    @posthog_errors.bind(42)
    async def async_work() -> str | None:
        await asyncio.sleep(0)
        return posthog_errors.get_distinct_id()

    assert sync_work() == "sync-user"
    assert asyncio.run(async_work()) == "42"
    assert posthog_errors.get_distinct_id() is None


def test_set_and_reset_tokens_for_middleware_style_code() -> None:
    token = posthog_errors.set_distinct_id("mw-user")
    session_token = posthog_errors.set_session_id("mw-session")
    assert (posthog_errors.get_distinct_id(), posthog_errors.get_session_id()) == (
        "mw-user",
        "mw-session",
    )
    posthog_errors.reset(session_token)
    posthog_errors.reset(token)
    assert posthog_errors.get_distinct_id() is None


def test_bound_ids_and_properties_travel_and_explicit_values_win(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with posthog_errors.bind("bound-user", session_id="sess-9", properties={"plan": "pro"}):
        capture_failure("bound")
        try:
            fail("explicit")
        except ValueError as exc:
            posthog_errors.capture_exception(
                exc, distinct_id="explicit-user", properties={"plan": "team"}
            )
    events = events_by_value(capture_server, 2)
    bound, explicit = events["bound"], events["explicit"]
    assert bound["distinct_id"] == "bound-user"
    assert bound["properties"]["$session_id"] == "sess-9"
    assert bound["properties"]["plan"] == "pro"
    assert explicit["distinct_id"] == "explicit-user"
    assert explicit["properties"]["plan"] == "team"


def test_an_exception_that_escapes_bind_remembers_the_innermost_binding(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    try:
        with (
            posthog_errors.bind("outer-user"),
            posthog_errors.bind("inner-user", properties={"step": 2}),
        ):
            fail("escaped")
    except ValueError as exc:
        assert posthog_errors.get_distinct_id() is None  # the blocks are over...
        posthog_errors.capture_exception(exc)  # ...but the exception remembers
    [event] = capture_server.wait_for_events(1) if posthog_errors.flush(5) else []
    assert event["distinct_id"] == "inner-user"
    assert event["properties"]["step"] == 2


# -- no cross-talk ---------------------------------------------------------------------


def test_64_pool_tasks_and_200_asyncio_tasks_each_carry_their_own_id(
    capture_server: CaptureServer, reporter: Reporter, many_sites: None
) -> None:
    def pool_task(i: int) -> None:
        with posthog_errors.bind(f"pool-{i}"):
            capture_failure(f"pool failure {i}")

    def carried_task(i: int) -> None:  # the ID comes from the submitting context
        capture_failure(f"carried failure {i}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        futures = [executor.submit(pool_task, i) for i in range(32)]
        for i in range(32):
            with posthog_errors.bind(f"carried-{i}"):
                futures.append(executor.submit(posthog_errors.carry_context(carried_task), i))
        for future in futures:
            future.result()

    async def async_task(i: int) -> None:
        async with posthog_errors.bind(f"task-{i}"):
            await asyncio.sleep(0.001 * (i % 5))  # interleave the tasks
            capture_failure(f"task failure {i}")

    async def main() -> None:
        await asyncio.gather(*(async_task(i) for i in range(200)))

    asyncio.run(main())
    capture_failure("unbound afterwards")
    events = events_by_value(capture_server, 265)
    for i in range(32):
        assert events[f"pool failure {i}"]["distinct_id"] == f"pool-{i}"
        assert events[f"carried failure {i}"]["distinct_id"] == f"carried-{i}"
    for i in range(200):
        assert events[f"task failure {i}"]["distinct_id"] == f"task-{i}"
    unbound = events["unbound afterwards"]
    assert unbound["properties"]["$process_person_profile"] is False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_thread_excepthook_reads_the_dying_threads_context(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    def target() -> None:
        posthog_errors.set_distinct_id("thread-user")
        fail("uncaught in thread")

    with posthog_errors.install(posthog_client, logs=False, asyncio=False, unraisable=False):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    [event] = events_by_value(capture_server, 1).values()
    assert event["distinct_id"] == "thread-user"
    assert event["properties"]["$exception_source"] == "python.threading_excepthook"


def test_asyncio_hook_attributes_a_task_failure_to_its_binding(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    async def failing_task(i: int) -> None:
        if i == 0:
            async with posthog_errors.bind("bound-task-owner"):
                fail("bound task")
        # Python 3.12+ exposes a task's context, so even set_distinct_id() is seen.
        posthog_errors.set_distinct_id("set-task-owner")
        fail("set task")

    async def main() -> None:
        tasks = [asyncio.ensure_future(failing_task(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        del tasks
        gc.collect()

    with posthog_errors.install(posthog_client, logs=False, excepthooks=False, unraisable=False):
        asyncio.run(main())
    events = events_by_value(capture_server, 2)
    assert events["bound task"]["distinct_id"] == "bound-task-owner"
    if sys.version_info >= (3, 12):
        assert events["set task"]["distinct_id"] == "set-task-owner"


# -- the fallback chain, with the real libraries ----------------------------------------


@pytest.fixture
def clean_fallbacks() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def test_each_fallback_supplies_the_id_in_order(
    capture_server: CaptureServer, reporter: Reporter, clean_fallbacks: None
) -> None:
    with sentry_sdk.isolation_scope():
        sentry_sdk.set_tag(posthog_errors.POSTHOG_ID_TAG, "from-sentry")
        capture_failure("sentry only")
        structlog.contextvars.bind_contextvars(distinct_id="from-structlog", session_id="s-log")
        capture_failure("structlog over sentry")
        with posthog.new_context():
            posthog.identify_context("from-posthog")
            capture_failure("posthog over structlog")
            with posthog_errors.bind("from-bind"):
                capture_failure("bind over posthog")
        structlog.contextvars.clear_contextvars()
    capture_failure("nothing at all")
    events = events_by_value(capture_server, 5)
    assert events["sentry only"]["distinct_id"] == "from-sentry"
    assert events["structlog over sentry"]["distinct_id"] == "from-structlog"
    assert events["structlog over sentry"]["properties"]["$session_id"] == "s-log"
    assert events["posthog over structlog"]["distinct_id"] == "from-posthog"
    assert events["posthog over structlog"]["properties"]["$session_id"] == "s-log"
    assert events["bind over posthog"]["distinct_id"] == "from-bind"
    assert events["nothing at all"]["properties"]["$process_person_profile"] is False


# -- multi-tenant: the client chosen per event ------------------------------------------


def test_a_client_callable_picks_the_tenants_project_per_event() -> None:
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
    with CaptureServer() as acme_server, CaptureServer() as globex_server:
        clients = {"acme": make_client(acme_server), "globex": make_client(globex_server)}
        set_default_reporter(Reporter(lambda: clients[tenant.get()]))
        try:
            for name in ("acme", "globex", "acme"):
                token = tenant.set(name)
                capture_failure(f"{name} failure")
                tenant.reset(token)
            assert posthog_errors.flush(5)
            acme = acme_server.wait_for_events(2)
            globex = globex_server.wait_for_events(1)
        finally:
            for client in clients.values():
                client.shutdown()
    assert [e["properties"]["$exception_list"][0]["value"] for e in acme] == ["acme failure"] * 2
    assert [e["properties"]["$exception_list"][0]["value"] for e in globex] == ["globex failure"]
