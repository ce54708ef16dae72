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


# -- signals and serverless, in process -------------------------------------------------


def test_signal_hooks_show_sig_dfl_and_undo_cleanly() -> None:
    import signal

    from posthog_errors import _shutdown

    real_signal, real_getsignal = signal.signal, signal.getsignal
    before = real_getsignal(signal.SIGTERM)
    undo = _shutdown.install_signal_hooks(1.0)
    try:
        # Ours is in place at SIG_DFL, but the app and every server still see SIG_DFL.
        assert signal.getsignal(signal.SIGTERM) is before
        if before is signal.SIG_DFL:
            assert _shutdown._HOOKS.previous_getsignal(signal.SIGTERM) is not signal.SIG_DFL

        def app_handler(signum: int, frame: object) -> None: ...

        # A handler the app sets is its own, untouched; SIG_DFL set again gets ours back.
        assert signal.signal(signal.SIGTERM, app_handler) is before
        assert (
            real_getsignal(signal.SIGTERM) is app_handler
            or signal.getsignal(signal.SIGTERM) is app_handler
        )
        assert signal.signal(signal.SIGTERM, signal.SIG_DFL) is app_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert (
            _shutdown._HOOKS.previous_getsignal(signal.SIGTERM)
            is _shutdown.posthog_errors_signal_handler
        )
    finally:
        undo()
        signal.signal(signal.SIGTERM, before)
    assert signal.signal is real_signal and signal.getsignal is real_getsignal
    assert signal.getsignal(signal.SIGTERM) is before


def test_install_option_turns_the_signal_hooks_off(posthog_client: object) -> None:
    import signal

    import posthog_errors
    from posthog_errors import _shutdown

    real_signal = signal.signal
    with posthog_errors.install(posthog_client, logs=False, flush_on_signals=False):
        assert signal.signal is real_signal
    with posthog_errors.install(posthog_client, logs=False):
        assert signal.signal is _shutdown._signal
    assert signal.signal is real_signal


def test_serverless_flushes_each_invocation_and_reports_what_escapes(
    capture_server: CaptureServer,
) -> None:
    import asyncio

    import pytest

    import posthog_errors
    from tests.conftest import make_client

    # A client that would hold its events for a minute: only the per-invocation flush
    # (not the prompt send, which is ~0.3 s later) delivers them before the handler returns.
    client = make_client(capture_server, flush_interval=60)
    with posthog_errors.install(client, logs=False, flush_on_signals=False):

        @posthog_errors.serverless
        def handler(event: dict[str, str], context: object) -> str:
            if event.get("fail"):
                raise KeyError("order 42 missing")
            return "ok"

        @posthog_errors.serverless(timeout=5)
        async def async_handler(event: dict[str, str], context: object) -> str:
            raise TimeoutError("upstream timed out")

        assert handler({}, None) == "ok"
        with pytest.raises(KeyError):
            handler({"fail": "1"}, None)
        assert len(capture_server.exception_events()) == 1  # flushed before it returned
        with pytest.raises(TimeoutError):
            asyncio.run(async_handler({}, None))
        assert len(capture_server.exception_events()) == 2
        with pytest.raises(ValueError), posthog_errors.serverless():
            raise ValueError("bad input")
        assert len(capture_server.exception_events()) == 3
    client.shutdown()
    values = sorted(
        e["properties"]["$exception_list"][0]["value"] for e in capture_server.exception_events()
    )
    assert values == ["'order 42 missing'", "bad input", "upstream timed out"]
