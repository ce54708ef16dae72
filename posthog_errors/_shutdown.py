"""Stopped by a signal, or frozen between invocations: what was captured still leaves.

**Signals.** ``SIGTERM`` (what Kubernetes, Docker and systemd send), ``SIGHUP`` and
``SIGINT`` at their default disposition end the process at once, with no ``atexit``
handler: neither this library's exit flush nor the posthog client's runs. uvicorn ends the
same way: after its graceful shutdown it restores the handler it found and raises the
signal again against itself (exit status 143).

So ``install()`` puts a handler of ours where one of these is at ``SIG_DFL``, and wraps
``signal.signal`` and ``signal.getsignal`` so that the app, and every server, still sees
``SIG_DFL`` there: whoever sets ``SIG_DFL`` again (uvicorn restoring what it found,
``loop.remove_signal_handler``, a gunicorn worker resetting its signals) gets ours, shown as
``SIG_DFL``. A handler the app or a server sets is left alone and called as before: it ends
the process through ``sys.exit`` (so the exit flush runs) or it does not end it at all.

Ours behaves as ``SIG_DFL`` does, after a bounded flush: it asks the flusher thread for a
flush (``_prompt.flush_for_signal``), waits for its answer at most ``shutdown_timeout``,
puts ``SIG_DFL`` back and raises the signal again. The process ends by the same signal,
with the same status. The handler never takes a lock the interrupted code may hold: it
only puts on and gets from ``queue.SimpleQueue`` objects, with timeouts. A second signal
during the flush ends the process at once.

**Serverless.** ``serverless()`` flushes after each invocation (the platform may freeze
the process between invocations, with nothing flushed) and reports the exception that
escapes the handler.
"""

from __future__ import annotations

import functools
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

from posthog_errors import _guard
from posthog_errors._logs_delivery import flush_logs
from posthog_errors._prompt import flush_for_signal

__all__ = [
    "Invocation",
    "flush_at_server_shutdown",
    "install_signal_hooks",
    "lifespan_send",
    "serverless",
]

F = TypeVar("F", bound=Callable[..., Any])

_NAMES = ("SIGTERM", "SIGHUP", "SIGINT")
_MANAGED: frozenset[int] = frozenset(
    int(getattr(signal, name)) for name in _NAMES if hasattr(signal, name)
)


class _SignalHooks:
    """The state of the signal hooks: one per process, shared by every installation."""

    def __init__(self) -> None:
        self.active = False
        self.timeout = 2.0
        self.flushing = False
        self.in_chain = False  # our wrappers are (still) somewhere in signal.signal's chain
        self.previous_signal: Callable[..., Any] = signal.signal
        self.previous_getsignal: Callable[..., Any] = signal.getsignal


_HOOKS = _SignalHooks()


def _is_default(handler: object) -> bool:
    return handler is signal.SIG_DFL or (type(handler) is int and handler == 0)


def _managed(signalnum: object) -> bool:
    try:
        return isinstance(signalnum, int) and int(signalnum) in _MANAGED
    except Exception:
        return False


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def posthog_errors_signal_handler(signum: int, frame: FrameType | None) -> None:
    """``SIG_DFL``, after a bounded flush of what was captured: the process still ends by
    this signal, with the status it would have had."""
    hooks = _HOOKS
    if hooks.active and not hooks.flushing:
        hooks.flushing = True
        try:
            with _guard.library_code():
                deadline = time.monotonic() + hooks.timeout
                flush_for_signal(hooks.timeout)
                # PostHog Logs: SimpleQueue calls only, bounded by what is left.
                flush_logs(max(0.0, deadline - time.monotonic()))
        except Exception as error:
            _guard.internal_error(error, reraise=False)
        finally:
            hooks.flushing = False
    _end_as_default(signum)


def _end_as_default(signum: int) -> None:
    try:
        hooks = _HOOKS
        hooks.previous_signal(signum, signal.SIG_DFL)
    except (ValueError, OSError, TypeError):
        pass  # (handlers run on the main thread: this cannot fail there)
    signal.raise_signal(signum)
    # Still here: the signal is blocked in this thread's mask; it ends the process, at its
    # default disposition, once unblocked, as it would have without us.


@functools.wraps(signal.signal)
def _signal(signalnum: Any, handler: Any) -> Any:
    hooks = _HOOKS
    real = hooks.previous_signal
    if hooks.active and _is_default(handler) and _managed(signalnum) and _on_main_thread():
        previous = real(signalnum, posthog_errors_signal_handler)
    else:
        previous = real(signalnum, handler)
    return signal.SIG_DFL if previous is posthog_errors_signal_handler else previous


@functools.wraps(signal.getsignal)
def _getsignal(signalnum: Any) -> Any:
    previous = _HOOKS.previous_getsignal(signalnum)
    return signal.SIG_DFL if previous is posthog_errors_signal_handler else previous


def install_signal_hooks(shutdown_timeout: float) -> Callable[[], None]:
    """Flush on ``SIGTERM``, ``SIGHUP`` and ``SIGINT`` wherever they are (or later become)
    ``SIG_DFL``; returns the undo."""
    hooks = _HOOKS
    hooks.timeout = shutdown_timeout
    if not hooks.in_chain:
        hooks.previous_signal = signal.signal
        hooks.previous_getsignal = signal.getsignal
        signal.signal = _signal
        signal.getsignal = _getsignal
        hooks.in_chain = True
    hooks.active = True
    if _on_main_thread():
        for signum in sorted(_MANAGED):
            try:
                if _is_default(hooks.previous_getsignal(signum)):
                    hooks.previous_signal(signum, posthog_errors_signal_handler)
            except (ValueError, OSError) as error:  # not settable here: left as it was
                _guard.internal_error(error, reraise=False)
    return uninstall_signal_hooks


def uninstall_signal_hooks() -> None:
    """Put ``SIG_DFL`` back where ours is (from the main thread; elsewhere ours stays,
    switched off: it then only does what ``SIG_DFL`` does), and unwrap ``signal.signal``
    and ``signal.getsignal`` if ours are still the installed ones."""
    hooks = _HOOKS
    hooks.active = False
    if _on_main_thread():
        for signum in sorted(_MANAGED):
            try:
                if hooks.previous_getsignal(signum) is posthog_errors_signal_handler:
                    hooks.previous_signal(signum, signal.SIG_DFL)
            except (ValueError, OSError) as error:
                _guard.internal_error(error, reraise=False)
    if signal.signal is _signal and signal.getsignal is _getsignal:
        signal.signal = hooks.previous_signal
        signal.getsignal = hooks.previous_getsignal
        hooks.in_chain = False
    # else: another library wrapped them since; ours stay in its chain, passing through.


# -- a server's graceful shutdown ----------------------------------------------------------

_LIFESPAN_SHUTDOWN_DONE = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


def flush_at_server_shutdown() -> None:
    """Flush within ``shutdown_timeout``: the server finished its graceful shutdown (its
    connections are closed) and may now end the process with no exit handler (uvicorn
    re-raises the signal)."""
    from posthog_errors._delivery import worker

    try:
        with _guard.library_code():
            delivery = worker()
            deadline = time.monotonic() + delivery.shutdown_timeout
            delivery.flush(delivery.shutdown_timeout)
            flush_logs(max(0.0, deadline - time.monotonic()))
    except Exception as error:
        _guard.internal_error(error, reraise=False)


def lifespan_send(send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """The ASGI lifespan ``send``, flushing as the app reports its shutdown done (so what
    its own shutdown handlers logged goes too), before the server hears of it."""

    async def send_after_flush(message: Any) -> None:
        if isinstance(message, dict) and message.get("type") in _LIFESPAN_SHUTDOWN_DONE:
            flush_at_server_shutdown()
        await send(message)

    return send_after_flush


# -- serverless ---------------------------------------------------------------------------


class Invocation:
    """One invocation of a serverless handler: what it captured is flushed as it ends.

    Use ``serverless()`` to make one. A context manager (``with``, ``async with``) and a
    decorator, for sync and async handlers.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    def _finish(self, exc: BaseException | None) -> None:
        from posthog_errors._capture import capture_exception
        from posthog_errors._delivery import worker

        try:
            if isinstance(exc, Exception):
                capture_exception(exc)  # once: a door that already reported it wins
            timeout = worker().shutdown_timeout if self.timeout is None else self.timeout
            deadline = time.monotonic() + timeout
            worker().flush(timeout)
            flush_logs(max(0.0, deadline - time.monotonic()))
        except Exception as error:
            _guard.internal_error(error, reraise=False)

    def __enter__(self) -> Invocation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    async def __aenter__(self) -> Invocation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with Invocation(self.timeout):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with Invocation(self.timeout):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


def serverless(func: Any = None, /, *, timeout: float | None = None) -> Any:
    """Flush at the end of each invocation of a serverless handler (AWS Lambda, Google
    Cloud Functions, Azure Functions): the platform may freeze the process between
    invocations, or end it, with nothing flushed::

        @posthog_errors.serverless
        def handler(event, context): ...

        def handler(event, context):
            with posthog_errors.serverless(timeout=2):
                ...

    An exception escaping the handler is reported (once: a door that already reported it
    wins) and goes on to the platform unchanged. The flush waits at most ``timeout``
    seconds (default: ``install()``'s ``shutdown_timeout``, 2 s); an async handler's flush
    blocks its event loop that long at most.
    """
    if func is not None and callable(func):
        return Invocation(timeout)(func)
    if func is not None:
        raise TypeError(f"serverless() takes a function or nothing, got {func!r}")
    return Invocation(timeout)
