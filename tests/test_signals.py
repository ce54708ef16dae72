"""The caller's path under signals and asynchronous exceptions, in child processes.

A signal handler runs between two bytecodes of whatever the main thread was doing, which
may be the middle of a capture. If that capture held a lock, a handler that logs blocks on
it for ever; if the handler raises (an alarm-based timeout, Ctrl-C), the exception may leave
a lock held that every later capture, on every thread, waits for. Each child runs under a
faulthandler watchdog: a hang fails the test with every thread's stack.
"""

from __future__ import annotations

from posthog_errors.capture_server import CaptureServer
from tests.scripts import run_script

STORM = """
import logging, signal, threading, time

# install(), then a steady error rate on the main thread and two more, while SIGALRM fires
# every millisecond.
posthog_errors.install(client, rate_limit=(5, 20.0))
stop = threading.Event()

def capturing_thread(n):
    i = 0
    while not stop.is_set():
        try:
            raise KeyError(f"thread {n} failure {i % 7}")
        except KeyError as error:
            posthog_errors.capture_exception(error)
        i += 1
        time.sleep(0.0005)

threads = [threading.Thread(target=capturing_thread, args=(n,)) for n in range(2)]
for t in threads:
    t.start()
"""

REPORT = """
signal.setitimer(signal.ITIMER_REAL, 0)
stop.set()
for t in threads:
    t.join()
ok = posthog_errors.flush(10)
s = posthog_errors.stats()
print(ok, s["captured"], s["sent"] + s["deduplicated"] + s["rate_limited"] + s["filtered"]
      + s["dropped"], s["internal_errors"], handled[0])
"""


def _check_report(stdout: str, *, abandoned: int = 0) -> None:
    """``abandoned``: captures that an exception from the signal handler interrupted may
    each lack their outcome; nothing else may."""
    flushed, captured, accounted, internal, handled = stdout.split()
    assert flushed == "True"
    assert int(captured) > 100, stdout
    assert 0 <= int(captured) - int(accounted) <= abandoned, stdout  # nothing else lost
    assert internal == "0"
    assert int(handled) > 100, "the signal handler barely ran: the test proves nothing"


def test_a_signal_handler_that_logs_errors_never_deadlocks(capture_server: CaptureServer) -> None:
    result = run_script(
        STORM
        + """
handled = [0]
def on_alarm(signum, frame):
    handled[0] += 1
    logging.getLogger("alarm").error("deadline check %d failed", handled[0] % 3)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
end = time.monotonic() + 3
i = 0
try:
    while time.monotonic() < end:
        try:
            raise ValueError(f"main failure {i % 5}")
        except ValueError:
            logging.getLogger("app").exception("main loop failed")
        i += 1
finally:  # should the app die (below), its threads stop and it exits
    signal.setitimer(signal.ITIMER_REAL, 0)
    stop.set()
"""
        + REPORT,
        capture_server.url,
        hang_after=40,
    )
    if result.returncode != 0 and _stderr_reentrancy(result.stderr):
        # CPython's own behaviour, not the library's: the app's handler writes to stderr
        # (logging's last resort) from a signal handler that interrupted the main thread in
        # a write to that same stderr. BufferedWriter refuses the nested write ("reentrant
        # call inside <_io.BufferedWriter name='<stderr>'>", seen on 3.14 under load),
        # logging.Handler.handleError lets that RuntimeError through (it swallows OSError
        # only), and the app dies of it, with or without posthog-errors. What the library
        # promises then is that the app behaves exactly as it would without it: no hang
        # (the watchdog would have said "Timeout"), the interpreter's own uncaught-exception
        # output (install()'s excepthook chains to the default one), status 1.
        assert result.returncode == 1, result.stderr[-5000:]
        assert "Timeout" not in result.stderr, result.stderr[-5000:]
        assert "Traceback (most recent call last):" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-5000:]
    _check_report(result.stdout)
    assert capture_server.wait_for_events(1)


_REENTRANT = "RuntimeError: reentrant call inside <_io.BufferedWriter name='<stderr>'>"


def _stderr_reentrancy(stderr: str) -> bool:
    """Whether the child died of CPython's refusal of a nested write to stderr: the last
    line of its output is that uncaught RuntimeError."""
    lines = stderr.rstrip().splitlines()
    return bool(lines) and lines[-1] == _REENTRANT


def test_exceptions_raised_by_a_signal_handler_mid_capture_leave_nothing_locked(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        STORM
        + """
handled = [0]
class Deadline(Exception):
    pass

LIBRARY = ("posthog_errors",)

def on_alarm(signum, frame):
    # As signal.alarm timeouts and Celery's soft time limit do, but only when the main
    # thread is inside the library (the app's own loop, below,
    # catches it there; anywhere else it would just end the test).
    if str(frame.f_globals.get("__name__")).startswith(LIBRARY):
        handled[0] += 1
        raise Deadline()

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
end = time.monotonic() + 3
interrupted = 0
while time.monotonic() < end:
    try:
        try:
            raise ValueError("main failure")
        except ValueError as error:
            posthog_errors.capture_exception(error)
            logging.getLogger("app").error("and a message")
    except Deadline:
        interrupted += 1      # wherever it landed, inside the library included
signal.setitimer(signal.ITIMER_REAL, 0)
assert posthog_errors.flush(10)     # the storm's backlog (the queue may have been full)
# Every door still works afterwards, on this thread and on a new one.
def later():
    try:
        raise LookupError("after the storm")
    except LookupError as error:
        assert posthog_errors.capture_exception(error) is not None
later_thread = threading.Thread(target=later)
later_thread.start(); later_thread.join()
later()
"""
        + REPORT,
        capture_server.url,
        hang_after=40,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    _check_report(result.stdout, abandoned=int(result.stdout.split()[4]))
    values = [e["properties"]["$exception_list"][0]["value"] for e in capture_server.events]
    assert values.count("after the storm") == 2


def test_an_exception_whose_getattr_logs_does_not_deadlock(capture_server: CaptureServer) -> None:
    result = run_script(
        """
        import logging
        posthog_errors.install(client)

        class Delegating(Exception):
            # A wrapper that logs every attribute it does not have, as delegating
            # wrappers do: the captured-mark check runs it.
            def __getattr__(self, name):
                logging.getLogger("wrapper").error(
                    "no attribute %s", name, exc_info=LookupError(name)
                )
                raise AttributeError(name)

        try:
            raise Delegating("wrapped failure")
        except Delegating:
            logging.getLogger("app").exception("request failed")
        print(posthog_errors.flush(5))
        """,
        capture_server.url,
        hang_after=20,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.strip() == "True"
    types = [e["properties"]["$exception_list"][0]["type"] for e in capture_server.events]
    assert types.count("Delegating") == 1
