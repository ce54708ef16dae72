"""The hooks ``install()`` sets: the interpreter's last-chance hooks (``sys.excepthook``,
``threading.excepthook``, ``sys.unraisablehook``, asyncio's loop exception handler), the
record flow of :mod:`logging` (``Logger.callHandlers``) and, for ``capture_exits``,
``sys.exit``.

Each hook reports, then calls what was installed before it, so the app still sees the usual
traceback, log output and exit code. Each has its own function name (so a traceback or a
debugger shows whose hook it is) and each ``install_*`` returns a function that undoes it:
the previous hook is put back if ours is still the installed one; if another library has
chained onto ours since, ours stays in their chain but switches itself off, because
unhooking it would cut their hook out too.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from posthog_errors import _guard, _logs, _steps
from posthog_errors._reporter import Reporter
from posthog_errors.handler import STEP_ROUTE

if TYPE_CHECKING:
    from posthog_errors.handler import PostHogHandler

__all__ = [
    "install_asyncio_hook",
    "install_exit_hook",
    "install_logging_hook",
    "install_process_hook",
    "install_sys_excepthook",
    "install_threading_excepthook",
    "install_unraisablehook",
]

Restore = Callable[[], None]
_ident = threading.get_ident
_EXITS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)


# What install()'s logging hook reads on its hot path: module globals, not closure cells
# (every cell of a closure is copied into its frame on every call, steps or not).
_get_head, _set_head, _FITS = _steps.HEAD.get, _steps.HEAD.set, _steps.MAX_STEPS
_PID, _PLAIN_SIZE, _LogRecord = _steps.PID, _steps.PLAIN_RECORD_SIZE, logging.LogRecord
_MAX_MESSAGE, _MAX_ARGUMENTS = _steps.MAX_MESSAGE_LENGTH, _steps.MAX_ARGUMENTS
_MAX_ARGUMENT, _MAX_INT, _MIN_INT = _steps.MAX_ARGUMENT_LENGTH, 1 << 63, -(1 << 63)
_NO_LEVELS: frozenset[int] = frozenset()
_SLOW: Any = object()


class _Switch:
    """Whether one installed hook still reports. Off after ``uninstall()``: a hook that
    another library wrapped since cannot be taken out of the chain, only made to pass
    everything straight to the hook before it."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


def _undo(
    switch: _Switch,
    ours: object,
    previous: object,
    read: Callable[[], object],
    write: Callable[[Any], None],
) -> Restore:
    def restore() -> None:
        switch.on = False
        if read() is ours:
            write(previous)

    return restore


def _reportable(exc: object, capture_exits: bool) -> bool:
    """Whether a hook reports ``exc``: never a successful exit (``sys.exit()``,
    ``sys.exit(0)``, ``sys.exit(None)`` ending a thread or a process), whatever
    ``capture_exits`` says (docs/install.md, "Exits")."""
    if not isinstance(exc, BaseException):
        return False
    if not isinstance(exc, _EXITS):
        return True
    return capture_exits and not (isinstance(exc, SystemExit) and not _failure_code(exc.code))


def install_sys_excepthook(reporter: Reporter, *, capture_exits: bool = False) -> Restore:
    previous = sys.excepthook
    switch = _Switch()

    def posthog_errors_excepthook(
        exc_type: type[BaseException], exc_value: BaseException, tb: TracebackType | None
    ) -> None:
        try:
            if switch.on and _reportable(exc_value, capture_exits):
                # Delivered before the interpreter exits by the worker's exit flush.
                reporter.capture(
                    exc_value,
                    level="fatal",
                    handled=False,
                    mechanism="onuncaughtexception",
                    source="python.sys_excepthook",
                )
        finally:
            previous(exc_type, exc_value, tb)

    sys.excepthook = posthog_errors_excepthook
    return _undo(
        switch,
        posthog_errors_excepthook,
        previous,
        lambda: sys.excepthook,
        lambda hook: setattr(sys, "excepthook", hook),
    )


def install_threading_excepthook(reporter: Reporter, *, capture_exits: bool = False) -> Restore:
    previous = threading.excepthook
    switch = _Switch()

    def posthog_errors_threading_excepthook(args: threading.ExceptHookArgs) -> None:
        # Runs in the dying thread. Up to 3.13 the thread's target ran in the thread's own
        # context, which is still current here; from 3.14 it runs in ``thread._context``
        # (empty, or the starter's copy: sys.flags.thread_inherit_context) and this hook
        # runs outside it, so the person the thread bound is read from there.
        try:
            if switch.on and _reportable(args.exc_value, capture_exits):
                assert args.exc_value is not None
                thread = args.thread
                _thread_context(thread).run(
                    reporter.capture,
                    args.exc_value,
                    level="error",
                    handled=False,
                    mechanism="onuncaughtexception",
                    source="python.threading_excepthook",
                    properties={"thread_name": thread.name} if thread is not None else None,
                )
        finally:
            previous(args)

    threading.excepthook = posthog_errors_threading_excepthook
    return _undo(
        switch,
        posthog_errors_threading_excepthook,
        previous,
        lambda: threading.excepthook,
        lambda hook: setattr(threading, "excepthook", hook),
    )


def install_unraisablehook(reporter: Reporter) -> Restore:
    previous = sys.unraisablehook
    switch = _Switch()

    def posthog_errors_unraisablehook(unraisable: Any) -> None:
        try:
            exc = unraisable.exc_value
            if switch.on and _reportable(exc, False):
                # The object may be mid-finalisation: describe it now, never keep it.
                reporter.capture(
                    exc,
                    level="error",
                    handled=False,
                    mechanism="onuncaughtexception",
                    source="python.sys_unraisablehook",
                    properties=_unraisable_properties(unraisable),
                )
        finally:
            previous(unraisable)

    sys.unraisablehook = posthog_errors_unraisablehook
    return _undo(
        switch,
        posthog_errors_unraisablehook,
        previous,
        lambda: sys.unraisablehook,
        lambda hook: setattr(sys, "unraisablehook", hook),
    )


def install_asyncio_hook(reporter: Reporter) -> Restore:
    """Wrap ``BaseEventLoop.call_exception_handler``, the funnel of every loop's errors.

    Patching the class (not one loop) covers loops created before and after install(), and
    still runs whatever handler a loop has (``loop.set_exception_handler`` or the default),
    so chaining is preserved. uvloop's loops are not ``BaseEventLoop`` and are not covered.
    """
    import asyncio

    base = asyncio.BaseEventLoop
    previous = base.call_exception_handler
    switch = _Switch()

    def posthog_errors_asyncio_exception_handler(
        self: asyncio.BaseEventLoop, context: dict[str, Any]
    ) -> None:
        try:
            exc = context.get("exception")
            if (
                switch.on
                and isinstance(exc, Exception)
                and not isinstance(exc, asyncio.CancelledError)
            ):
                # Resolve the person in the failed task's own context, not the loop's.
                run = _task_context(context).run
                run(
                    reporter.capture,
                    exc,
                    level="error",
                    handled=False,
                    mechanism="onuncaughtexception",
                    source="python.asyncio_exception_handler",
                    properties={"asyncio_message": str(context.get("message") or "")},
                )
        finally:
            previous(self, context)

    base.call_exception_handler = posthog_errors_asyncio_exception_handler  # type: ignore[method-assign]
    return _undo(
        switch,
        posthog_errors_asyncio_exception_handler,
        previous,
        lambda: base.call_exception_handler,
        lambda hook: setattr(base, "call_exception_handler", hook),
    )


def install_process_hook(reporter: Reporter, *, capture_exits: bool = False) -> Restore:
    """Report an uncaught exception of a ``multiprocessing.Process``'s ``run()``.

    In a child process, ``sys.excepthook`` never runs: ``BaseProcess._bootstrap`` catches
    the exception, prints it itself and exits with status 1. So ``_bootstrap``, which runs
    in the child whatever the start method, is wrapped to wrap the process's own ``run``
    (a ``target``, or a subclass's override) for that process. The event is delivered by
    the exit flush, which ``_bootstrap`` still runs (``threading._shutdown``). A forked
    child inherits the hook; a spawned or forkserver child has it when ``install()`` runs
    at import time of the main module (which the child imports again), not only under
    ``if __name__ == "__main__":``.
    """
    from multiprocessing.process import BaseProcess

    previous = BaseProcess._bootstrap  # type: ignore[attr-defined]
    switch = _Switch()

    def posthog_errors_process_bootstrap(self: BaseProcess, *args: Any, **kwargs: Any) -> Any:
        if switch.on:
            run = self.run

            def posthog_errors_process_run() -> None:
                try:
                    run()
                except BaseException as exc:
                    if switch.on and _reportable(exc, capture_exits):
                        reporter.capture(
                            exc,
                            level="fatal",
                            handled=False,
                            mechanism="onuncaughtexception",
                            source="python.multiprocessing_process",
                            properties={"process_name": str(self.name)[:200]},
                        )
                    raise

            self.run = posthog_errors_process_run  # type: ignore[method-assign]
        return previous(self, *args, **kwargs)

    BaseProcess._bootstrap = posthog_errors_process_bootstrap  # type: ignore[attr-defined]
    return _undo(
        switch,
        posthog_errors_process_bootstrap,
        previous,
        lambda: BaseProcess._bootstrap,  # type: ignore[attr-defined]
        lambda hook: setattr(BaseProcess, "_bootstrap", hook),
    )


class _LevelGate:
    """The lowest level the logging hook looks at; above every level once switched off, so
    the hook's cost for a record is one comparison either way."""

    __slots__ = ("lowest",)

    def __init__(self, lowest: int) -> None:
        self.lowest = lowest

    def switch_off(self) -> None:
        self.lowest = sys.maxsize


def install_logging_hook(handler: PostHogHandler, logs: _logs.LogsOptions | None = None) -> Restore:
    """Chain ``logging.Logger.callHandlers``, which every logger calls for every record that
    passed its own level check, ``disabled`` flag and filters.

    No handler is added to any logger, so the app's logging stays exactly as it was: the
    last-resort output of an unconfigured script, ``basicConfig()`` after ``install()``,
    ``dictConfig``/``fileConfig``/Django's ``LOGGING`` replacing the root handlers, loggers
    that do not propagate. ``handler`` is never attached anywhere; the hook hands it the
    records at or above its level, before the app's handlers run (so an explicit
    ``PostHogHandler`` later in the same call knows the record was sent). sentry-sdk's
    logging integration chains the same method: each sees every record once, in either
    order.

    With ``logs`` (``send_logs``), a record at or above its level is also queued for
    PostHog Logs (``_logs.submit_record``), after ``handler`` made it an event or a step:
    one comparison for every other record.
    """
    logger_class = logging.Logger
    previous = logger_class.callHandlers
    gate = _LevelGate(handler.level)
    logs_gate = _LevelGate(sys.maxsize if logs is None else logs.level)
    submit_log = _logs.submit_record
    # The common case inline, no Python call: a record that becomes a step (level routed to
    # steps, logger known not ignored, no filters on the handler, a short record of this
    # thread and process, a trail of this thread with room) costs a few checks, one tuple
    # and one ContextVar.set here: what _steps.add_record does, kept in step with it and
    # with _steps.freeze_record (attributes are read before ``__dict__``, which makes the
    # record's dict). Anything else goes through handler.handle().
    routes, ignored = handler._routes, handler._ignored_cache
    # Logger name -> the levels at which its records become steps (routes and ignored
    # names, both cached by the handler and fixed once cached, in one lookup).
    step_levels: dict[str, set[int]] = {}

    def posthog_errors_call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        levelno = record.levelno
        if levelno >= gate.lowest:
            try:
                head = _get_head()
                name, msg, args = record.name, record.msg, record.args
                if (
                    head is not None
                    and levelno in step_levels.get(name, _NO_LEVELS)
                    and not handler.filters
                    and head[1] < _FITS
                    and record.thread == head[2] == _ident()  # this thread's (not a queue's)
                    and record.process == _PID[0]
                    and type(msg) is str
                    and len(msg) <= _MAX_MESSAGE
                    and record.exc_info is None
                    and type(record) is _LogRecord
                ):
                    created = record.created  # before __dict__, which makes the record's dict
                    if len(record.__dict__) != _PLAIN_SIZE:  # extras
                        args = _SLOW
                    elif not args:
                        args = None
                    elif type(args) is not tuple or len(args) > _MAX_ARGUMENTS:
                        args = _SLOW
                    else:
                        arg: Any
                        for arg in args:
                            kind = type(arg)
                            if kind is int:
                                if arg > _MAX_INT or arg < _MIN_INT:
                                    args = _SLOW
                                    break
                            elif kind is str:
                                if len(arg) > _MAX_ARGUMENT:
                                    args = _SLOW
                                    break
                            elif kind is not float and kind is not bool and arg is not None:
                                args = _SLOW
                                break
                    if args is not _SLOW:
                        # The step, made now: never the record itself (_steps.freeze_record).
                        _set_head((head, head[1] + 1, head[2], created, levelno, name, msg, args))
                        if levelno >= logs_gate.lowest:
                            # Its logger known not ignored, no filters: checked (passed).
                            submit_log(logs, record, True)  # type: ignore[arg-type]
                        previous(self, record)
                        return
            except Exception:
                pass  # an odd record: handle() takes it
            try:
                handler.handle(record)
                name = record.name
                if (
                    routes.get(levelno) is STEP_ROUTE
                    and ignored.get(name) is False
                    and type(name) is str
                    and len(step_levels) < 4096
                ):
                    step_levels.setdefault(name, set()).add(levelno)
            except Exception as error:
                _guard.internal_error(error)
        if levelno >= logs_gate.lowest:
            submit_log(logs, record)  # type: ignore[arg-type]
        previous(self, record)

    logger_class.callHandlers = posthog_errors_call_handlers  # type: ignore[method-assign]

    def restore() -> None:
        gate.switch_off()
        logs_gate.switch_off()
        if logger_class.callHandlers is posthog_errors_call_handlers:
            logger_class.callHandlers = previous  # type: ignore[method-assign]

    return restore


def install_exit_hook(reporter: Reporter) -> Restore:
    """Wrap ``sys.exit`` to report a failing exit of the main thread (``capture_exits``).

    ``SystemExit`` in the main thread never reaches ``sys.excepthook``: the interpreter
    handles it itself. So the report is made where ``sys.exit`` is called, when its code
    is a failure (non-zero, or a message; 0 and None are success), as sentry-sdk's
    ``SysExitIntegration`` does. ``raise SystemExit(...)`` written out, and ``sys.exit``
    bound under another name before ``install()`` (``from sys import exit``), are not seen.
    """
    previous = sys.exit
    switch = _Switch()

    def posthog_errors_exit(status: object = None, /) -> NoReturn:
        try:
            previous(status)  # type: ignore[arg-type]
        except SystemExit as exit:
            if (
                switch.on
                and _failure_code(exit.code)
                and threading.current_thread() is threading.main_thread()
            ):
                # Its traceback holds only this frame: the event gets the caller's stack.
                reporter.capture(
                    exit,
                    level="fatal",
                    handled=False,
                    mechanism="onuncaughtexception",
                    source="python.sys_exit",
                    properties={"exit_code": _exit_code(exit.code)},
                )
            raise
        raise AssertionError("sys.exit() returned")  # pragma: no cover

    sys.exit = posthog_errors_exit
    return _undo(
        switch,
        posthog_errors_exit,
        previous,
        lambda: sys.exit,
        lambda hook: setattr(sys, "exit", hook),
    )


def _failure_code(code: object) -> bool:
    return code is not None and not (isinstance(code, int) and code == 0)


def _exit_code(code: object) -> int:
    """The process exit status ``code`` gives: an int as is, anything else 1."""
    return code if isinstance(code, int) and not isinstance(code, bool) else 1


def _task_context(context: dict[str, Any]) -> contextvars.Context:
    task = context.get("task") or context.get("future")
    get_context = getattr(task, "get_context", None)  # Python 3.12+
    try:
        task_context = get_context() if callable(get_context) else getattr(task, "_context", None)
    except Exception:
        task_context = None
    if isinstance(task_context, contextvars.Context):
        return task_context.copy()  # a copy: the original may be entered elsewhere
    return contextvars.copy_context()


def _thread_context(thread: threading.Thread | None) -> contextvars.Context:
    """A copy of the context ``thread``'s target ran in, from Python 3.14 (where
    ``Thread._context`` holds it); before, a copy of the current one, which is that one."""
    context = getattr(thread, "_context", None)
    if isinstance(context, contextvars.Context):
        return context.copy()  # a copy: never enter a context another frame may be in
    return contextvars.copy_context()


def _unraisable_properties(unraisable: Any) -> dict[str, str]:
    """What the default hook prints above the traceback, as properties.

    Up to 3.13 that is ``err_msg`` (``"Exception ignored in"`` when unset) and the object:
    ``Exception ignored in: <function Leaky.__del__ at 0x...>``. From 3.14 CPython puts the
    object in the message itself (``Exception ignored while calling deallocator <function
    Leaky.__del__ at 0x...>``) and passes no object: then there is no
    ``unraisable_object``, rather than ``"None"``.
    """
    message = unraisable.err_msg
    properties = {
        "unraisable_message": _bounded(message, 300)
        if isinstance(message, str) and message
        else "Exception ignored in"
    }
    if unraisable.object is not None:
        properties["unraisable_object"] = _describe(unraisable.object)
    return properties


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obj: object) -> str:
    try:
        text = repr(obj)
        return text if isinstance(text, str) and len(text) <= 200 else str(text)[:197] + "..."
    except Exception:
        return f"<{type(obj).__name__} object>"
