"""Steps and queued events are fixed when logged, and bounded in bytes (issue 22, 1 and 2).

A step is made on the thread that logs, in its context: its message reads as it did then,
the app's ``__str__`` runs there (never on the worker), and it keeps no record, exception,
traceback, frame or argument object. A queued event keeps a bounded copy of its properties.
Every assertion is on the JSON that reached the loopback capture server, or on what a child
process measured of its own memory, against the same run without posthog-errors.
"""

from __future__ import annotations

import contextvars
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

MIB = 1024 * 1024


@pytest.fixture
def installed(posthog_client: posthog.Posthog) -> Iterator[logging.Logger]:
    """install() with its defaults, and a logger at INFO (the root stays at WARNING)."""
    logger = logging.getLogger("test.steps.fixed")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with posthog_errors.install(posthog_client, excepthooks=False, asyncio=False):
        token = _steps.start_trail()
        yield logger
        _steps.end_trail(token)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def fail(message: str = "checkout failed") -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as error:
        return error


def sent_steps(server: CaptureServer) -> list[dict[str, Any]]:
    assert posthog_errors.flush(5)
    [event] = server.wait_for_events(1)
    steps: list[dict[str, Any]] = event["properties"].get("$exception_steps", [])
    return steps


def test_a_mutable_argument_reads_as_it_was_when_logged(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    cart: dict[str, Any] = {"items": 1}
    installed.info("cart now %s", cart)
    cart["items"] = 99
    installed.info("cart now %r", cart)
    cart["items"] = 100
    installed.info("%(n)d items in %(cart)s", {"n": 3, "cart": cart})
    cart["items"] = 101
    posthog_errors.capture_exception(fail())
    assert [s["$message"] for s in sent_steps(capture_server)] == [
        "cart now {'items': 1}",
        "cart now {'items': 99}",
        "3 items in {'items': 100}",
    ]


def test_a_proxy_that_only_works_in_the_apps_context_is_read_there(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    from werkzeug.local import LocalProxy  # werkzeug comes with flask

    user: contextvars.ContextVar[str] = contextvars.ContextVar("user")
    current_user: Any = LocalProxy(user)
    token = user.set("alice")
    try:
        installed.info("user %s opened checkout", current_user)
    finally:
        user.reset(token)
    with pytest.raises(RuntimeError):
        str(current_user)  # outside the request, as on the worker: unbound
    posthog_errors.capture_exception(fail())
    [step] = sent_steps(capture_server)
    assert step["$message"] == "user alice opened checkout"


def test_the_apps_str_runs_on_the_logging_thread_once(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    class Spy:
        def __init__(self) -> None:
            self.threads: list[int] = []

        def __str__(self) -> str:
            self.threads.append(threading.get_ident())
            return "spy"

    spy = Spy()
    installed.info("looking at %s", spy)
    posthog_errors.capture_exception(fail())
    [step] = sent_steps(capture_server)
    assert step["$message"] == "looking at spy"
    # Formatted on this thread (pytest's log capture formats it here too), never the worker.
    assert spy.threads and set(spy.threads) == {threading.get_ident()}


def test_a_step_with_an_exception_keeps_its_type_and_message_not_the_exception(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    try:
        raise ConnectionError("upstream reset")
    except ConnectionError:
        installed.warning("retrying %s", "payment", exc_info=True)
    held = _steps.nodes(_steps.current())
    assert all(
        not isinstance(value, (BaseException, logging.LogRecord))
        and type(value).__name__ not in ("traceback", "frame")
        for step in held
        for value in step
    )
    posthog_errors.capture_exception(fail())
    [step] = sent_steps(capture_server)
    assert step["$message"] == "retrying payment"
    assert (step["exception_type"], step["exception_message"]) == (
        "ConnectionError",
        "upstream reset",
    )
    assert step["level"] == "warning"


def test_huge_arguments_and_extras_are_cut_in_a_step(
    capture_server: CaptureServer, installed: logging.Logger
) -> None:
    installed.info(
        "body %s, rows %s",
        "b" * MIB,
        [{"row": i} for i in range(100_000)],
        extra={"note": "n" * MIB, "count": 3},
    )
    head = _steps.nodes(_steps.current())[0]
    assert sum(len(v) for v in head if isinstance(v, str)) <= 2 * _steps.MAX_MESSAGE_LENGTH
    posthog_errors.capture_exception(fail())
    [step] = sent_steps(capture_server)
    assert step["$message"].startswith("body bbbb")
    assert len(step["$message"]) <= _steps.MAX_MESSAGE_LENGTH
    assert step["note"].startswith("nnnn") and len(step["note"]) <= 1024
    assert step["count"] == 3


RETRIES = """
import gc, json, logging, sys, tracemalloc, weakref

WITH = sys.argv[2] == "with"
if WITH:
    posthog_errors.install(client, rate_limit=None, excepthooks=False, asyncio=False,
                           unraisable=False)
logging.getLogger().addHandler(logging.NullHandler())  # no tracebacks on stderr
log = logging.getLogger("app.retries")
MIB = 1024 * 1024


class Marker:
    pass


refs = []


def fetch(attempt):
    blob = bytearray(4 * MIB)  # what the failing frame holds
    marker = Marker()
    refs.append(weakref.ref(marker))
    raise ConnectionError(f"attempt {attempt} reset")


def retries(n, message="retrying"):
    for attempt in range(n):
        try:
            fetch(attempt)
        except ConnectionError:
            log.warning(message, exc_info=True)


retries(2, "warming up")
refs.clear()
gc.collect()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
retries(60)
gc.collect()
held = tracemalloc.get_traced_memory()[0] - base
alive = sum(ref() is not None for ref in refs)
tracemalloc.stop()
if WITH:
    try:
        raise RuntimeError("gave up")
    except RuntimeError:
        log.error("payment failed", exc_info=True)
    assert posthog_errors.flush(30)
print(json.dumps({"held": held, "alive": alive}))
"""


def run_child(script: str, server: CaptureServer, *args: str) -> dict[str, Any]:
    result = run_script(script, server.url, timeout=180, extra_args=list(args), hang_after=150)
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_sixty_retries_logged_with_exc_info_pin_no_traceback() -> None:
    with CaptureServer() as server:
        without = run_child(RETRIES, server, "without")
        with_library = run_child(RETRIES, server, "with")
        [event] = server.wait_for_events(1)
    print("held without / with:", without["held"], with_library["held"])
    assert without["alive"] == 0
    assert with_library["alive"] == 0  # no frame of the 60 failures survives
    # A trail of 60 steps: their text, not 60 x 4 MiB of frames.
    assert with_library["held"] - without["held"] < 256 * 1024
    steps = event["properties"]["$exception_steps"]
    assert [s["$message"] for s in steps] == ["warming up"] * 2 + ["retrying"] * 60
    assert [s["exception_message"] for s in steps[2:]] == [f"attempt {i} reset" for i in range(60)]
    assert {s["exception_type"] for s in steps} == {"ConnectionError"}


BURST = """
import gc, json, logging, sys, tracemalloc

WITH = sys.argv[2] == "with"
COUNT = int(sys.argv[3])
if WITH:
    posthog_errors.install(client, rate_limit=None, excepthooks=False, asyncio=False,
                           unraisable=False, max_queue_size=COUNT + 10)
logging.getLogger().addHandler(logging.NullHandler())
log = logging.getLogger("app.requests")
MIB = 1024 * 1024


def body(number):
    kind = number % 3
    if kind == 0:
        return "x" * MIB
    if kind == 1:
        return b"y" * MIB
    return {"form": "z" * MIB, "rows": list(range(1000))}


def burst(n, start):
    for number in range(start, start + n):
        log.error("request %s failed", number, extra={"request_body": body(number)})


burst(3, -3)  # warm up: the worker, the client's consumer
if WITH:
    assert posthog_errors.flush(30)
gc.collect()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
burst(COUNT, 0)
peak = tracemalloc.get_traced_memory()[1] - base
tracemalloc.stop()
flushed = posthog_errors.flush(120) if WITH else True
print(json.dumps({"peak": peak, "flushed": flushed,
                  "stats": posthog_errors.stats() if WITH else None}))
"""
BURST_COUNT = 400
# The library's share of the burst's peak: the queue of bounded snapshots (each at most
# QUEUED_BUDGET characters of the app's values; here one 2 KiB cut body each) and the
# events the worker built meanwhile, against 400 MiB of bodies.
BURST_BOUND = 24 * MIB


def test_a_burst_of_errors_with_megabyte_extras_costs_a_bounded_amount() -> None:
    with CaptureServer() as server:
        without = run_child(BURST, server, "without", str(BURST_COUNT))
        with_library = run_child(BURST, server, "with", str(BURST_COUNT))
        events = server.wait_for_events(BURST_COUNT + 3)
    print(f"peak without {without['peak'] / MIB:.1f} MiB, with {with_library['peak'] / MIB:.1f}")
    assert with_library["flushed"] is True
    assert with_library["stats"]["sent"] == BURST_COUNT + 3
    assert with_library["peak"] - without["peak"] < BURST_BOUND
    bodies = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    sent = bodies["request 0 failed"]["properties"]["request_body"]
    assert sent.startswith("xxxx") and len(sent) <= 1024  # cut, as before, and sent
