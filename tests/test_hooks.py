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
    # The default unraisable hook still printed: CPython 3.14 reworded its heading and
    # moved the object into the message ("Exception ignored while calling deallocator
    # <function Leaky.__del__ at 0x...>:" instead of "Exception ignored in: <function ...>").
    if sys.version_info >= (3, 14):
        assert "Exception ignored while calling deallocator <function Leaky.__del__" in (
            result.stderr
        )
    else:
        assert "Exception ignored in: <function Leaky.__del__" in result.stderr
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
    assert by_type["LookupError"]["$exception_source"] == "python.asyncio_exception_handler"
    assert by_type["ArithmeticError"]["$exception_source"] == "python.asyncio_exception_handler"
    assert "never retrieved" in by_type["ArithmeticError"]["asyncio_message"]
    assert by_type["OSError"]["$exception_source"] == "python.sys_unraisablehook"
    unraisable = by_type["OSError"]
    if sys.version_info >= (3, 14):  # the object is in CPython's message, and not passed
        assert unraisable["unraisable_message"].startswith(
            "Exception ignored while calling deallocator <function Leaky.__del__ at 0x"
        )
        assert "unraisable_object" not in unraisable
    else:
        assert unraisable["unraisable_message"] == "Exception ignored in"
        assert "Leaky.__del__" in unraisable["unraisable_object"]
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
    # Handed to the client, which then gave up on it: counted lost, never sent.
    assert (stats["captured"], stats["sent"], stats["undelivered"]) == (1, 0, 1)
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


def test_a_client_callable_is_called_per_event_never_at_install(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        import contextvars, logging
        tenant = contextvars.ContextVar("tenant")      # no default: unset outside a request
        clients = {"acme": client}
        calls = []
        def client_for_request():
            calls.append(tenant.get())                  # LookupError outside a request
            return clients[tenant.get()]
        posthog_errors.install(client_for_request)      # start-up: no request here
        assert calls == [], calls
        def request():
            tenant.set("acme")
            posthog_errors.set_distinct_id("acme-user")
            logging.getLogger("app").error("failed inside the request")
        contextvars.copy_context().run(request)
        assert calls == ["acme"], calls
        # Outside a request the callable raises: those events have nowhere to go.
        logging.getLogger("app").error("failed at start-up")
        logging.getLogger("app").error("failed at start-up again")
        assert posthog_errors.flush(5)
        stats = posthog_errors.stats()
        print(stats["sent"], stats["dropped"], stats["invalid_input"], stats["internal_errors"])
        """,
        capture_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "2", "0"]
    assert result.stderr.count("the client callable raised LookupError") == 1, result.stderr
    [event] = capture_server.wait_for_events(1)
    assert event["distinct_id"] == "acme-user"


def test_a_second_install_with_other_options_warns_naming_them(
    posthog_client: posthog.Posthog,
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with posthog_errors.install(posthog_client, logs=False) as installation:
            same = posthog_errors.install(posthog_client, logs=False)
            assert caught == []
            other = posthog_errors.install(
                posthog_client, logs=True, levels=["warning"], capture_exits=True
            )
    assert same is installation and other is installation
    [warning] = caught
    message = str(warning.message)
    assert "already installed" in message
    assert "logs=True" in message
    assert "levels=['warning']" in message
    assert "capture_exits=True" in message
    assert "client" not in message.split("ignored:")[1]  # the same client is not "different"


def test_levels_below_the_root_level_warn_once() -> None:
    result = run_script(
        """
        import warnings
        warnings.simplefilter("always")
        posthog_errors.install(client, levels=["info", "error"])   # root is at WARNING
        posthog_errors.uninstall()
        posthog_errors.install(client, levels=["info", "error"])
        posthog_errors.uninstall()
        posthog_errors.install(client, levels="*")                 # whatever is made
        """,
        "http://127.0.0.1:9",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("RuntimeWarning") == 1, result.stderr
    assert "allows INFO records, but the root logger is at WARNING" in result.stderr


@pytest.mark.parametrize(
    ("exit_call", "code", "reported"),
    [
        ('sys.exit("config file missing")', 1, "config file missing"),
        ("sys.exit(3)", 3, "3"),
        ("sys.exit(0)", 0, None),
        ("sys.exit()", 0, None),
        ("sys.exit(None)", 0, None),
    ],
)
def test_capture_exits_reports_a_failing_sys_exit_of_the_main_thread(
    capture_server: CaptureServer, exit_call: str, code: int, reported: str | None
) -> None:
    result = run_script(
        f"""
        posthog_errors.install(client, logs=False, capture_exits=True)
        def main():
            {exit_call}
        main()
        """,
        capture_server.url,
    )
    assert result.returncode == code
    events = capture_server.wait_for_events(1, timeout=5 if reported else 1)
    if reported is None:
        assert events == []
        return
    assert "config file missing" in result.stderr or code != 1  # the usual message
    [event] = events
    props = event["properties"]
    entry = props["$exception_list"][0]
    assert (entry["type"], entry["value"]) == ("SystemExit", reported)
    assert props["$exception_source"] == "python.sys_exit"
    assert props["$exception_level"] == "fatal"
    assert props["exit_code"] == code
    # The stack is the caller's: it ends at the sys.exit() line in main().
    assert [f["function"] for f in entry["stacktrace"]["frames"]][-2:] == ["<module>", "main"]


def test_sys_exit_without_capture_exits_and_a_caught_exit_in_a_thread_are_not_reported(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        import threading
        posthog_errors.install(client, logs=False)
        assert sys.exit.__name__ == "exit"              # not wrapped without capture_exits
        posthog_errors.uninstall()
        posthog_errors.install(client, logs=False, capture_exits=True)
        t = threading.Thread(target=sys.exit, args=(5,), name="exiting")
        t.start(); t.join()                             # a thread's exit: its own hook
        posthog_errors.flush(5)
        sys.exit(2)
        """,
        capture_server.url,
    )
    assert result.returncode == 2
    events = capture_server.wait_for_events(3, timeout=2)
    assert sources(events) == ["python.sys_exit", "python.threading_excepthook"]


def test_capture_exits_follows_the_exit_code_rule_in_threads_and_processes(
    capture_server: CaptureServer,
) -> None:
    """sys.exit(0), sys.exit() and sys.exit(None) are success wherever they end a thread
    or a multiprocessing child: not reported. A failing code still is."""
    result = run_script(
        """
        import multiprocessing, threading
        posthog_errors.install(client, logs=False, capture_exits=True)
        for args in [(0,), (), (None,), (4,)]:
            t = threading.Thread(target=sys.exit, args=args, name=f"exit{args}")
            t.start(); t.join()
        for code in (0, 6):
            p = multiprocessing.get_context("fork").Process(target=sys.exit, args=(code,))
            p.start(); p.join()
            print(p.exitcode, flush=True)
        posthog_errors.flush(5)
        """,
        capture_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "6"]
    events = capture_server.wait_for_events(3, timeout=3)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert sorted(by_value) == ["4", "6"]  # one event each, no success exit
    assert by_value["4"]["properties"]["$exception_source"] == "python.threading_excepthook"
    # The forked child's sys.exit() is its main thread's: reported at the call.
    assert by_value["6"]["properties"]["$exception_source"] in (
        "python.sys_exit",
        "python.multiprocessing_process",
    )


def test_install_never_raises_for_a_stub_module_of_another_library(
    capture_server: CaptureServer,
) -> None:
    """A test stub in ``sys.modules["sentry_sdk"]`` (and ``celery``): install() warns once,
    counts it, leaves every hook in place once, and a second install() is the same one."""
    result = run_script(
        """
        import logging, threading, types
        logging.basicConfig(format="%(name)s: %(message)s")
        sys.modules["sentry_sdk"] = types.ModuleType("sentry_sdk")
        sys.modules["celery"] = types.ModuleType("celery")
        first = posthog_errors.install(client)
        hooks = (sys.excepthook, threading.excepthook, logging.Logger.callHandlers)
        second = posthog_errors.install(client)
        assert first is second
        assert (sys.excepthook, threading.excepthook, logging.Logger.callHandlers) == hooks
        print(posthog_errors.stats()["invalid_input"], posthog_errors.stats()["internal_errors"])
        try:
            raise ValueError("reported all the same")
        except ValueError:
            logging.getLogger("app").exception("still works")
        posthog_errors.uninstall()
        assert sys.excepthook is sys.__excepthook__
        posthog_errors.flush(5)
        """,
        capture_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "0"]
    warned = [line for line in result.stderr.splitlines() if "posthog-errors can use" in line]
    assert len(warned) == 2, result.stderr  # once for each library
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_list"][0]["value"] == "reported all the same"


def test_every_hook_wrapped_by_another_library_is_switched_off_in_place(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        import asyncio, logging, threading
        seen = []
        posthog_errors.install(client, capture_exits=True)
        # Another library chains onto each of our hooks, as sentry-sdk does.
        def wrap(owner, name):
            ours = getattr(owner, name)
            def theirs(*args):
                seen.append(name)
                return ours(*args)
            setattr(owner, name, theirs)
        for owner, name in [(sys, "excepthook"), (threading, "excepthook"),
                            (sys, "unraisablehook"), (sys, "exit"),
                            (asyncio.BaseEventLoop, "call_exception_handler"),
                            (logging.Logger, "callHandlers")]:
            wrap(owner, name)
        posthog_errors.uninstall()
        logging.getLogger("app").error("after uninstall")          # callHandlers
        t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()
        class Leaky:
            def __del__(self): raise OSError("in __del__")
        Leaky()
        async def forgotten(): raise LookupError("never retrieved")
        async def main():
            asyncio.get_running_loop().create_task(forgotten())
            await asyncio.sleep(0.01)
        asyncio.run(main())
        import gc; gc.collect()
        print(sorted(set(seen)), posthog_errors.stats()["captured"], flush=True)
        sys.exit("bye")
        """,
        capture_server.url,
    )
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == (
        "['callHandlers', 'call_exception_handler', 'excepthook', 'unraisablehook'] 0"
    ), result.stderr
    # Their chain still reaches the hooks before ours: the app's output is as usual.
    assert "after uninstall" in result.stderr
    assert "ZeroDivisionError" in result.stderr
    assert "OSError: in __del__" in result.stderr
    assert "never retrieved" in result.stderr
    assert capture_server.wait_for_events(1, timeout=1) == []
