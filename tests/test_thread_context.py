"""What a new thread inherits: Python 3.14's ``sys.flags.thread_inherit_context``.

With the flag (``-X thread_inherit_context=1``, the default of free-threaded builds), a
``threading.Thread`` starts in a copy of its starter's context; without it (and on 3.10 to
3.13) in an empty one. The person (distinct ID, session, bound properties) follows the
thread when the flag says so; the exception steps never do: a new thread starts with an
empty trail, whatever the flag, and ``carry_context()`` still carries both on purpose.

Each setting runs in its own child process (the flag is read at start-up), and the test
asserts on the events the child's posthog client sent to the loopback capture server.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from posthog_errors.capture_server import CaptureServer
from tests.scripts import PRELUDE

HAS_FLAG = hasattr(sys.flags, "thread_inherit_context")

SCRIPT = """
import logging, threading
from concurrent.futures import ThreadPoolExecutor

posthog_errors.install(client)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False  # quiet: install()'s hook sees the records without any handler

def capture(error_type, message):
    try:
        raise error_type(message)
    except error_type as error:
        posthog_errors.capture_exception(error)

def new_thread():
    log.info("thread step")
    try:
        raise ValueError("logged in a new thread")
    except ValueError:
        log.exception("the thread's work failed")
    raise LookupError("uncaught in a new thread")   # threading.excepthook

def carried():
    log.info("carried step")
    capture(ArithmeticError, "in a carried thread")

def task():
    log.info("task step")
    capture(OSError, "in an executor worker")

with posthog_errors.bind("starter", session_id="starter-session", properties={"plan": "pro"}):
    log.info("starter step")
    posthog_errors.add_step("starter's own step")
    for target in (new_thread, posthog_errors.carry_context(carried)):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    with ThreadPoolExecutor(1) as executor:   # its worker is started by this submit
        executor.submit(task).result()
    log.info("starter step after the threads")
    capture(RuntimeError, "in the starter")

assert posthog_errors.flush(10)
print(getattr(sys.flags, "thread_inherit_context", "absent"))
"""

STARTER_STEPS = ["starter step", "starter's own step"]


def _run(server: CaptureServer, inherit: int) -> tuple[str, dict[str, dict[str, Any]]]:
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            f"thread_inherit_context={inherit}",
            "-c",
            PRELUDE + textwrap.dedent(SCRIPT),
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Exception in thread" in result.stderr  # the default thread hook still printed
    events = server.wait_for_events(5)
    assert len(events) == 5, events
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    return result.stdout.strip(), by_value


def _steps(event: dict[str, Any]) -> list[str]:
    return [step["$message"] for step in event["properties"].get("$exception_steps", [])]


def _person(event: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(distinct ID or None when personless, session ID, the bound ``plan``)."""
    props = event["properties"]
    personless = props.get("$process_person_profile") is False
    return (
        None if personless else event["distinct_id"],
        props.get("$session_id"),
        props.get("plan"),
    )


STARTER = ("starter", "starter-session", "pro")
NOBODY = (None, None, None)


def _assert_common(by_value: dict[str, dict[str, Any]]) -> None:
    """What holds whatever the flag."""
    assert set(by_value) == {
        "logged in a new thread",
        "uncaught in a new thread",
        "in a carried thread",
        "in an executor worker",
        "in the starter",
    }
    # A new thread's trail starts empty: its own steps only.
    assert _steps(by_value["logged in a new thread"]) == ["thread step"]
    assert _steps(by_value["uncaught in a new thread"]) == ["thread step"]
    assert by_value["uncaught in a new thread"]["properties"]["$exception_source"] == (
        "python.threading_excepthook"
    )
    assert _steps(by_value["in an executor worker"]) == ["task step"]
    # install() makes each executor job a unit of work with its submitter's person.
    assert _person(by_value["in an executor worker"]) == STARTER
    # carry_context() carries the person and the steps, on purpose.
    assert _person(by_value["in a carried thread"]) == STARTER
    assert _steps(by_value["in a carried thread"]) == [*STARTER_STEPS, "carried step"]
    # No thread's steps ever reach its starter.
    assert _person(by_value["in the starter"]) == STARTER
    assert _steps(by_value["in the starter"]) == [
        *STARTER_STEPS,
        "starter step after the threads",
    ]


@pytest.mark.skipif(not HAS_FLAG, reason="sys.flags.thread_inherit_context is new in Python 3.14")
def test_with_the_flag_the_person_follows_a_new_thread_but_not_the_steps(
    capture_server: CaptureServer,
) -> None:
    flag, by_value = _run(capture_server, 1)
    assert flag == "1"
    _assert_common(by_value)
    for value in ("logged in a new thread", "uncaught in a new thread"):
        assert _person(by_value[value]) == STARTER, value


def test_without_the_flag_a_new_thread_starts_with_nobody_and_no_steps(
    capture_server: CaptureServer,
) -> None:
    """``-X thread_inherit_context=0``; before 3.14 the option means nothing and a new
    thread always starts with an empty context: the same behaviour."""
    flag, by_value = _run(capture_server, 0)
    assert flag == ("0" if HAS_FLAG else "absent")
    _assert_common(by_value)
    for value in ("logged in a new thread", "uncaught in a new thread"):
        assert _person(by_value[value]) == NOBODY, value
