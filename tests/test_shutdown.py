"""Interpreter exit: what fails after the exit flush is still delivered, within a bound.

The exit flush runs first (before ``atexit`` handlers, while the posthog client still
accepts events); an ``atexit`` handler, or a ``__del__`` it triggers, may fail after it.
"""

from __future__ import annotations

import time

from posthog_errors.capture_server import CaptureServer, Fault
from tests.scripts import run_script


def values(server: CaptureServer, count: int) -> list[str]:
    events = server.wait_for_events(count, timeout=10)
    return sorted(e["properties"]["$exception_list"][0]["value"] for e in events)


def test_errors_logged_by_atexit_handlers_and_del_at_exit_are_delivered(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        import atexit, logging
        posthog_errors.install(client)
        logging.getLogger("app").error("while running")     # the worker is running

        class Connection:
            def __del__(self):
                logging.getLogger("db").error("connection closed uncleanly")

        holder = [Connection()]

        def on_exit():
            logging.getLogger("shutdown").error("could not save the cache")
            holder.clear()                                   # __del__ runs here
        atexit.register(on_exit)
        """,
        capture_server.url,
        hang_after=30,
    )
    assert result.returncode == 0, result.stderr
    assert values(capture_server, 3) == [
        "connection closed uncleanly",
        "could not save the cache",
        "while running",
    ]


def test_the_first_capture_of_a_process_at_exit_is_delivered(
    capture_server: CaptureServer,
) -> None:
    # No worker yet when the atexit handler fails (Python 3.12+ starts no thread then).
    result = run_script(
        """
        import atexit, logging
        posthog_errors.install(client)
        atexit.register(lambda: logging.getLogger("shutdown").error("failed at exit only"))
        """,
        capture_server.url,
        hang_after=30,
    )
    assert result.returncode == 0, result.stderr
    assert values(capture_server, 1) == ["failed at exit only"]


def test_exit_stays_bounded_when_posthog_never_answers() -> None:
    with CaptureServer(fault=Fault(hang=True)) as server:
        started = time.monotonic()
        result = run_script(
            """
            import atexit, logging
            client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01,
                                     max_retries=0, timeout=60)
            posthog_errors.install(client, shutdown_timeout=1.0)
            for n in range(5):
                logging.getLogger("app").error("failure %d", n)
            for n in range(5):
                atexit.register(logging.getLogger("shutdown").error, "at exit %d", n)
            """,
            server.url,
            hang_after=60,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # The exit flush, then the late captures, each bounded by shutdown_timeout (1 s), and
    # posthog's own exit flush (1 s): a hang would run into the 60 s watchdog.
    assert elapsed < 20, elapsed
