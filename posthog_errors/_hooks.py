"""The interpreter's last-chance hooks: ``sys.excepthook``, ``threading.excepthook``,
``sys.unraisablehook`` and asyncio's loop exception handler.

Each hook reports, then calls the hook that was installed before it, so the user still sees
the usual traceback and exit code. Each has its own function name (so a traceback or a
debugger shows whose hook it is) and each ``install_*`` returns a function that restores the
previous hook only if ours is still the installed one: another library may have chained
onto us since, and unhooking it would be worse than leaving ours.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from posthog_errors._reporter import Reporter

__all__ = [
    "install_asyncio_hook",
    "install_sys_excepthook",
    "install_threading_excepthook",
    "install_unraisablehook",
]

Restore = Callable[[], None]
_EXITS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)


def _reportable(exc: object, capture_exits: bool) -> bool:
    if not isinstance(exc, BaseException):
        return False
    return capture_exits or not isinstance(exc, _EXITS)


def install_sys_excepthook(reporter: Reporter, *, capture_exits: bool = False) -> Restore:
    previous = sys.excepthook

    def posthog_errors_excepthook(
        exc_type: type[BaseException], exc_value: BaseException, tb: TracebackType | None
    ) -> None:
        try:
            if _reportable(exc_value, capture_exits):
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

    def restore() -> None:
        if sys.excepthook is posthog_errors_excepthook:
            sys.excepthook = previous

    return restore


def install_threading_excepthook(reporter: Reporter, *, capture_exits: bool = False) -> Restore:
    previous = threading.excepthook

    def posthog_errors_threading_excepthook(args: threading.ExceptHookArgs) -> None:
        # Runs in the dying thread, so the context it reads is that thread's own.
        try:
            if _reportable(args.exc_value, capture_exits):
                assert args.exc_value is not None
                thread = args.thread
                reporter.capture(
                    args.exc_value,
                    level="error",
                    handled=False,
                    mechanism="threading",
                    source="python.threading_excepthook",
                    properties={"thread_name": thread.name} if thread is not None else None,
                )
        finally:
            previous(args)

    threading.excepthook = posthog_errors_threading_excepthook

    def restore() -> None:
        if threading.excepthook is posthog_errors_threading_excepthook:
            threading.excepthook = previous

    return restore


def install_unraisablehook(reporter: Reporter) -> Restore:
    previous = sys.unraisablehook

    def posthog_errors_unraisablehook(unraisable: Any) -> None:
        try:
            exc = unraisable.exc_value
            if _reportable(exc, False):
                # The object may be mid-finalisation: describe it now, never keep it.
                reporter.capture(
                    exc,
                    level="error",
                    handled=False,
                    mechanism="unraisablehook",
                    source="python.unraisablehook",
                    properties={
                        "unraisable_message": unraisable.err_msg or "Exception ignored in",
                        "unraisable_object": _describe(unraisable.object),
                    },
                )
        finally:
            previous(unraisable)

    sys.unraisablehook = posthog_errors_unraisablehook

    def restore() -> None:
        if sys.unraisablehook is posthog_errors_unraisablehook:
            sys.unraisablehook = previous

    return restore


def install_asyncio_hook(reporter: Reporter) -> Restore:
    """Wrap ``BaseEventLoop.call_exception_handler``, the funnel of every loop's errors.

    Patching the class (not one loop) covers loops created before and after install(), and
    still runs whatever handler a loop has (``loop.set_exception_handler`` or the default),
    so chaining is preserved. uvloop's loops are not ``BaseEventLoop`` and are not covered.
    """
    import asyncio

    base = asyncio.BaseEventLoop
    previous = base.call_exception_handler

    def posthog_errors_asyncio_exception_handler(
        self: asyncio.BaseEventLoop, context: dict[str, Any]
    ) -> None:
        try:
            exc = context.get("exception")
            if isinstance(exc, Exception) and not isinstance(exc, asyncio.CancelledError):
                # Resolve the person in the failed task's own context, not the loop's.
                run = _task_context(context).run
                run(
                    reporter.capture,
                    exc,
                    level="error",
                    handled=False,
                    mechanism="asyncio",
                    source="python.asyncio",
                    properties={"asyncio_message": str(context.get("message") or "")},
                )
        finally:
            previous(self, context)

    base.call_exception_handler = posthog_errors_asyncio_exception_handler  # type: ignore[method-assign]

    def restore() -> None:
        if base.call_exception_handler is posthog_errors_asyncio_exception_handler:
            base.call_exception_handler = previous  # type: ignore[method-assign]

    return restore


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


def _describe(obj: object) -> str:
    try:
        text = repr(obj)
        return text if isinstance(text, str) and len(text) <= 200 else str(text)[:197] + "..."
    except Exception:
        return f"<{type(obj).__name__} object>"
