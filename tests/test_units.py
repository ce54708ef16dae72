"""Units of work: one request, task or job, one trail of exception steps.

A thread that runs job after job (an executor worker, a queue consumer, a scheduler's
pool) must not lend one job's log lines to the next job's failure: the issue's "another
customer's data". Each test asserts on the wire JSON the loopback capture server got.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors.capture_server import CaptureServer


@pytest.fixture
def installed(posthog_client: posthog.Posthog) -> Iterator[logging.Logger]:
    """install() with a quiet logger at INFO whose records become steps."""
    log = logging.getLogger("tests.units")
    log.setLevel(logging.INFO)
    log.propagate = False  # install()'s hook sees every record without any handler
    # The test's own unit: the main thread's trail of earlier tests stays out of it.
    with posthog_errors.install(posthog_client), posthog_errors.job():
        yield log


def _events(server: CaptureServer, count: int) -> dict[str, dict[str, Any]]:
    assert posthog_errors.flush(10)
    events = server.wait_for_events(count)
    assert len(events) == count, events
    return {e["properties"]["$exception_list"][0]["value"]: e for e in events}


def _steps(event: dict[str, Any]) -> list[str]:
    return [step["$message"] for step in event["properties"].get("$exception_steps", [])]


def _person(event: dict[str, Any]) -> str | None:
    props = event["properties"]
    return None if props.get("$process_person_profile") is False else event["distinct_id"]


def export(log: logging.Logger, customer: str, fail: bool) -> str:
    log.info("exporting invoices of %s", customer)
    if fail:
        try:
            raise RuntimeError(f"export of {customer} failed")
        except RuntimeError:
            log.exception("export failed")
    return threading.current_thread().name


def test_two_jobs_on_one_executor_thread_keep_their_own_steps_and_person(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    log = installed
    log.info("submitter step")
    with ThreadPoolExecutor(max_workers=1) as executor:
        with posthog_errors.bind("acme-user", properties={"customer": "acme-corp"}):
            first = executor.submit(export, log, "acme-corp", True)
        with posthog_errors.bind("globex-user", properties={"customer": "globex"}):
            second = executor.submit(export, log, "globex", True)
            # map() goes through submit(): its jobs are units too.
            third = list(executor.map(export, [log], ["initech"], [True]))
        assert first.result() == second.result() == third[0]  # one worker thread
    by_value = _events(capture_server, 3)
    for customer, person in (
        ("acme-corp", "acme-user"),
        ("globex", "globex-user"),
        ("initech", "globex-user"),
    ):
        event = by_value[f"export of {customer} failed"]
        assert _steps(event) == [f"exporting invoices of {customer}"], customer
        assert _person(event) == person
    assert by_value["export of globex failed"]["properties"]["customer"] == "globex"
    assert "acme-corp" not in str(by_value["export of globex failed"])


def test_a_failed_jobs_exception_remembers_its_steps_and_person(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    """The submitter logs the job's exception from ``future.result()``: the event has the
    job's steps and the submitter's person of that job, not what the caller logged."""
    log = installed

    def job() -> None:
        log.info("job step")
        raise KeyError("missing invoice")

    with ThreadPoolExecutor(max_workers=1) as executor:
        with posthog_errors.bind("acme-user"):
            future = executor.submit(job)
        log.info("caller step")
        try:
            future.result()
        except KeyError:
            log.exception("the job failed")
    event = _events(capture_server, 1)["'missing invoice'"]
    assert _steps(event) == ["job step"]
    assert _person(event) == "acme-user"


def test_uninstall_gives_back_the_executors_submit(posthog_client: posthog.Posthog) -> None:
    original = ThreadPoolExecutor.submit
    with posthog_errors.install(posthog_client):
        assert ThreadPoolExecutor.submit is not original
    assert ThreadPoolExecutor.submit is original


def test_a_queue_consumer_loop_runs_each_message_as_a_job(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    """One long-lived consumer thread; the runner logs failures outside the job block."""
    log = installed
    messages: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def consume() -> None:
        log.info("consumer started")
        while (message := messages.get()) is not None:
            try:
                with posthog_errors.job(distinct_id=message["user"]):
                    export(log, message["customer"], fail=False)
                    if message["fail"]:
                        raise ValueError(f"bad message for {message['customer']}")
            except ValueError:
                log.exception("message failed")  # outside the job: it remembers
        posthog_errors.capture_exception(RuntimeError("consumer stopped"))

    for user, customer, fail in (("u1", "acme-corp", False), ("u2", "globex", True)):
        messages.put({"user": user, "customer": customer, "fail": fail})
    messages.put(None)
    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join()
    by_value = _events(capture_server, 2)
    failed = by_value["bad message for globex"]
    assert _steps(failed) == ["exporting invoices of globex"]
    assert _person(failed) == "u2"
    # The consumer's own trail, without any job's steps, after the loop.
    stopped = by_value["consumer stopped"]
    assert _steps(stopped) == ["consumer started"]
    assert _person(stopped) is None


def test_job_as_a_decorator_sync_and_async(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    """APScheduler-style: the scheduler calls decorated functions one after the other in
    its own thread or loop, and logs what escapes them."""
    log = installed

    @posthog_errors.job
    def nightly(customer: str) -> None:
        log.info("nightly of %s", customer)
        if customer == "globex":
            raise OSError(f"nightly of {customer} failed")

    @posthog_errors.job(distinct_id="scheduler", properties={"schedule": "hourly"})
    async def hourly(customer: str) -> None:
        log.info("hourly of %s", customer)
        raise TimeoutError(f"hourly of {customer} failed")

    assert nightly.__name__ == "nightly"
    assert inspect.iscoroutinefunction(hourly)
    log.info("scheduler step")
    for customer in ("acme-corp", "globex"):
        try:
            nightly(customer)
        except OSError:
            log.exception("job raised")
    try:
        asyncio.run(hourly("initech"))
    except TimeoutError:
        log.exception("async job raised")
    by_value = _events(capture_server, 2)
    assert _steps(by_value["nightly of globex failed"]) == ["nightly of globex"]
    hourly_event = by_value["hourly of initech failed"]
    assert _steps(hourly_event) == ["hourly of initech"]
    assert _person(hourly_event) == "scheduler"
    assert hourly_event["properties"]["schedule"] == "hourly"


def test_job_restores_the_steps_and_ids_around_it(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    log = installed
    with posthog_errors.bind("outer"):
        log.info("before")
        with posthog_errors.job("inner"):
            assert posthog_errors.get_distinct_id() == "inner"
            log.info("inside")
            posthog_errors.set_distinct_id("changed inside")  # undone on leaving
        assert posthog_errors.get_distinct_id() == "outer"
        log.info("after")
        posthog_errors.capture_exception(ValueError("outer failure"))
    event = _events(capture_server, 1)["outer failure"]
    assert _steps(event) == ["before", "after"]
    assert _person(event) == "outer"
