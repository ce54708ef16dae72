"""install(): every interpreter hook, chained, in real child processes."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import warnings

import posthog
import pytest

import posthog_errors
from posthog_errors.capture_server import CaptureServer, Fault
from tests.scripts import run_script


def sources(events: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return sorted(e["properties"]["$exception_source"] for e in events)


def test_uncaught_exception_is_fatal_runs_the_previous_hook_and_keeps_the_exit_code(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        def previous_hook(exc_type, exc, tb):
            print("previous hook ran:", exc_type.__name__, exc, file=sys.stderr)
        sys.excepthook = previous_hook
        posthog_errors.install(client, logs=False)
        def main():
            raise RuntimeError("unhandled in main")
        main()
        """,
        capture_server.url,
    )
    assert result.returncode == 1
    assert "previous hook ran: RuntimeError unhandled in main" in result.stderr
    [event] = capture_server.wait_for_events(1)
    props = event["properties"]
    assert props["$exception_level"] == "fatal"
    assert props["$exception_handled"] is False
    assert props["$exception_source"] == "python.sys_excepthook"
    entry = props["$exception_list"][0]
    assert entry["mechanism"]["type"] == "onuncaughtexception"
    assert entry["stacktrace"]["frames"][-1]["function"] == "main"


def test_default_traceback_still_printed_and_system_exit_not_captured(
    capture_server: CaptureServer,
) -> None:
    crashed = run_script(
        "posthog_errors.install(client, logs=False)\nraise KeyError('gone')",
        capture_server.url,
    )
    assert crashed.returncode == 1
    assert "Traceback (most recent call last)" in crashed.stderr
    assert "KeyError: 'gone'" in crashed.stderr
    exited = run_script(
        "posthog_errors.install(client, logs=False)\nraise SystemExit(3)", capture_server.url
    )
    interrupted = run_script(
        "posthog_errors.install(client, logs=False)\nraise KeyboardInterrupt", capture_server.url
    )
    assert exited.returncode == 3
    assert interrupted.returncode != 0 and "KeyboardInterrupt" in interrupted.stderr
    events = capture_server.wait_for_events(2, timeout=2)
    assert [e["properties"]["$exception_list"][0]["type"] for e in events] == ["KeyError"]


def test_thread_asyncio_and_unraisable_exceptions_each_arrive_once(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        import asyncio, gc, threading
        early_loop = asyncio.new_event_loop()          # created before install()
        posthog_errors.install(client, logs=False)

        def work():
            raise ValueError("in a thread")
        thread = threading.Thread(target=work, name="worker-1")
        thread.start(); thread.join()

        def callback():
            raise LookupError("in a loop callback")
        early_loop.call_soon(callback)
        early_loop.call_soon(early_loop.stop)
        early_loop.run_forever()
        early_loop.close()

        async def fails():
            raise ArithmeticError("task result never retrieved")
        async def main():
            task = asyncio.ensure_future(fails())
            await asyncio.sleep(0.01)
            del task
            gc.collect()
        asyncio.run(main())

        class Leaky:
            def __del__(self):
                raise OSError("in __del__")
        leaky = Leaky()
        del leaky
        """,
        capture_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert "Exception in thread worker-1" in result.stderr  # the previous hooks still ran
    assert "Exception ignored in" in result.stderr
    events = capture_server.wait_for_events(4)
    by_type = {e["properties"]["$exception_list"][0]["type"]: e["properties"] for e in events}
    assert len(events) == 4 and set(by_type) == {
        "ValueError",
        "LookupError",
        "ArithmeticError",
        "OSError",
    }
    assert by_type["ValueError"]["$exception_source"] == "python.threading_excepthook"
    assert by_type["ValueError"]["thread_name"] == "worker-1"
    assert by_type["LookupError"]["$exception_source"] == "python.asyncio"
    assert by_type["ArithmeticError"]["$exception_source"] == "python.asyncio"
    assert "never retrieved" in by_type["ArithmeticError"]["asyncio_message"]
    assert by_type["OSError"]["$exception_source"] == "python.unraisablehook"
    assert "Leaky.__del__" in by_type["OSError"]["unraisable_object"]
    for props in by_type.values():
        assert props["$exception_level"] == "error"
        assert props["$exception_handled"] is False


def test_logged_then_captured_then_uncaught_is_one_event(capture_server: CaptureServer) -> None:
    result = run_script(
        """
        import logging
        posthog_errors.install(client)          # also attaches the root handler
        try:
            raise ValueError("one failure, three doors")
        except ValueError as error:
            logging.getLogger("app").exception("logged first")
            assert posthog_errors.capture_exception(error) is None
            raise
        """,
        capture_server.url,
    )
    assert result.returncode == 1
    events = capture_server.wait_for_events(2, timeout=2)
    assert len(events) == 1
    assert events[0]["properties"]["$exception_source"] == "python.logging"


def test_a_failing_posthog_makes_no_feedback_loop() -> None:
    with CaptureServer(fault=Fault(status=503)) as server:
        result = run_script(
            """
            import logging, time
            client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01,
                                     max_retries=2)
            logging.getLogger().setLevel(logging.DEBUG)
            posthog_errors.install(client, levels="*")
            logging.getLogger("app").error("the only real failure")
            time.sleep(4)          # the client fails, retries and logs all the while
            print(posthog_errors.stats())
            """,
            server.url,
        )
        assert result.returncode == 0, result.stderr
        requests = server.request_count
    stats = eval(result.stdout.strip().splitlines()[-1])
    assert stats["captured"] == 1 and stats["sent"] == 1
    assert 1 <= requests <= 3  # one event: its upload and two retries, nothing more


def test_install_is_idempotent_and_uninstall_restores_only_its_own_hooks(
    posthog_client: posthog.Posthog, capture_server: CaptureServer
) -> None:
    original = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    original_asyncio = asyncio.BaseEventLoop.call_exception_handler
    original_call_handlers = logging.Logger.callHandlers
    root_handlers = list(logging.getLogger().handlers)
    installation = posthog_errors.install(posthog_client)
    try:
        assert posthog_errors.install(posthog_client) is installation
        ours = sys.excepthook
        assert ours.__name__ == "posthog_errors_excepthook"
        assert threading.excepthook.__name__ == "posthog_errors_threading_excepthook"
        assert sys.unraisablehook.__name__ == "posthog_errors_unraisablehook"
        assert logging.Logger.callHandlers.__name__ == "posthog_errors_call_handlers"
        assert logging.getLogger().handlers == root_handlers  # no handler added anywhere

        def someone_elses_hook(*args: object) -> None:
            ours(*args)  # type: ignore[arg-type]

        sys.excepthook = someone_elses_hook
    finally:
        posthog_errors.uninstall()
    try:
        assert sys.excepthook is someone_elses_hook  # chained onto ours: left in place,
        someone_elses_hook(ValueError, ValueError("after uninstall"), None)
        assert posthog_errors.stats()["captured"] == 0  # but switched off
        assert threading.excepthook is original[1]
        assert sys.unraisablehook is original[2]
        assert asyncio.BaseEventLoop.call_exception_handler is original_asyncio
        assert logging.Logger.callHandlers is original_call_handlers
        assert logging.getLogger().handlers == root_handlers
        assert posthog_errors.install(posthog_client) is not installation
    finally:
        posthog_errors.uninstall()
        sys.excepthook = original[0]
    assert capture_server.wait_for_events(1, timeout=0.5) == []


def test_install_without_any_client_warns_once_and_captures_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("POSTHOG_API_KEY", "POSTHOG_PROJECT_API_KEY", "POSTHOG_HOST"):
        monkeypatch.delenv(name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with posthog_errors.install(logs=False):
            assert posthog_errors.capture_exception(ValueError("nowhere to go")) is None
            assert posthog_errors.capture_exception(KeyError("still nowhere")) is None
    assert [str(w.message).split(":")[0] for w in caught] == [
        "posthog-errors has no PostHog client"
    ]
    counts = posthog_errors.stats()
    assert (counts["captured"], counts["dropped"]) == (2, 2)


def test_bad_install_options_fail_clearly(posthog_client: posthog.Posthog) -> None:
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        posthog_errors.install(posthog_client, levels=["loud"])
    with pytest.raises(ValueError, match="burst"):
        posthog_errors.install(posthog_client, rate_limit=(0, 1.0))
    with pytest.raises(ValueError, match="max_queue_size"):
        posthog_errors.install(posthog_client, max_queue_size=0)
    assert posthog_errors._install.active_installation() is None


def test_a_handler_on_every_logger_and_posthogs_own_exception_logging_make_no_loop() -> None:
    with CaptureServer(fault=Fault(status=500)) as server:
        result = run_script(
            """
            import logging, time
            client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01,
                                     max_retries=1, log_captured_exceptions=True)
            logging.getLogger().setLevel(logging.DEBUG)
            installation = posthog_errors.install(client, levels="*")
            # A handler on every logger there is, the client's and this library's included.
            names = ["posthog", "posthog.consumer", "urllib3", "urllib3.connectionpool",
                     "backoff", "requests", "posthog_errors", "app"]
            for name in names + list(logging.Logger.manager.loggerDict):
                logging.getLogger(name).addHandler(installation.handler)
            try:
                raise ValueError("the only real failure")
            except ValueError as error:
                client.capture_exception(error)          # posthog-python logs it too
                logging.getLogger("app").exception("and the app logs it")
            time.sleep(4)
            print(posthog_errors.stats())
            """,
            server.url,
        )
        assert result.returncode == 0, result.stderr
        requests = server.request_count
    stats = eval(result.stdout.strip().splitlines()[-1])
    # The app's record reaches the handler twice (on "app" and, propagated, on the root):
    # both times it is posthog-python's already-sent exception.
    assert stats["captured"] == stats["deduplicated"] == 2 and stats["sent"] == 0, stats
    # posthog-python's event and ours are one batch or two, each tried twice: no growth.
    assert 1 <= requests <= 4
