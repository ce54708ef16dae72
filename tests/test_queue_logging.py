"""Queue-based logging: a ``PostHogHandler`` behind a ``QueueListener``.

``QueueHandler.prepare`` clears ``exc_info`` before a record is queued. Each failure must
still be one event with its real exception (type, value, the producer's frames), the
producer's stack, person and steps: by hand in one process, through dictConfig's ``queue``
handlers (3.12+), and with the logging cookbook's multi-process listener. Every test
asserts on what the loopback capture server received.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors.capture_server import CaptureServer
from tests.scripts import run_script


def _by_value(server: CaptureServer, count: int) -> dict[str, dict[str, Any]]:
    assert posthog_errors.flush(10)
    events = server.wait_for_events(count, timeout=5)
    assert len(events) == count, events
    return {e["properties"]["$exception_list"][0]["value"]: e for e in events}


def _steps(event: dict[str, Any]) -> list[str]:
    return [step["$message"] for step in event["properties"].get("$exception_steps", [])]


def _functions(entry: dict[str, Any]) -> list[str]:
    return [frame["function"] for frame in entry["stacktrace"]["frames"]]


@pytest.fixture
def queued_logger() -> Iterator[tuple[logging.Logger, queue.Queue[Any]]]:
    """A logger whose only handler is a QueueHandler (the cookbook's producer side)."""
    records: queue.Queue[Any] = queue.Queue()
    log = logging.getLogger("tests.queued")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.handlers.QueueHandler(records)
    log.addHandler(handler)
    yield log, records
    log.removeHandler(handler)


def producer(log: logging.Logger, customer: str) -> None:
    with posthog_errors.job(distinct_id=f"{customer}-user", properties={"customer": customer}):
        posthog_errors.add_step(f"exporting invoices of {customer}")
        log.info("an info record: the producer's step only with install()")
        try:
            raise ValueError(f"export of {customer} failed")
        except ValueError:
            log.exception("export failed")
        log.error("message of %s", customer)


def test_a_handler_behind_a_queue_listener_sends_the_producers_exception(
    capture_server: CaptureServer,
    posthog_client: posthog.Posthog,
    queued_logger: tuple[logging.Logger, queue.Queue[Any]],
) -> None:
    log, records = queued_logger
    listener = logging.handlers.QueueListener(
        records, posthog_errors.PostHogHandler(client=posthog_client)
    )
    listener.start()
    try:
        threads = [
            threading.Thread(target=producer, args=(log, customer), name=customer)
            for customer in ("acme-corp", "globex")
        ]
        for thread in threads:
            thread.start()
            thread.join()
    finally:
        listener.stop()
    by_value = _by_value(capture_server, 4)
    for customer in ("acme-corp", "globex"):
        event = by_value[f"export of {customer} failed"]
        props = event["properties"]
        [entry] = props["$exception_list"]
        assert entry["type"] == "ValueError"
        assert (entry["mechanism"]["type"], entry["mechanism"]["handled"]) == ("logger", True)
        assert _functions(entry) == ["producer"]  # the producer's frames, from its traceback
        assert entry["stacktrace"]["frames"][0]["context_line"].strip().startswith("raise")
        assert props["log_message"] == "export failed"
        assert props["$exception_source"] == "python.logging"
        assert event["distinct_id"] == f"{customer}-user"
        assert props["customer"] == customer
        assert _steps(event) == [f"exporting invoices of {customer}"]
        # A record without an exception: the producer's call site, not the listener's.
        message = by_value[f"message of {customer}"]
        [entry] = message["properties"]["$exception_list"]
        assert entry["type"].startswith("LogMessage")
        assert _functions(entry)[-1] == "producer"
        assert "_monitor" not in _functions(entry)
        assert message["distinct_id"] == f"{customer}-user"
        assert _steps(message) == [f"exporting invoices of {customer}"]


def test_install_and_a_queue_listener_send_each_failure_once(
    capture_server: CaptureServer,
    posthog_client: posthog.Posthog,
    queued_logger: tuple[logging.Logger, queue.Queue[Any]],
) -> None:
    """install() in the producer reports the record itself (with its INFO records as
    steps); the listener's handler sees it marked and sends nothing more. The listener
    never takes a producer's record as a step of its own."""
    log, records = queued_logger
    listener = logging.handlers.QueueListener(
        records, posthog_errors.PostHogHandler(client=posthog_client, levels="error,warning")
    )
    with posthog_errors.install(posthog_client), posthog_errors.job():
        listener.start()
        try:
            thread = threading.Thread(target=producer, args=(log, "initech"))
            thread.start()
            thread.join()
            log.warning("a warning the listener reports")
        finally:
            listener.stop()
        by_value = _by_value(capture_server, 3)
    event = by_value["export of initech failed"]
    assert _functions(event["properties"]["$exception_list"][0]) == ["producer"]
    assert event["distinct_id"] == "initech-user"
    assert _steps(event) == [
        "exporting invoices of initech",
        "an info record: the producer's step only with install()",
    ]
    warning = by_value["a warning the listener reports"]
    assert _functions(warning["properties"]["$exception_list"][0])[-1] == (
        "test_install_and_a_queue_listener_send_each_failure_once"
    )
    assert _steps(warning) == []  # the producer thread's records are not the main thread's


@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig's queue handlers: 3.12+")
def test_dict_config_queue_handler(capture_server: CaptureServer) -> None:
    result = run_script(
        """
        import atexit, logging, logging.config
        logging.config.dictConfig({
            "version": 1,
            "handlers": {
                "posthog": {"class": "posthog_errors.PostHogHandler", "client": "ext://__main__.client"},
                "queued": {"class": "logging.handlers.QueueHandler", "handlers": ["posthog"]},
            },
            "root": {"handlers": ["queued"], "level": "INFO"},
        })
        listener = logging.getHandlerByName("queued").listener
        listener.start()
        with posthog_errors.bind("dict-user"):
            posthog_errors.add_step("configured")
            try:
                raise KeyError("through dictConfig")
            except KeyError:
                logging.getLogger("app").exception("failed")
        listener.stop()
        posthog_errors.flush(5)
        """,
        capture_server.url,
    )
    assert result.returncode == 0, result.stderr
    [event] = capture_server.wait_for_events(1)
    [entry] = event["properties"]["$exception_list"]
    assert (entry["type"], entry["value"]) == ("KeyError", "'through dictConfig'")
    assert event["distinct_id"] == "dict-user"
    assert _steps(event) == ["configured"]


COOKBOOK = """
import logging, logging.handlers, multiprocessing, os

def listener_process(records, url):
    import posthog
    handler = posthog_errors.PostHogHandler(
        client=posthog.Posthog("phc_test", host=url, flush_interval=0.01, max_retries=0)
    )
    root = logging.getLogger()
    root.addHandler(handler)
    while (record := records.get()) is not None:
        logging.getLogger(record.name).handle(record)
    posthog_errors.flush(5)

def worker_process(records, url, installs):
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(logging.INFO)
    if installs:
        import posthog
        posthog_errors.install(posthog.Posthog("phc_test", host=url, flush_interval=0.01))
    log = logging.getLogger("worker")
    name = "installed" if installs else "plain"
    with posthog_errors.bind(f"{name}-user"):
        log.info("%s worker step", name)
        try:
            raise ValueError(f"{name} worker failed")
        except ValueError:
            log.exception("worker failure")
    posthog_errors.flush(5)

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    records = context.Queue()
    listener = context.Process(target=listener_process, args=(records, sys.argv[1]))
    listener.start()
    for installs in (True, False):
        worker = context.Process(target=worker_process, args=(records, sys.argv[1], installs))
        worker.start()
        worker.join()
    records.put(None)
    listener.join()
    print(listener.exitcode)
"""


def test_the_cookbooks_multi_process_listener(capture_server: CaptureServer) -> None:
    """The logging cookbook's "logging to a single file from multiple processes": a
    listener process with a PostHogHandler, workers with only a QueueHandler (one with
    install(), one without), a multiprocessing.Queue between them."""
    result = run_script(COOKBOOK, capture_server.url, hang_after=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]
    events = capture_server.wait_for_events(3, timeout=5)
    assert len(events) == 2, events  # one per failure: never again as a message
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    installed = by_value["installed worker failed"]
    assert installed["distinct_id"] == "installed-user"
    assert _steps(installed) == ["installed worker step"]
    plain = by_value["plain worker failed"]
    [entry] = plain["properties"]["$exception_list"]
    assert entry["type"] == "ValueError"
    assert _functions(entry) == ["worker_process"]
