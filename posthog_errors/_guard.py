"""The guard between the host app and the library's own code.

Two jobs, one home:

* **Re-entrancy.** While the library runs (on the caller's thread, or on its worker), a
  context variable says so. Entry points check it first, so nothing the library or the
  posthog client logs while working is ever captured again.
* **Internal errors.** A bug of ours must never reach the app: it is swallowed and counted.
  Under the project's own test suite (``POSTHOG_ERRORS_STRICT=1``) it is re-raised on the
  caller's thread and recorded for the worker's, so that bugs cannot hide behind the guard.

Only :class:`Exception` is ever caught: ``KeyboardInterrupt``, ``SystemExit`` and
``asyncio.CancelledError`` are ``BaseException`` and pass through untouched.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from posthog_errors._stats import STATS

__all__ = [
    "STRICT_ENV_VAR",
    "inside_library",
    "internal_error",
    "library_code",
    "mark_library_thread",
    "raised_by_signal_handler",
    "strict_failures",
]

STRICT_ENV_VAR = "POSTHOG_ERRORS_STRICT"

_inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "posthog_errors_inside", default=False
)
_library_threads: set[int] = set()
_strict_failures: list[BaseException] = []


def inside_library() -> bool:
    """True while library code, a thread the library owns, or a posthog client thread runs.

    The posthog client's consumer threads log their own upload failures; a handler that
    captured those would report every outage of PostHog to PostHog, in a loop.
    """
    if _inside.get() or threading.get_ident() in _library_threads:
        return True
    thread_module = type(threading.current_thread()).__module__
    return thread_module == "posthog" or thread_module.startswith("posthog.")


@contextmanager
def library_code() -> Iterator[None]:
    """Mark the enclosed block as library code, so whatever it logs is not captured."""
    token = _inside.set(True)
    try:
        yield
    finally:
        _inside.reset(token)


def mark_library_thread() -> None:
    """Mark the calling thread as owned by the library for its whole life."""
    _library_threads.add(threading.get_ident())


def _strict() -> bool:
    # Read on the error path only, so setting it late (in a conftest) still works.
    return os.environ.get(STRICT_ENV_VAR) == "1"


def internal_error(error: Exception, *, reraise: bool = True) -> None:
    """Count a bug of ours; in strict mode, surface it.

    ``reraise=False`` is for the worker thread: raising there would only kill the worker,
    so strict mode records the error for the test suite to fail on instead.

    An exception that a signal handler raised is not ours, wherever it landed: it is
    re-raised, always, and not counted (see :func:`raised_by_signal_handler`).
    """
    if raised_by_signal_handler(error):
        raise error
    STATS.add("internal_errors")
    if _strict():
        _strict_failures.append(error)
        if reraise:
            raise error


def raised_by_signal_handler(error: BaseException) -> bool:
    """Whether ``error`` was raised by a Python signal handler (or code it called).

    A timeout built on ``signal.alarm``, or Celery's soft time limit, raises an
    ``Exception`` subclass from a signal handler, between two bytecodes of whatever the
    main thread runs: possibly the library. Swallowed by a guard, the app's timeout would
    be lost. Recognised by a frame in its traceback running the code of an installed
    signal handler. Signal handlers run only in the main thread; checked on the error path
    only.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    import signal

    # No ``except`` here: another exception from a signal handler, arriving while this
    # looks, must reach the app too, not be taken for an answer.
    handlers = [getattr(signal.getsignal(signum), "__code__", None) for signum in _valid_signals()]
    # By identity (``handlers`` keeps them alive): a code object compares equal to another
    # file's identical code, which is not a signal handler.
    handler_ids = {id(code) for code in handlers if code is not None}
    while tb is not None:
        if id(tb.tb_frame.f_code) in handler_ids:
            return True
        tb = tb.tb_next
    return False


@functools.lru_cache(maxsize=1)
def _valid_signals() -> tuple[int, ...]:
    import signal

    return tuple(signal.valid_signals())


def strict_failures() -> list[BaseException]:
    """Internal errors recorded in strict mode (the test suite fails on any)."""
    return _strict_failures


def _after_fork_in_child() -> None:
    _library_threads.clear()
