"""RQ: a job's final failure, reported once, as the person who enqueued it.

**Who.** RQ has no publish signal, so enqueueing is hooked where every job is made:
``Job.create`` (``Queue.enqueue``, ``enqueue_call``, ``enqueue_at``/``enqueue_in``,
``enqueue_many`` and a hand-made ``Job.create`` all go through it; a retry does not, so a
retried job keeps its enqueuer). The distinct ID, session ID and bound properties of the
enqueuing code (what an event captured there would carry) are stored in
``job.meta["posthog_errors"]``, as plain JSON values, so that any serializer stores them,
with posthog-python's context tags (``posthog.tag``) under ``"tags"`` (posthog-python has
no RQ integration, so no convention of its own to follow).
In the worker they are bound (``posthog_errors.bind``), and the tags made context tags
again (in a ``posthog.new_context``), while the job runs, so every event
of the job (its own ``logger.exception``, the final failure) is that person's, and a job
that enqueues another job passes the person on. Nothing is stored when nothing is bound.

**Once, and only the final failure.** ``BaseWorker.handle_exception`` (``Worker``,
``SimpleWorker`` and their subclasses) is wrapped, as sentry-sdk's RQ integration does: an
attempt that RQ will retry (``Retry(max=...)``, retries left) is not a failure, and is
remembered in the job's meta instead; the final failure is captured, with each earlier
attempt as an exception step (``$exception_steps``) before the job's own steps. It is
captured before RQ logs it: RQ's own error record of that failure (which carries the
formatted traceback, the job's arguments as ``extra``, and no ``exc_info``) is marked as
sent, so ``install()``'s logging hook does not make it a second event (nor an event per
retried attempt).

**The forked horse.** RQ's default ``Worker`` runs each job in a forked work horse that
leaves with ``os._exit``, which runs no ``atexit`` flush: ``perform_job`` is wrapped to
flush (bounded) in the horse once the job is done, whatever happened. ``SimpleWorker`` runs
jobs in its own process, which flushes at exit. Each job starts with an empty trail of
steps, so a job never shows the worker's (or a previous job's) log records.

Undo restores each patched attribute only if ours is still the one in place; a wrapper left
in place behind someone else's is inert once nothing is instrumented.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

try:
    import rq.job as _rq_job
    import rq.worker as _rq_worker
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError("posthog_errors.rq needs rq: pip install 'posthog-errors[rq]'") from error

from posthog_errors import _context, _guard, _steps
from posthog_errors._capture import flush as _flush
from posthog_errors._delivery import worker
from posthog_errors._log_message import mark_record_sent
from posthog_errors._reporter import Reporter, default_reporter
from posthog_errors.integrations._headers import (
    apply_tags,
    clean_header_value,
    clean_tags,
    current_tags,
    decode_tags,
)

__all__ = [
    "META_KEY",
    "ExceptionHandler",
    "exception_handler",
    "install_integration",
    "instrument",
    "make_exception_handler",
]

META_KEY = "posthog_errors"
"""The key of ``job.meta`` that carries the enqueuer's distinct ID, session ID and bound
properties, and the job's earlier failed attempts."""

ExceptionHandler = Callable[[Any, Any, Any, Any], bool]
"""An RQ exception handler: ``handler(job, exc_type, exc_value, traceback)``."""

# The worker class whose methods are wrapped: BaseWorker since rq 2.7 (SimpleWorker no
# longer inherits from Worker), Worker before.
_base = getattr(_rq_worker, "BaseWorker", None)
_WORKER_CLASS: type[Any] = (
    _base if _base is not None and hasattr(_base, "perform_job") else _rq_worker.Worker
)
_JOB_CLASS: type[Any] = _rq_job.Job
_RQ_LOGGER = "rq.worker"

# Bounds of what the meta carries: the enqueuer's properties as JSON, and earlier attempts.
_MAX_PROPERTIES_BYTES = 16_384
_MAX_ATTEMPTS = 50
# Properties the worker sets for each job: never carried from an enqueuing job to the next.
_JOB_KEYS = frozenset({"rq_job_func", "rq_job_id", "rq_queue", "rq_retries"})

# The id of the job this context is running (perform_job wrapped), and of the job whose
# failure this context is handing to RQ's own handling (handle_exception wrapped).
_RUNNING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "posthog_errors_rq_running", default=None
)
_REPORTED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "posthog_errors_rq_reported", default=None
)


@dataclasses.dataclass(frozen=True)
class _Activation:
    """One ``instrument()`` (or ``install()``): where its events go."""

    reporter: Callable[[], Reporter]
    flush_timeout: float | None  # None: install()'s shutdown_timeout

    def flush(self) -> None:
        timeout = self.flush_timeout
        _flush(worker().shutdown_timeout if timeout is None else timeout)


_lock = threading.Lock()
_activations: list[_Activation] = []  # newest last: the newest one's reporter is used
_restores: list[Callable[[], None]] | None = None  # the patches' undo, while patched


@dataclasses.dataclass(frozen=True)
class _Carried:
    """What a job's meta says: the enqueuer, and the job's earlier failed attempts."""

    distinct_id: str | None = None
    session_id: str | None = None
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    attempts: tuple[dict[str, Any], ...] = ()
    tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_NOTHING = _Carried()


# -- public ------------------------------------------------------------------------------


def instrument(
    client: Any = None,
    *,
    flush_timeout: float | None = None,
    **reporter_options: Any,
) -> Callable[[], None]:
    """Report RQ jobs' final failures, as the person who enqueued them; returns the undo.

    For apps that do not call :func:`posthog_errors.install` (which does this by itself
    when rq is importable). Call it in the start-up code that both the enqueuing app and
    the worker run (for ``rq worker``, the ``-c`` settings module): the producer stores the
    person in each job's meta, the worker binds it while the job runs and reports the
    job's final failure.

    ``client`` and ``reporter_options`` (``before_send``, ``ignore``, ``in_app_include``,
    ... as for :func:`posthog_errors.install`): given none, events go where
    ``capture_exception`` sends them (``install()``'s destination, else the environment's).
    ``flush_timeout``: how long a forked work horse waits, at most, for its events to go
    out before RQ ends it (default: ``install()``'s ``shutdown_timeout``, 2 seconds
    unless changed).

    Idempotent: RQ is patched once however many times this is called; each call's undo
    takes back that call (the newest call still in place says where events go), and the
    patches go once every call is undone.
    """
    return _activate(_reporter_source(client, reporter_options), flush_timeout)


def install_integration(reporter: Reporter) -> Callable[[], None]:
    """:func:`instrument` for ``install()``, sending to its reporter; returns the undo."""
    return _activate(lambda: reporter, None)


def make_exception_handler(
    client: Any = None,
    *,
    flush_timeout: float | None = None,
    **reporter_options: Any,
) -> ExceptionHandler:
    """An RQ exception handler that reports a job's final failure, for workers that are not
    instrumented: ``Worker(queues, exception_handlers=[make_exception_handler(client)])``
    (or ``rq worker --exception-handler``).

    It reports what :func:`instrument` does, with the person stored in the job's meta by
    an instrumented producer, the job's earlier attempts as steps, and the job's
    properties; it flushes (bounded by ``flush_timeout``) after each report, since it
    cannot tell a forked work horse, which ends without flushing, from ``SimpleWorker``.
    What it cannot do: bind the person for the job's other events, or keep RQ's own error
    log record of the failure from being a second event when ``install()`` (or a
    ``PostHogHandler`` on the root logger) is in place, since RQ logs before it calls
    handlers. With ``install()``, prefer :func:`instrument` (``install()`` already does it).
    In an instrumented worker it does nothing (the failure is already reported).
    Returns True: the next handler runs.
    """
    activation = _Activation(_reporter_source(client, reporter_options), flush_timeout)

    def posthog_errors_exception_handler(
        job: Any, exc_type: Any, exc_value: Any, traceback: Any
    ) -> bool:
        if _REPORTED.get() is not None:
            return True  # an instrumented worker: reported before RQ called its handlers
        try:
            exc_info = (exc_type, exc_value, traceback)
            if _report(activation.reporter(), job, exc_info, _will_retry(None, job)):
                activation.flush()
        except Exception as error:
            _guard.internal_error(error)
        return True

    return posthog_errors_exception_handler


def exception_handler(job: Any, exc_type: Any, exc_value: Any, traceback: Any) -> bool:
    """The RQ exception handler of :func:`make_exception_handler`, sending where
    ``capture_exception`` does: ``Worker(queues, exception_handlers=[exception_handler])``,
    or ``rq worker --exception-handler posthog_errors.rq.exception_handler``."""
    return _default_handler(job, exc_type, exc_value, traceback)


# -- activation --------------------------------------------------------------------------


def _reporter_source(client: Any, options: dict[str, Any]) -> Callable[[], Reporter]:
    if client is None and not options:
        return default_reporter  # install()'s reporter when set, read at each report
    reporter = Reporter(client, **options)
    return lambda: reporter


def _activate(reporter: Callable[[], Reporter], flush_timeout: float | None) -> Callable[[], None]:
    global _restores
    activation = _Activation(reporter, flush_timeout)
    with _lock:
        _activations.append(activation)
        if _restores is None:
            _restores = _patch()

    def undo() -> None:
        global _restores
        with _lock:
            if activation in _activations:
                _activations.remove(activation)
            if not _activations and _restores is not None:
                restores, _restores = _restores, None
                for restore in reversed(restores):
                    restore()

    return undo


def _active() -> _Activation | None:
    try:
        return _activations[-1]
    except IndexError:
        return None


def _patch() -> list[Callable[[], None]]:
    restores = [
        _replace(_JOB_CLASS, "create", _wrap_create),
        _replace(_WORKER_CLASS, "perform_job", _wrap_perform_job),
        _replace(_WORKER_CLASS, "handle_exception", _wrap_handle_exception),
    ]
    restores.append(_add_filter(logging.getLogger(_RQ_LOGGER)))
    return restores


def _replace(owner: type[Any], name: str, wrap: Callable[[Any], Any]) -> Callable[[], None]:
    """Wrap ``owner.name``; the undo puts the original back if ours is still in place."""
    had_own = name in owner.__dict__
    original = owner.__dict__[name] if had_own else getattr(owner, name)
    wrapper = wrap(original)
    setattr(owner, name, wrapper)

    def restore() -> None:
        if owner.__dict__.get(name) is wrapper:
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)

    return restore


def _add_filter(logger: logging.Logger) -> Callable[[], None]:
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return lambda: logger.removeFilter(_FILTER)


class _ReportedFailureFilter(logging.Filter):
    """Marks RQ's own error record of a failure this integration reports (or deliberately
    does not: a retried attempt) as sent, so the logging doors skip it. Never drops a
    record: the app's log output stays as it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _REPORTED.get()
        if job_id is not None and getattr(record, "job_id", None) == job_id:
            mark_record_sent(record)
        return True


_FILTER = _ReportedFailureFilter()


# -- wrappers ----------------------------------------------------------------------------


def _wrap_create(original: Any) -> Any:
    function = original.__func__  # a classmethod

    def create(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        job = function(cls, *args, **kwargs)
        if _active() is not None:
            try:
                _stamp(job)
            except Exception as error:
                _guard.internal_error(error)
        return job

    create.__doc__ = function.__doc__
    create.__name__ = create.__qualname__ = "create"
    return classmethod(create)


def _wrap_perform_job(original: Callable[..., Any]) -> Callable[..., Any]:
    def posthog_errors_perform_job(
        self: Any, job: Any, queue: Any, *args: Any, **kwargs: Any
    ) -> Any:
        activation = _active()
        if activation is None:
            return original(self, job, queue, *args, **kwargs)
        entered = None
        try:
            entered = _enter_job(job)
        except Exception as error:
            _guard.internal_error(error)
        try:
            return original(self, job, queue, *args, **kwargs)
        finally:
            if entered is not None:
                _leave_job(entered)
            if getattr(self, "is_horse", False):
                # RQ ends the horse with os._exit, which runs no atexit flush.
                activation.flush()

    posthog_errors_perform_job.__doc__ = original.__doc__
    return posthog_errors_perform_job


def _wrap_handle_exception(original: Callable[..., Any]) -> Callable[..., Any]:
    def posthog_errors_handle_exception(self: Any, job: Any, *exc_info: Any, **kwargs: Any) -> Any:
        activation = _active()
        if activation is None:
            return original(self, job, *exc_info, **kwargs)
        job_id = None
        try:
            job_id = _job_id(job)
            _filter_logger(getattr(self, "log", None))
            # First: then RQ's log record of the same failure is recognised as sent.
            _report(activation.reporter(), job, exc_info, _will_retry(self, job))
        except Exception as error:
            _guard.internal_error(error)
        token = _REPORTED.set(job_id or "")
        try:
            return original(self, job, *exc_info, **kwargs)
        finally:
            _REPORTED.reset(token)
            if _RUNNING.get() != job_id and getattr(self, "is_horse", False):
                # Instrumented during the job (an app whose start-up code runs when the
                # horse imports the job's module): no wrapped perform_job will flush.
                activation.flush()

    posthog_errors_handle_exception.__doc__ = original.__doc__
    return posthog_errors_handle_exception


def _filter_logger(logger: object) -> None:
    """A worker that logs elsewhere than ``rq.worker`` gets the filter too (kept until the
    process ends: it is inert once nothing is instrumented)."""
    if isinstance(logger, logging.Logger) and _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


# -- producer ----------------------------------------------------------------------------


def _stamp(job: Any) -> None:
    """Store the enqueuing code's person in the job's meta (unless it already has one)."""
    distinct_id, session_id, properties = _context.resolve(None, None, None)
    plain = _plain_properties(properties)
    tags = clean_tags(current_tags())
    if distinct_id is None and session_id is None and not plain and not tags:
        return
    meta = getattr(job, "meta", None)
    if not isinstance(meta, dict) or META_KEY in meta:
        return
    entry: dict[str, Any] = {}
    if distinct_id is not None:
        entry["distinct_id"] = distinct_id
    if session_id is not None:
        entry["session_id"] = session_id
    if plain:
        entry["properties"] = plain
    if tags:
        entry["tags"] = tags
    meta[META_KEY] = entry


def _plain_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Bound properties as JSON values (any other value as its ``str``), so that RQ's JSON
    serializer stores them as pickle does; none when they are larger than the bound."""
    if not properties:
        return {}
    kept = {str(k): v for k, v in properties.items() if k not in _JOB_KEYS}
    if not kept:
        return {}
    try:
        text = json.dumps(kept, default=str)
    except (TypeError, ValueError, RecursionError):
        return {}
    if len(text) > _MAX_PROPERTIES_BYTES:
        return {}
    plain = json.loads(text)
    return plain if isinstance(plain, dict) else {}


# -- worker ------------------------------------------------------------------------------


def _carried(job: Any) -> _Carried:
    meta = getattr(job, "meta", None)
    entry = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(entry, dict):
        return _NOTHING
    distinct_id = entry.get("distinct_id")
    session_id = entry.get("session_id")
    properties = entry.get("properties")
    attempts = entry.get("attempts")
    return _Carried(
        distinct_id=clean_header_value(distinct_id),
        session_id=clean_header_value(session_id),
        properties=properties if isinstance(properties, dict) else {},
        attempts=tuple(a for a in attempts if isinstance(a, dict))
        if isinstance(attempts, list)
        else (),
        tags=decode_tags(entry.get("tags")),
    )


_Entered = tuple[
    _context.bind,
    tuple[contextvars.Token[Any], contextvars.Token[Any]],
    contextvars.Token[str | None],
    Callable[[], None] | None,
]


def _enter_job(job: Any) -> _Entered:
    """Bind the enqueuer and the job's properties, and start the job's own trail of steps
    with its earlier attempts."""
    carried = _carried(job)
    properties = {**carried.properties, **_job_properties(job, len(carried.attempts))}
    binding = _context.bind(
        carried.distinct_id, session_id=carried.session_id, properties=properties
    )
    binding.__enter__()
    trail = _steps.start_trail()
    for attempt in carried.attempts:
        _steps._push(dict(attempt))
    running = _RUNNING.set(_job_id(job))
    try:
        untag = apply_tags(carried.tags)
    except Exception as error:  # posthog's contexts: the job runs untagged
        _guard.internal_error(error)
        untag = None
    return binding, trail, running, untag


def _leave_job(entered: _Entered) -> None:
    binding, trail, running, untag = entered
    try:
        if untag is not None:
            untag()
    except Exception as error:
        _guard.internal_error(error)
    try:
        _RUNNING.reset(running)
        _steps.end_trail(trail)
        binding.__exit__(None, None, None)
    except Exception as error:
        _guard.internal_error(error)


def _will_retry(worker: Any, job: Any) -> bool:
    """Whether RQ will run the job again after this failure (as ``handle_job_failure``
    decides: retries left, and not stopped on request)."""
    retries_left = getattr(job, "retries_left", None)
    if not isinstance(retries_left, int) or retries_left <= 0:
        return False
    stopped = getattr(worker, "_stopped_job_id", None) if worker is not None else None
    return stopped is None or stopped != _job_id(job)


def _report(reporter: Reporter, job: Any, exc_info: tuple[Any, ...], will_retry: bool) -> bool:
    """Remember a retried attempt in the job's meta, or capture the final failure with the
    earlier attempts as steps; True when an event was captured."""
    exc = exc_info[1] if len(exc_info) > 1 else None
    if not isinstance(exc, BaseException):
        return False
    carried = _carried(job)
    if will_retry:
        _remember_attempt(job, carried, exc)
        return False
    properties = {**carried.properties, **_job_properties(job, len(carried.attempts))}
    # Instrumented, the job's trail already starts with its attempts (_enter_job).
    own_trail = _RUNNING.get() != _job_id(job)
    if own_trail and carried.tags:
        # Not running under _enter_job: no context holds the tags; below what is bound.
        properties = {**carried.tags, **properties}
    trail = _steps.start_trail() if own_trail else None
    try:
        if trail is not None:
            for attempt in carried.attempts:
                _steps._push(dict(attempt))
        reporter.capture(
            exc,
            level="error",
            handled=False,
            mechanism="task",
            source="rq.exception_handler",
            distinct_id=carried.distinct_id,
            session_id=carried.session_id,
            properties=properties,
        )
    finally:
        if trail is not None:
            _steps.end_trail(trail)
    if carried.attempts:
        _forget_attempts(job)  # a later requeue of this job starts a new history
    return True


def _remember_attempt(job: Any, carried: _Carried, exc: BaseException) -> None:
    number = len(carried.attempts) + 1
    step = {
        "$message": f"attempt {number} failed, retried: {_describe(exc)}"[
            : _steps.MAX_MESSAGE_LENGTH
        ],
        "$timestamp": time.time(),
        "level": "error",
        "rq_attempt": number,
        "exception_type": type(exc).__qualname__,
    }
    attempts = [*carried.attempts[-(_MAX_ATTEMPTS - 1) :], step]
    _update_meta(job, attempts=attempts)


def _forget_attempts(job: Any) -> None:
    _update_meta(job, attempts=None)


def _update_meta(job: Any, *, attempts: list[dict[str, Any]] | None) -> None:
    """Change the attempts in the job's meta, in memory and in Redis (RQ saves the meta
    with the job when it requeues it too; saving here does not depend on that)."""
    meta = getattr(job, "meta", None)
    if not isinstance(meta, dict):
        return
    entry = meta.get(META_KEY)
    entry = dict(entry) if isinstance(entry, dict) else {}
    if attempts:
        entry["attempts"] = attempts
    else:
        entry.pop("attempts", None)
    if entry:
        meta[META_KEY] = entry
    else:
        meta.pop(META_KEY, None)
    job.save_meta()


def _job_properties(job: Any, retries: int) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    try:
        func_name = job.func_name  # raises when the job cannot be deserialized
    except Exception:
        func_name = None
    if isinstance(func_name, str):
        properties["rq_job_func"] = func_name
    job_id = _job_id(job)
    if job_id is not None:
        properties["rq_job_id"] = job_id
    origin = getattr(job, "origin", None)
    if isinstance(origin, str) and origin:
        properties["rq_queue"] = origin
    properties["rq_retries"] = retries
    return properties


def _job_id(job: Any) -> str | None:
    try:
        job_id = job.id
    except Exception:
        return None
    return job_id if isinstance(job_id, str) else None


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    name = type(exc).__qualname__
    return f"{name}: {text}" if text else name


# Last: it needs the module's functions.
_default_handler = make_exception_handler()
