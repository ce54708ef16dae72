"""Units of work: one request, task or job, one trail of exception steps.

A thread that runs many units one after the other (a server thread, an executor worker,
a queue consumer, a scheduler's pool) keeps one context for all of them: without a fresh
trail per unit, job B's failure would carry job A's log lines, another customer's data.
So every unit starts with an empty trail and gives the thread's trail back when it ends:

* a request (the middlewares, ``_requests.request_scope``), a Celery or RQ job (their
  integrations), an asyncio task (it copies its creator's context);
* a job submitted to a ``concurrent.futures.ThreadPoolExecutor``: ``install()`` wraps
  ``submit`` (``map`` goes through it) so the job runs with its submitter's person and
  bound properties (as ``carry_context`` hands them) and an empty trail;
* a hand-made runner's job (APScheduler, a queue consumer loop): :class:`job`, public;
* a thread-pool run of a sync endpoint inside a request (Starlette and FastAPI run ``def``
  endpoints through ``anyio.to_thread.run_sync``): it continues its request's trail, and
  what it logged comes back to the request, so the middleware's event has those steps.

An exception that escapes a unit remembers the unit's trail, as it remembers its binding
(``_context.remember_binding``): whatever captures it later, outside the unit (the
runner's own ``logger.exception``, an excepthook, the submitter's ``future.result()``),
sends the steps that led to it, not those of the code around the runner.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from posthog_errors import _extensions, _guard, _steps
from posthog_errors._context import (
    Binding,
    bind,
    current_binding,
    remember_binding,
    reset,
    use_binding,
)
from posthog_errors._snapshot import EventSnapshot

__all__ = [
    "Job",
    "end_unit",
    "follow_thread_pool",
    "in_unit",
    "install_executor_hook",
    "job",
    "remember_trail",
    "remembered_trail",
    "unit_scope",
]

P = ParamSpec("P")
R = TypeVar("R")

_TRAIL_ATTR = "__posthog_errors_trail"
_NO_STEPS: tuple[()] = ()  # a remembered trail that was empty: the event has no steps

# True inside a unit of work: a thread-pool run of its code is part of it (see above).
_in_unit: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "posthog_errors_in_unit", default=False
)

Tokens = tuple[
    tuple[contextvars.Token[Any], contextvars.Token[Any]],
    contextvars.Token[bool],
    "contextvars.Token[Binding] | None",
]


def in_unit() -> bool:
    """Whether the current context runs inside a unit of work."""
    return _in_unit.get()


def unit_scope(binding: Binding | None = None) -> Tokens:
    """Start a unit here: an empty trail (and ``binding`` current, if given). Give the
    tokens to :func:`end_unit` when it is over."""
    trail = _steps.start_trail()
    unit = _in_unit.set(True)
    return trail, unit, None if binding is None else use_binding(binding)


def end_unit(tokens: Tokens, exc: BaseException | None) -> None:
    """End a unit: ``exc`` (escaping it) remembers its trail and binding; the context's
    own trail, flag and binding come back."""
    trail, unit, binding = tokens
    if exc is not None:
        remember_trail(exc, _steps.current())
        remember_binding(exc, current_binding())
    try:
        if binding is not None:
            reset(binding)
        _in_unit.reset(unit)
    except ValueError:  # ended in another context (an async generator): leave it be
        pass
    _steps.end_trail(trail)


def remember_trail(exc: BaseException, trail: _steps.Trail | None) -> None:
    """Attach ``trail`` to ``exc`` unless an inner unit already did (innermost wins)."""
    try:
        if getattr(exc, _TRAIL_ATTR, None) is None:
            setattr(exc, _TRAIL_ATTR, _NO_STEPS if trail is None else trail)
    except Exception:
        pass  # an exception that refuses attributes keeps no trail


def remembered_trail(exc: BaseException | None) -> tuple[bool, _steps.Trail | None]:
    """(whether ``exc`` remembers a unit's trail, that trail or None for none)."""
    if exc is None:
        return False, None
    try:
        remembered = getattr(exc, _TRAIL_ATTR, None)
    except Exception:
        return False, None
    if remembered is None:
        return False, None
    return True, (None if remembered == _NO_STEPS else remembered)


def _use_remembered_trail(exc: BaseException | None, snapshot: EventSnapshot) -> None:
    """A capture hook: an exception that escaped a unit sends that unit's steps."""
    found, trail = remembered_trail(exc)
    if found:
        snapshot.steps = trail


_extensions.add_capture_hook(_use_remembered_trail)


class Job:
    """What :func:`job` returns: a context manager (``with``, ``async with``) and a
    decorator (sync and async functions) for one job of a hand-made runner."""

    def __init__(
        self,
        distinct_id: Any = None,
        *,
        session_id: Any = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        self._bind = bind(distinct_id, session_id=session_id, properties=properties)
        self._tokens: list[Tokens] = []

    def __enter__(self) -> None:
        tokens = unit_scope()
        self._bind.__enter__()
        self._tokens.append(tokens)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tokens = self._tokens.pop()
        try:
            if exc is not None:
                remember_trail(exc, _steps.current())
            self._bind.__exit__(exc_type, exc, tb)
        finally:
            end_unit(tokens, None)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_job(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self._copy():
                    return await function(*args, **kwargs)

            return async_job  # type: ignore[return-value]

        @functools.wraps(function)
        def sync_job(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._copy():
                return function(*args, **kwargs)

        return sync_job

    def _copy(self) -> Job:
        # A decorated function may run in many threads at once: each call its own tokens.
        copy = Job.__new__(Job)
        copy._bind = self._bind._copy()
        copy._tokens = []
        return copy


@overload
def job(distinct_id: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def job(
    distinct_id: Any = None,
    *,
    session_id: Any = None,
    properties: Mapping[str, Any] | None = None,
) -> Job: ...


def job(
    distinct_id: Any = None,
    *,
    session_id: Any = None,
    properties: Mapping[str, Any] | None = None,
) -> Any:
    """One job of a hand-made runner: its code starts with an empty trail of exception
    steps, optionally for the person it runs for.

    A context manager (``with``, ``async with``) and a decorator (``@job`` or
    ``@job(...)``, sync and async functions). Use it where one thread runs job after job (a
    queue consumer, an APScheduler job, a cron-like loop), so that a job's failure carries
    its own log lines only, never those of the job before it::

        while True:
            message = queue.get()
            with posthog_errors.job(distinct_id=message["user_id"]):
                handle(message)

        @posthog_errors.job
        def nightly_export(): ...

    ``distinct_id``, ``session_id`` and ``properties`` are bound as ``bind()`` binds them.
    It reports nothing itself: an exception escaping it remembers the job's steps and
    person, so the runner's own ``logger.exception``, or an excepthook, reports it with
    them. Leaving the block gives back the steps and bindings of the code around it.
    """
    if callable(distinct_id) and session_id is None and properties is None:
        return Job()(distinct_id)  # ``@posthog_errors.job`` without parentheses
    return Job(distinct_id, session_id=session_id, properties=properties)


# -- concurrent.futures ------------------------------------------------------------------


class _ExecutorJob:
    """A job submitted to a ``ThreadPoolExecutor``: runs as a unit of work, with the
    binding its submitter had."""

    __slots__ = ("binding", "function")

    def __init__(self, function: Callable[..., Any], binding: Binding) -> None:
        self.function = function
        self.binding = binding

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tokens = unit_scope(self.binding)
        try:
            result = self.function(*args, **kwargs)
        except BaseException as exc:
            end_unit(tokens, exc)
            raise
        end_unit(tokens, None)
        return result

    def __repr__(self) -> str:
        return f"<posthog_errors job {self.function!r}>"


class _Switch:
    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


def install_executor_hook() -> Callable[[], None]:
    """Wrap ``ThreadPoolExecutor.submit`` (``map`` calls it) so that each job is a unit of
    work with its submitter's binding. Returns the undo: the previous ``submit`` comes back
    if ours is still the class's, else ours switches itself off."""
    from concurrent.futures import ThreadPoolExecutor

    previous = ThreadPoolExecutor.submit
    switch = _Switch()

    def posthog_errors_submit(
        self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        if switch.on:
            try:
                fn = _ExecutorJob(fn, current_binding())
            except Exception as error:
                _guard.internal_error(error)
        return previous(self, fn, *args, **kwargs)

    ThreadPoolExecutor.submit = posthog_errors_submit  # type: ignore[method-assign, assignment]

    def restore() -> None:
        switch.on = False
        if ThreadPoolExecutor.submit is posthog_errors_submit:
            ThreadPoolExecutor.submit = previous  # type: ignore[method-assign]

    return restore


# -- thread-pool runs inside a unit (Starlette/FastAPI ``def`` endpoints) --------------------


class _ThreadRun:
    """A function run in a worker thread for a unit of work: it continues the unit's trail
    there (the worker runs it in a copy of the caller's context) and leaves the trail it
    ends with, for the caller to take over."""

    __slots__ = ("done", "function", "trail")

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.trail: _steps.Trail | None = None
        self.done = False

    def __call__(self, *args: Any) -> Any:
        _steps.adopt()
        try:
            return self.function(*args)
        finally:
            self.trail = _steps.current()
            self.done = True

    def hand_back(self) -> None:
        if self.done:  # (not when the thread was abandoned on cancellation, still running)
            _steps.take_over(self.trail)


def follow_thread_pool() -> None:
    """Wrap ``anyio.to_thread.run_sync`` (once, if anyio is imported), through which
    Starlette and FastAPI run ``def`` endpoints, sync dependencies and sync iterators:
    inside a unit of work, what the function logs joins the unit's trail. Outside one it
    passes everything straight through."""
    module: Any = sys.modules.get("anyio.to_thread")
    if module is None:
        if "anyio" not in sys.modules:
            return
        try:
            module = importlib.import_module("anyio.to_thread")
        except Exception:  # an anyio we cannot use: requests keep their own trail only
            return
    previous = getattr(module, "run_sync", None)
    if previous is None or getattr(previous, "_posthog_errors", False):
        return

    async def posthog_errors_run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not _in_unit.get():
            return await previous(func, *args, **kwargs)
        run = _ThreadRun(func)
        try:
            return await previous(run, *args, **kwargs)
        finally:
            run.hand_back()

    posthog_errors_run_sync._posthog_errors = True  # type: ignore[attr-defined]
    functools.update_wrapper(posthog_errors_run_sync, previous)
    module.run_sync = posthog_errors_run_sync
