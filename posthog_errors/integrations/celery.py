"""Celery: a task's failure reported once, to the person who enqueued it.

Everything goes through Celery's signals, so no task class, base class or ``on_failure``
of the app is touched, and a user ``on_failure`` that handles the failure (or overrides
the method without calling ``super()``) does not hide it.

**The person travels with the task.** ``before_task_publish`` (in the producer, and in a
worker when a task enqueues another one) writes the distinct ID, session ID and bound
properties of the enqueuing code into the message headers: ``X-POSTHOG-DISTINCT-ID`` and
``X-POSTHOG-SESSION-ID``, the names posthog-python's own Celery integration uses, so a
producer instrumented by either library is understood by a worker running the other; the
bound properties in ``X-POSTHOG-ERRORS-PROPERTIES`` (a JSON string, whatever the task
serializer); posthog-python's context tags (``posthog.tag``) in its own
``X-POSTHOG-CONTEXT-TAGS``, encoded as it encodes them, which ``task_prerun`` makes context
tags of the task again (in a ``posthog.new_context``, as posthog-python's worker does).
Each goes at the top level of the headers and in the nested ``headers`` dict: a worker only
sees the nested one as ``task.request.headers``
(https://github.com/celery/celery/issues/4875), and ``Task.retry()`` copies that nested
dict to the top level of the retry's message. ``task_prerun`` binds them
(:class:`posthog_errors.bind`) together with the task's ``celery_*`` properties, and
starts an empty step trail, so whatever the task captures or logs carries them, and no
task sees the steps or the person of the previous one; ``task_postrun`` undoes both.

**A retry is not a failure.** Celery reports a retry through ``task_retry`` and only the
final failure through ``task_failure``, which is where the one event is captured (after
the user's ``on_failure``, before Celery logs "Task ... raised unexpected": that record
carries the same exception object, which the capture has marked, so install()'s logging
hook does not send it again). The earlier attempts become exception steps of that event:
when a running task publishes its own retry (same task id, one more retry), the failure
that caused it is appended to a compact list in the ``X-POSTHOG-ERRORS-ATTEMPTS`` header
of the retry's message (type, message, attempt, countdown, ETA, time; the last
``MAX_ATTEMPTS``), and ``task_prerun`` turns that list back into steps at the start of
the next attempt's trail. The exception is read from ``Task.retry``'s own ``exc``
argument (the frame that is publishing), else from the exception being handled.
``Ignore``, ``Reject`` and ``Retry`` never reach ``task_failure``; the exceptions a task
declares as expected (``Task.throws``, which Celery logs at INFO without a traceback) are
not reported either, as in sentry-sdk.

**Prefork pool and shutdown.** Celery's prefork pool runs tasks in billiard child
processes, which the core's ``multiprocessing`` pool detection does not see and which
Celery may end without an interpreter exit (``max_tasks_per_child``, a hard time limit,
shutdown). So a child process flushes after each task that captured something (its
failure, an error it logged), bounded by install()'s ``shutdown_timeout``, and every
process flushes (bounded) on ``worker_process_shutdown`` and ``worker_shutdown``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import sys
import threading
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

try:
    # celery ships no type hints: its objects are Any here.
    from celery import signals as _signals  # type: ignore[import-untyped]
    from celery.app.task import Task as _Task  # type: ignore[import-untyped]
    from celery.exceptions import (  # type: ignore[import-untyped]
        Ignore,
        Reject,
        Retry,
        TimeLimitExceeded,
    )
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "posthog_errors.celery needs celery: pip install 'posthog-errors[celery]'"
    ) from error

from posthog_errors import _context, _dedupe, _guard, _steps
from posthog_errors._delivery import worker
from posthog_errors._reporter import Reporter, default_reporter
from posthog_errors._stats import STATS
from posthog_errors.integrations._headers import (
    TAGS_HEADER,
    apply_tags,
    clean_header_value,
    current_tags,
    decode_tags,
    encode_tags,
)

__all__ = [
    "ATTEMPTS_HEADER",
    "DISTINCT_ID_HEADER",
    "MAX_ATTEMPTS",
    "PROPERTIES_HEADER",
    "SESSION_ID_HEADER",
    "TAGS_HEADER",
    "TASK_PROPERTIES",
    "Instrumentation",
    "install_integration",
    "instrument",
]

# posthog-python's header names (posthog/integrations/celery.py): mixed setups interoperate.
DISTINCT_ID_HEADER = "X-POSTHOG-DISTINCT-ID"
SESSION_ID_HEADER = "X-POSTHOG-SESSION-ID"
# TAGS_HEADER, "X-POSTHOG-CONTEXT-TAGS": posthog.tag() context tags, JSON as posthog-python.
# Ours: the enqueuer's bound properties, and the attempts that failed before this one.
PROPERTIES_HEADER = "X-POSTHOG-ERRORS-PROPERTIES"
ATTEMPTS_HEADER = "X-POSTHOG-ERRORS-ATTEMPTS"

MAX_ATTEMPTS = 20  # earlier attempts carried in a message: a retry loop keeps the newest
_MAX_ATTEMPT_MESSAGE = 500  # characters of one attempt's exception message
_MAX_PROPERTIES_JSON = 8_192  # bytes of bound properties a message carries (else none)

TASK_PROPERTIES = frozenset(
    {
        "celery_task_name",
        "celery_task_id",
        "celery_retries",
        "celery_queue",
        "celery_parent_id",
        "celery_root_id",
    }
)
"""What every event from a task carries; never propagated to the tasks it enqueues."""

_CONTROL_FLOW = (Ignore, Reject, Retry)
_RETRY_CODE: types.CodeType | None = getattr(_Task.retry, "__code__", None)

# Task ids reported without a task_prerun of ours, newest last: Celery may send
# task_failure twice for one of those (see Instrumentation._capture_unprepared).
_unprepared: dict[str, None] = {}
_UNPREPARED_LIMIT = 1024


@dataclasses.dataclass
class _Running:
    """What ``task_prerun`` set up for one task execution, for the signals after it."""

    task_id: str
    retries: int
    attempts: list[dict[str, Any]]
    binding: _context.bind
    trail: tuple[contextvars.Token[Any], contextvars.Token[Any]]
    token: contextvars.Token[_Running | None] | None = None
    captured: bool = False
    # In a prefork child: the process's capture count when the task started.
    captured_before: int | None = None
    # Undoes the posthog-python context that holds the carried context tags.
    untag: Callable[[], None] | None = None


# The task running in this context (nested for a task applied eagerly inside another).
_RUNNING: contextvars.ContextVar[_Running | None] = contextvars.ContextVar(
    "posthog_errors_celery_task", default=None
)


class Instrumentation:
    """The signal receivers of one reporter; :meth:`uninstrument` disconnects them.

    Callable (calling it uninstruments) and a context manager, so it serves as the undo
    callable ``install()`` keeps and as a handle for apps and tests.
    """

    def __init__(self, reporter: Callable[[], Reporter], app: Any = None) -> None:
        self._reporter = reporter
        self._app = app
        self._connected = False
        self._from_install = False
        self._receivers: list[tuple[Any, Callable[..., None]]] = [
            (_signals.before_task_publish, self._before_publish),
            (_signals.task_prerun, self._prerun),
            (_signals.task_failure, self._failure),
            (_signals.task_postrun, self._postrun),
            (_signals.worker_process_shutdown, self._shutdown),
            (_signals.worker_shutdown, self._shutdown),
        ]

    @property
    def connected(self) -> bool:
        return self._connected

    def _connect(self) -> None:
        for signal, receiver in self._receivers:
            # weak=False: the bound methods would otherwise die with a dropped handle.
            signal.connect(receiver, weak=False)
        self._connected = True

    def uninstrument(self) -> None:
        """Disconnect the receivers (a no-op the second time). Tasks running now finish
        with their bindings undone by ``task_postrun`` as usual."""
        global _active
        with _lock:
            if not self._connected:
                return
            for signal, receiver in self._receivers:
                signal.disconnect(receiver)
            self._connected = False
            if _active is self:
                _active = None

    def __call__(self) -> None:
        self.uninstrument()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstrument()

    def _ours(self, task: Any) -> bool:
        return self._app is None or getattr(task, "app", None) is self._app

    # -- producer side (and a worker that enqueues) ----------------------------------

    def _before_publish(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        try:
            if isinstance(headers, dict):
                _write_headers(headers)
        except Exception as error:
            _guard.internal_error(error)

    # -- worker side ------------------------------------------------------------------

    def _prerun(self, sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
        task = task if task is not None else sender
        try:
            if task is None or not self._ours(task):
                return
            request = task.request
            properties = _carried_properties(_header(request, PROPERTIES_HEADER))
            properties.update(_task_properties(task, request))
            binding = _context.bind(
                clean_header_value(_header(request, DISTINCT_ID_HEADER)),
                session_id=clean_header_value(_header(request, SESSION_ID_HEADER)),
                properties=properties,
            )
            attempts = _carried_attempts(_header(request, ATTEMPTS_HEADER))
            task_key = str(task_id if task_id is not None else request.id)
            captured_before = _captured() if _in_pool_child() else None
            # Nothing below raises: the trail, binding and variable are undone together.
            running = _Running(task_key, _retries(request), attempts, binding, _steps.start_trail())
            running.captured_before = captured_before
            for attempt in attempts:
                _add_attempt_step(attempt)
            binding.__enter__()
            running.token = _RUNNING.set(running)
            # May raise (posthog's contexts): _postrun undoes whatever was entered.
            running.untag = apply_tags(decode_tags(_header(request, TAGS_HEADER)))
        except Exception as error:
            _guard.internal_error(error)

    def _failure(
        self,
        sender: Any = None,
        task_id: Any = None,
        exception: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        try:
            if not isinstance(exception, BaseException) or isinstance(exception, _CONTROL_FLOW):
                return
            if sender is None or not self._ours(sender):
                return
            throws = getattr(sender, "throws", ())
            if throws and isinstance(exception, throws):
                return  # expected: Celery logs it at INFO, without a traceback
            request = sender.request
            properties = _task_properties(sender, request)
            if task_id is not None:
                properties["celery_task_id"] = str(task_id)
            running = _RUNNING.get()
            if running is not None and running.task_id == str(task_id):
                self._reporter().capture(
                    exception,
                    level="error",
                    handled=False,
                    mechanism="task",
                    source="celery.task_failure",
                    properties=properties,
                )
                running.captured = True
            elif not self._capture_unprepared(request, task_id, exception, properties):
                return
            # Celery's "Task handler raised error" record carries the exception wrapped
            # (billiard's ExceptionWithTraceback): the same failure, so the same mark.
            alias = getattr(einfo, "exception", None)
            if isinstance(alias, BaseException) and alias is not exception:
                marked = getattr(exception, _dedupe.UUID_ATTR, None)
                if isinstance(marked, str):
                    _dedupe.claim(alias, marked)
        except Exception as error:
            _guard.internal_error(error)

    def _capture_unprepared(
        self, request: Any, task_id: Any, exception: BaseException, properties: dict[str, Any]
    ) -> bool:
        """A failure with no ``task_prerun`` of ours in this context: a hard time limit or
        a lost child, which Celery reports from the worker's main process, or a task that
        was running when the app instrumented. What the request's headers still say.

        Celery 5.7 sends ``task_failure`` twice for a hard time limit: without the request
        when the limit fires, then with it when the pool reports the child's end. The
        second one, which knows the person, is reported; one per task id either way."""
        if getattr(request, "id", None) is None and isinstance(exception, TimeLimitExceeded):
            return False
        key = str(task_id)
        if key in _unprepared:
            return False
        _unprepared[key] = None
        while len(_unprepared) > _UNPREPARED_LIMIT:
            _unprepared.pop(next(iter(_unprepared)), None)
        carried = _carried_properties(_header(request, PROPERTIES_HEADER))
        tags = decode_tags(_header(request, TAGS_HEADER))
        self._reporter().capture(
            exception,
            level="error",
            handled=False,
            mechanism="task",
            source="celery.task_failure",
            distinct_id=clean_header_value(_header(request, DISTINCT_ID_HEADER)),
            session_id=clean_header_value(_header(request, SESSION_ID_HEADER)),
            properties={**tags, **carried, **properties},
        )
        if _in_pool_child():
            worker().flush(worker().shutdown_timeout)
        return True

    def _postrun(self, sender: Any = None, task_id: Any = None, **_: Any) -> None:
        try:
            running = _RUNNING.get()
            if running is None or running.task_id != str(task_id):
                return
            try:
                try:
                    if running.untag is not None:
                        running.untag()
                finally:
                    running.binding.__exit__(None, None, None)
            finally:
                _steps.end_trail(running.trail)
                if running.token is not None:
                    try:
                        _RUNNING.reset(running.token)
                    except ValueError:  # set in another context: leave that one alone
                        _RUNNING.set(None)
            before = running.captured_before
            if before is not None and (running.captured or _captured() != before):
                # The child may be ended without an interpreter exit: deliver what the task
                # captured (its failure, an error it logged) now, bounded.
                worker().flush(worker().shutdown_timeout)
        except Exception as error:
            _guard.internal_error(error)

    def _shutdown(self, **_: Any) -> None:
        try:
            worker().flush(worker().shutdown_timeout)
        except Exception as error:
            _guard.internal_error(error)


_lock = threading.RLock()
_active: Instrumentation | None = None


def instrument(app: Any = None, client: Any = None, **reporter_options: Any) -> Instrumentation:
    """Report Celery task failures, for apps that do not call ``posthog_errors.install()``
    (which does this by itself when celery is importable).

    Call it at the app's start-up, in the code both the producer and the worker run (the
    module that creates the ``Celery`` app): the producer needs it to send the person with
    each task, the worker to report. ``client`` is a ``posthog.Posthog`` (or a callable
    returning one); with no client and no options, events go through the reporter
    ``install()`` set, else one built from ``POSTHOG_API_KEY``/``POSTHOG_HOST``.
    ``reporter_options`` are the payload and filter options ``install()`` takes
    (``before_send``, ``ignore``, ``in_app_include``, ``redact_keys``, ...). ``app``
    limits reporting to that app's tasks (default: every Celery app in the process).

    Idempotent: while instrumented, calling it again returns the same
    :class:`Instrumentation`; its ``uninstrument()`` undoes it. An explicit call takes over
    from the set-up ``install()`` made (the explicit client and options win).
    """
    global _active
    with _lock:
        if _active is not None:
            if not _active._from_install:
                return _active
            _active.uninstrument()
        if client is None and not reporter_options:
            source: Callable[[], Reporter] = default_reporter
        else:
            reporter = Reporter(client, **reporter_options)

            def source() -> Reporter:
                return reporter

        instrumentation = Instrumentation(source, app)
        instrumentation._connect()
        _active = instrumentation
        return instrumentation


def install_integration(reporter: Reporter) -> Callable[[], None]:
    """What ``install()`` calls when celery is importable: report through ``reporter``.

    Returns the undo callable. When the app already called :func:`instrument`, that
    explicit set-up is kept and the undo does nothing.
    """
    global _active
    with _lock:
        if _active is not None:
            return _nothing
        instrumentation = Instrumentation(lambda: reporter)
        instrumentation._from_install = True
        instrumentation._connect()
        _active = instrumentation
        return instrumentation


def _nothing() -> None:
    """Undo of an ``install_integration`` that found Celery already instrumented."""


# -- headers ----------------------------------------------------------------------------


def _write_headers(headers: dict[str, Any]) -> None:
    """Put the current person, bound properties and (for a retry) the attempts so far in
    a message's headers, at both levels (see the module docstring)."""
    distinct_id, session_id, bound = _context.resolve(None, None, None)
    values: dict[str, Any] = {}
    if distinct_id is not None:
        values[DISTINCT_ID_HEADER] = distinct_id
    if session_id is not None:
        values[SESSION_ID_HEADER] = session_id
    tags = encode_tags(current_tags())
    if tags is not None:
        values[TAGS_HEADER] = tags
    carried = {key: value for key, value in bound.items() if key not in TASK_PROPERTIES}
    if carried:
        text = json.dumps(carried, default=str)
        if len(text) <= _MAX_PROPERTIES_JSON:
            values[PROPERTIES_HEADER] = text
    running = _RUNNING.get()
    if running is not None and _is_retry_of(running, headers):
        attempts = [*running.attempts, _attempt(running, headers)][-MAX_ATTEMPTS:]
        values[ATTEMPTS_HEADER] = json.dumps(attempts, default=str)
    elif ATTEMPTS_HEADER in headers and (running is None or headers.get("id") != running.task_id):
        # A new task never inherits another task's attempts (nor a stale copy of them).
        headers.pop(ATTEMPTS_HEADER, None)
    if not values:
        return
    headers.update(values)
    nested = headers.setdefault("headers", {})
    if isinstance(nested, dict):
        nested.update(values)


def _is_retry_of(running: _Running, headers: Mapping[str, Any]) -> bool:
    """The message is this task's own retry: same id, one more retry."""
    if headers.get("id") != running.task_id:
        return False
    retries = headers.get("retries")
    return isinstance(retries, int) and retries == running.retries + 1


def _attempt(running: _Running, headers: Mapping[str, Any]) -> dict[str, Any]:
    """The attempt that is being retried, as the next message carries it."""
    exc, countdown = _retry_arguments()
    attempt: dict[str, Any] = {"attempt": running.retries + 1, "at": time.time()}
    if exc is not None:
        attempt["type"] = type(exc).__qualname__
        attempt["message"] = _text(exc)[:_MAX_ATTEMPT_MESSAGE]
    if isinstance(countdown, (int, float)) and not isinstance(countdown, bool):
        attempt["countdown"] = countdown
    eta = headers.get("eta")
    if isinstance(eta, str):
        attempt["eta"] = eta
    return attempt


def _retry_arguments() -> tuple[BaseException | None, Any]:
    """``exc`` and ``countdown`` of the ``Task.retry`` call that is publishing the retry,
    read from its frame; else the exception being handled (autoretry and the usual
    ``except ...: raise self.retry()`` call it inside an ``except`` block)."""
    exc: Any = None
    countdown: Any = None
    frame: types.FrameType | None = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 64:
        if frame.f_code is _RETRY_CODE:
            local = frame.f_locals
            exc, countdown = local.get("exc"), local.get("countdown")
            break
        frame, depth = frame.f_back, depth + 1
    del frame
    if not isinstance(exc, BaseException):
        exc = sys.exc_info()[1]
    if isinstance(exc, Retry):  # a bare self.retry() re-raised inside a retry
        exc = exc.exc if isinstance(exc.exc, BaseException) else None
    return exc, countdown


def _header(request: Any, name: str) -> Any:
    """A header of the running task: in ``request.headers`` (the nested dict), else at the
    top level, which Celery makes attributes of the request."""
    nested = getattr(request, "headers", None)
    if isinstance(nested, dict):
        value = nested.get(name)
        if value is not None:
            return value
    return getattr(request, name, None)


def _carried_properties(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {str(key): value for key, value in raw.items()}
    if not isinstance(raw, str):
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return {str(key): value for key, value in parsed.items()} if isinstance(parsed, dict) else {}


def _carried_attempts(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    if not isinstance(raw, list):
        return []
    return [item for item in raw[-MAX_ATTEMPTS:] if isinstance(item, dict)]


def _add_attempt_step(attempt: Mapping[str, Any]) -> None:
    """One earlier attempt as an exception step, at the time it failed."""
    number = attempt.get("attempt")
    kind = attempt.get("type") or "failure"
    message = attempt.get("message")
    text = (
        f"Attempt {number} failed: {kind}: {message}"
        if message
        else f"Attempt {number} failed: {kind}"
    )
    countdown = attempt.get("countdown")
    text += f" (retried in {countdown} s)" if countdown is not None else " (retried)"
    step: dict[str, Any] = {"category": "celery.retry", "attempt": number}
    for key, name in (("type", "exception_type"), ("message", "exception_message")):
        if attempt.get(key) is not None:
            step[name] = attempt[key]
    for key in ("countdown", "eta"):
        if attempt.get(key) is not None:
            step[key] = attempt[key]
    at = attempt.get("at")
    stamp = at if isinstance(at, (int, float)) and not isinstance(at, bool) else time.time()
    # add_step() stamps "now"; the step belongs at the time the attempt failed.
    _steps._push(
        {**step, "$message": text[: _steps.MAX_MESSAGE_LENGTH], "$timestamp": float(stamp)}
    )


def _task_properties(task: Any, request: Any) -> dict[str, Any]:
    """The ``celery_*`` properties of a running task."""
    delivery = getattr(request, "delivery_info", None)
    delivery = delivery if isinstance(delivery, dict) else {}
    properties: dict[str, Any] = {
        "celery_task_name": getattr(task, "name", None),
        "celery_task_id": getattr(request, "id", None),
        "celery_retries": _retries(request),
        "celery_queue": delivery.get("queue") or delivery.get("routing_key"),
        "celery_parent_id": getattr(request, "parent_id", None),
        "celery_root_id": getattr(request, "root_id", None),
    }
    return {key: value for key, value in properties.items() if value is not None}


def _retries(request: Any) -> int:
    retries = getattr(request, "retries", 0)
    return retries if isinstance(retries, int) else 0


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _captured() -> int:
    return STATS.snapshot()["captured"]


def _in_pool_child() -> bool:
    """Whether this is a prefork pool child (billiard's ForkPoolWorker-N). Not from
    ``worker_process_init``: the solo pool sends it too, in the worker's own process."""
    process = sys.modules.get("billiard.process")
    if process is None:
        return False
    try:
        return "PoolWorker-" in process.current_process().name
    except Exception:
        return False
