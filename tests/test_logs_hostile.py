"""PostHog Logs against bad input and a sick PostHog: the app is never blocked, memory stays
bounded in bytes, and everything dropped is counted."""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import math
import os
import signal
import sys
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import _steps
from posthog_errors.capture_server import LOGS_REQUEST_LIMIT, CaptureServer, Fault
from tests.scripts import run_script


class Hostile:
    """Every dunder an app's object can break."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


EVERY_TYPE: dict[str, Any] = {
    "none": None,
    "bool": False,
    "int": 1 << 70,
    "float": math.inf,
    "nan": math.nan,
    "text": "t" * 100_000,
    "bytes": b"\xff" * 100_000,
    "list": list(range(100_000)),
    "dict": {i: i for i in range(1_000)},
    "set": {1, 2},
    "decimal": decimal.Decimal("1.5"),
    "when": datetime.datetime(2026, 12, 8, tzinfo=datetime.timezone.utc),
    "hostile": Hostile(),
    "type": int,
}


def test_huge_and_odd_records_are_sent_bounded(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    import structlog

    from posthog_errors.structlog import PostHogProcessor

    # Its own handler only: pytest's capture would format (and choke on) these records.
    log = logging.getLogger("hostile")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    with posthog_errors.install(posthog_client, send_logs="info", flush_on_signals=False):
        log.warning("m" * 10_000_000)
        log.warning("arg %s", "a" * 10_000_000)
        log.warning("extras", extra=EVERY_TYPE)
        log.warning("a bad template %d", "not a number")
        log.warning(Hostile())  # type: ignore[arg-type]
        processor = PostHogProcessor(send_logs="info")
        event: dict[Any, Any] = {"event": "odd keys", "level": "warning", 1: "one", (2,): "two"}
        processor(structlog.get_logger("hostile"), "warning", {**event, **EVERY_TYPE})
        assert posthog_errors.flush(10)
    log.propagate = True
    log.handlers.clear()
    found = logs_server.wait_for_log_records(6, timeout=5)
    assert len(found) == 6
    for record in found:
        assert len(record["body"]) <= _steps.MAX_MESSAGE_LENGTH
        assert len(json.dumps(record["attributes"])) < 8 * 1024
    bodies = {r["body"][:10] for r in found}
    assert {"mmmmmmmmmm", "arg aaaaaa", "extras", "odd keys"} <= bodies
    assert all(r.status == 200 for r in logs_server.log_requests)
    assert all(len(json.dumps(r.body)) < LOGS_REQUEST_LIMIT for r in logs_server.log_requests)
    stats = posthog_errors.stats()
    assert (stats["logs_queued"], stats["logs_sent"]) == (6, 6)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_a_record_logged_in_a_signal_handler_is_sent(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    log = logging.getLogger("signals")
    log.propagate = False

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("from the signal handler")

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        with posthog_errors.install(posthog_client, send_logs="info", flush_on_signals=False):
            for index in range(200):
                log.warning("main %d", index)
                if index == 100:
                    os.kill(os.getpid(), signal.SIGUSR1)
            assert posthog_errors.flush(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        log.propagate = True
    found = logs_server.wait_for_log_records(201, timeout=5)
    bodies = [r["body"] for r in found]
    assert bodies.count("from the signal handler") == 1
    assert len(bodies) == 201


BURST = """
import json, logging, os, time
from posthog_errors import _logs_delivery
posthog_errors.install(client, send_logs="info", shutdown_timeout=1.0, flush_on_signals=False)
log = logging.getLogger("burst")
LOGS = _logs_delivery.LOGS
deepest = 0
for index in range(COUNT):
    log.warning("x" * 1000 + str(index))  # a new 1 KB text each time
    if index % 1000 == 0:
        deepest = max(deepest, LOGS._admitted_hint - LOGS._taken)
stats = posthog_errors.stats()
print(json.dumps({"stats": stats, "deepest": deepest, "budget": LOGS.max_queue_units,
                  "pid": os.getpid()}))
"""


def test_a_burst_against_a_hung_server_never_blocks_and_stays_bounded() -> None:
    with CaptureServer(fault=Fault(hang=True)) as hung:
        # A hang (the app waiting on PostHog, at log time or at exit) fails with a stack dump.
        result = run_script(BURST.replace("COUNT", "30_000"), hung.url, hang_after=45)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stats = report["stats"]
    # Bounded in bytes: never more than the budget (a record's worth of slack per thread).
    assert report["deepest"] <= report["budget"] + 8
    assert stats["logs_dropped_queue_full"] > 0
    assert stats["logs_queued"] + stats["logs_dropped_queue_full"] == 30_000
    assert stats["logs_sent"] == 0


FORKED = """
import logging, os
posthog_errors.install(client, send_logs="info", flush_on_signals=False)
log = logging.getLogger("fork")
log.warning("parent before fork")
pid = os.fork()
if pid == 0:
    log.warning("child %d", os.getpid())
    ok = posthog_errors.flush(5)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
log.warning("parent after fork")
assert posthog_errors.flush(5)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_sends_its_own_logs(logs_server: CaptureServer) -> None:
    result = run_script(FORKED, logs_server.url, hang_after=30)
    assert result.returncode == 0, result.stderr[-3000:]
    bodies = sorted(r["body"] for r in logs_server.wait_for_log_records(3, timeout=5))
    assert len(bodies) == 3, bodies  # each once: the child sends none of the parent's
    assert bodies[0].startswith("child ")
    assert bodies[1:] == ["parent after fork", "parent before fork"]


def test_the_library_own_records_never_loop(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    """PostHog down: the worker's and the client's own records (urllib3, posthog,
    posthog_errors) are not sent as logs, so no request begets another."""
    logs_server.set_fault(Fault(status=500))
    try:
        with posthog_errors.install(posthog_client, send_logs="debug", flush_on_signals=False):
            logging.getLogger().setLevel(logging.DEBUG)
            logging.getLogger("app").warning("one")
            posthog_errors.flush(10)
            logs_server.set_fault(None)
            logging.getLogger("app").warning("two")
            assert posthog_errors.flush(10)
    finally:
        logging.getLogger().setLevel(logging.WARNING)
    names = {r["attributes"]["logger.name"] for r in logs_server.log_records()}
    assert names == {"app"}, names
    stats = posthog_errors.stats()
    assert (stats["logs_queued"], stats["logs_undelivered"], stats["logs_sent"]) == (2, 1, 1)


def test_an_odd_record_is_still_sent(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    """A record of a LogRecord subclass with a message of its own, or with a dict for its
    message, goes the slow way: sent, never an internal error (strict here)."""

    class Custom(logging.LogRecord):
        def getMessage(self) -> str:
            return "custom message"

    log = logging.getLogger("odd")
    with posthog_errors.install(posthog_client, send_logs="info", flush_on_signals=False):
        log.warning({"event": "a dict", "n": 1})
        log.handle(Custom("odd", logging.WARNING, __file__, 2, "template", (), None))
        assert posthog_errors.flush(10)
    bodies = sorted(r["body"] for r in logs_server.wait_for_log_records(2, timeout=5))
    assert bodies == ["custom message", "{'event': 'a dict', 'n': 1}"]


ENDS = """
import logging, os, signal, sys
posthog_errors.install(client, send_logs="info", shutdown_timeout=5.0)
log = logging.getLogger("ending")
log.warning("logged just before the end (%s)", sys.argv[2])
if sys.argv[2] == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)  # ends the process at its default disposition
    signal.pause()
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX")
@pytest.mark.parametrize("end", ["exit", "sigterm"])
def test_logs_are_flushed_at_exit_and_before_sigterm(logs_server: CaptureServer, end: str) -> None:
    """No flush() by the app: the exit flush, or the one before SIGTERM ends the process,
    sends what was logged (within shutdown_timeout)."""
    result = run_script(ENDS, logs_server.url, extra_args=[end], hang_after=30)
    expected_status = 0 if end == "exit" else -signal.SIGTERM
    assert result.returncode == expected_status, result.stderr[-3000:]
    [record] = logs_server.wait_for_log_records(1, timeout=5)
    assert record["body"] == f"logged just before the end ({end})"


def test_loguru_records_carry_their_event_uuid(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    from loguru import logger

    with posthog_errors.install(posthog_client, send_logs="info", flush_on_signals=False):
        try:
            raise LookupError("sku-9")
        except LookupError:
            logger.bind(sku="sku-9").exception("stock lookup failed")
        assert posthog_errors.flush(10)
    [record] = logs_server.wait_for_log_records(1, timeout=5)
    [event] = logs_server.wait_for_events(1)
    assert record["attributes"]["posthogExceptionUuid"] == event["uuid"]
    assert record["attributes"]["exception.type"] == "LookupError"
    assert record["attributes"]["sku"] == "sku-9"
    assert record["severity_text"] == "ERROR"
