"""PostHog Logs, the caller's side: which records go, and the snapshot each becomes.

``send_logs="info"`` (on ``install()``, ``PostHogHandler``, the structlog processor and the
loguru sink) sends every record at or above that level to PostHog Logs. On the caller's
thread a record only becomes a small tuple (:func:`submit_record`, :func:`submit_event`):

- its exception step (``_steps.freeze_record``): the message formatting the steps already
  do, bounded, made at log time; when the logging hook just made this record's step, that
  very step is reused, so a record that is both a step and a log is formatted once;
- the person and session (``_context.resolve``, the same chain the ``$exception`` events
  read) and the active OpenTelemetry span's ids (``_context.current_ids_and_span``);
- the uuid of the ``$exception`` event the record became, if it became one
  (:data:`EVENT_UUID_ATTR`, set by the doors that report records).

The worker (``_logs_delivery``) renders it (:func:`render`), redacts it with the one
redaction policy, runs ``before_send_log``, caps the rate, encodes (``_otlp``) and sends.
Nothing here does I/O, formats a big value or takes a lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from posthog_errors import _context, _guard, _steps
from posthog_errors._bounded import cut
from posthog_errors._levels import posthog_level
from posthog_errors._logs_delivery import LOGS as _LOGS
from posthog_errors._logs_delivery import SNAPSHOT_STEP, UNIT, LogSnapshot
from posthog_errors._otlp import severity

__all__ = [
    "ATTR_DISTINCT_ID",
    "ATTR_EXCEPTION_UUID",
    "ATTR_LOGGER",
    "ATTR_SESSION_ID",
    "EVENT_UUID_ATTR",
    "LOGGED_ATTR",
    "BeforeSendLog",
    "LogSnapshot",
    "LogsOptions",
    "logs_level",
    "render",
    "submit_event",
    "submit_record",
]

# Attribute names on the wire. The first two are PostHog's (sdk-specs logs spec, "Auto-
# captured context attributes"; the project settings' default keys); the logger's name
# follows OpenTelemetry's semantic conventions; the exception event's uuid is ours.
ATTR_DISTINCT_ID = "posthogDistinctId"
ATTR_SESSION_ID = "sessionId"
ATTR_LOGGER = "logger.name"
ATTR_EXCEPTION_UUID = "posthogExceptionUuid"
ATTR_EXCEPTION_TYPE = "exception.type"
ATTR_EXCEPTION_MESSAGE = "exception.message"
# Set on a LogRecord by the door that made it an $exception event: that event's uuid.
EVENT_UUID_ATTR = "_posthog_errors_event_uuid"
# Set on a LogRecord once it was queued for PostHog Logs: install()'s hook and an explicit
# PostHogHandler (or loguru's forwarding) send it once.
LOGGED_ATTR = "_posthog_errors_logged"

BeforeSendLog = Callable[[dict[str, Any]], "dict[str, Any] | None"]

_BASE_UNITS = 1  # a record's fixed cost, its ids and JSON included (1 KiB)
_EXTRAS_UNITS = _steps.MAX_EXTRA_TEXT // UNIT + 1
_NAMES = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}


def logs_level(value: object, option: str = "send_logs") -> int | None:
    """``send_logs`` as a level number: None for off; a name (``"info"``, any case, or a
    level registered with ``logging.addLevelName``) or a number. Anything else raises here,
    at configuration time."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{option} must be a level name or number, or None; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{option} must be a level >= 0, got {value!r}")
        return value
    if isinstance(value, str):
        name = value.strip()
        if name.lower() in ("none", "off", ""):
            return None
        known = _NAMES.get(name.lower())
        if known is not None:
            return known
        if name.isdigit():
            return int(name)
        registered = logging.getLevelName(name.upper())
        if isinstance(registered, int):
            return registered
        raise ValueError(f"{option}: unknown level {value!r} (use e.g. 'info', 'warning')")
    raise TypeError(f"{option} must be a level name or number, or None; got {value!r}")


class LogsOptions:
    """What one door sends logs with: its threshold, its reporter (the client, the
    redaction policy, release/environment/service) and its ``before_send_log``."""

    __slots__ = ("before_send_log", "handler", "level", "reporter")

    def __init__(
        self,
        level: int,
        reporter: Any,
        before_send_log: BeforeSendLog | None,
        handler: Any = None,
    ) -> None:
        if before_send_log is not None and not callable(before_send_log):
            raise TypeError(f"before_send_log must be a callable or None, got {before_send_log!r}")
        self.level = level
        self.reporter = reporter
        self.before_send_log = before_send_log
        # The PostHogHandler whose ignored loggers and filters a record must pass too.
        self.handler = handler

    def current_reporter(self) -> Any:
        """The reporter now: a door's own, or (``DoorReporter``) ``install()``'s."""
        reporter = self.reporter
        get = getattr(reporter, "get", None)
        return get() if callable(get) else reporter


# What submit_record() reads for every record: module globals bound once (the hot path).
_current_ids_and_span = _context.current_ids_and_span
_inside_get = _guard._inside.get
_library_threads = _guard._library_threads
_ident = threading.get_ident
_head_get = _steps.HEAD.get
_STEP = _steps.STEP
_SHORT_NODE = _STEP + 5  # a node of a short step: (template, arguments) kept as they are
_MAX_ARGUMENT = _steps.MAX_ARGUMENT_LENGTH


def submit_record(options: LogsOptions, record: logging.LogRecord, passed: bool = False) -> None:
    """Queue ``record`` for PostHog Logs (the caller checked its level). Never raises.

    Not sent: a record sent already (another door), one made by the library's own code or
    threads (``_guard``), one of an ignored logger (the posthog client's, its HTTP
    stack's, this library's: so a PostHog outage is never logged to PostHog, in a loop) or
    one the handler's filters refuse (``passed``: the handler just checked those two).
    The hot path, inline: what ``_steps.holds_record`` and :func:`_submit` do, kept in
    step with them."""
    try:
        fields = record.__dict__
        ident = _ident()
        if LOGGED_ATTR in fields or _inside_get() or ident in _library_threads:
            return
        handler = options.handler
        if handler is not None and not passed:
            ignored = handler._ignored_cache.get(record.name)
            if ignored is None:
                ignored = handler._is_ignored(record.name)
            if ignored or (handler.filters and not handler.filter(record)):
                return
        head = _head_get()
        try:
            args = fields["args"]
            made = (
                head is not None
                and len(head) == _SHORT_NODE
                and head[_STEP] == fields["created"]
                and head[_STEP + 3] is fields["msg"]
                and (head[_STEP + 4] is args if args else head[_STEP + 4] is None)
                and head[2] == ident
            )
        except KeyError:  # an odd record (attributes deleted): freeze_record copes
            made = False
        # The step the hook just made: formatted once. Else made now, as steps are.
        step = (
            head if made and head is not None else (None, None, None, *_steps.freeze_record(record))
        )
        fields[LOGGED_ATTR] = True  # after freezing: a record with extras is frozen slowly
        distinct_id, session_id, trace_id, span_id = _current_ids_and_span()
        event_uuid = fields.get(EVENT_UUID_ATTR)
        if len(step) != _SHORT_NODE:  # a long step: extras, an exception, or a formatted message
            _submit(options, step[_STEP:], distinct_id, session_id, trace_id, span_id, event_uuid)
            return
        # step: a node, its step from _STEP: (created, levelno, name, template, arguments)
        template, args = step[_STEP + 3], step[_STEP + 4]
        units = (
            _BASE_UNITS
            + (len(template) + (0 if args is None else len(args) * _MAX_ARGUMENT)) // UNIT
        )
        _LOGS.submit(
            (
                options,
                units,
                distinct_id,
                session_id,
                trace_id,
                span_id,
                event_uuid,
                step[_STEP],
                step[_STEP + 1],
                step[_STEP + 2],
                template,
                args,
            ),
            units,
        )
    except Exception as error:
        _guard.internal_error(error)


def submit_event(
    options: LogsOptions,
    levelno: int,
    logger_name: str,
    message: object,
    attributes: Mapping[str, Any],
    *,
    event_uuid: str | None = None,
    distinct_id: Any = None,
    session_id: Any = None,
) -> None:
    """Queue a structlog event or a loguru record: its message and key-values, bounded as
    exception steps are (``_steps``). Never raises."""
    try:
        if _guard.inside_library():
            return
        plain = {k: v for k, v in attributes.items() if type(k) is str and not k.startswith("_")}
        made = _steps.make_step(message, plain)
        name = cut(logger_name, 200) if isinstance(logger_name, str) else ""
        step = (made[0], levelno, name, made[3], None, made[5], None, 0)
        found_id, found_session, trace_id, span_id = _current_ids_and_span()
        _submit(
            options,
            step,
            _context.as_id(distinct_id) or found_id,
            _context.as_id(session_id) or found_session,
            trace_id,
            span_id,
            event_uuid,
        )
    except Exception as error:
        _guard.internal_error(error)


def _submit(
    options: LogsOptions,
    step: tuple[Any, ...],
    distinct_id: str | None,
    session_id: str | None,
    trace_id: int,
    span_id: int,
    event_uuid: Any,
) -> None:
    template, args = step[3], step[4]
    units = (
        _BASE_UNITS
        + (
            (len(template) if type(template) is str else 0)
            + (0 if args is None else len(args) * _steps.MAX_ARGUMENT_LENGTH)
        )
        // UNIT
    )
    if len(step) > 5 and (step[5] is not None or step[6] is not None):
        units += _EXTRAS_UNITS
    if type(event_uuid) is not str:
        event_uuid = None
    _LOGS.submit(
        (options, units, distinct_id, session_id, trace_id, span_id, event_uuid, *step), units
    )


def render(snapshot: LogSnapshot) -> dict[str, Any]:
    """The record as ``before_send_log`` sees it, redacted (on the worker, plain values
    only): ``body``, ``level`` (PostHog's name), ``severity_number``, ``severity_text``,
    ``timestamp`` (epoch seconds), ``logger``, ``attributes``, ``trace_id``/``span_id``
    (hex, or None)."""
    options, _, distinct_id, session_id, trace_id, span_id, event_uuid = snapshot[:SNAPSHOT_STEP]
    step = snapshot[SNAPSHOT_STEP:]
    created, levelno, name = step[:3]
    extras, exception = (step[5], step[6]) if len(step) > 5 else (None, None)
    body = _steps.message_of(step)
    if type(body) is not str:
        body = str(body)
    levelno = levelno if type(levelno) is int else logging.INFO
    reporter_options = options.current_reporter().options
    limit = _steps.MAX_MESSAGE_LENGTH
    user: dict[str, Any] = {}
    if extras:
        user.update(extras)
    if exception is not None:
        user.setdefault(ATTR_EXCEPTION_TYPE, exception[0])
        user.setdefault(ATTR_EXCEPTION_MESSAGE, exception[1])
    if reporter_options.redact_secrets:
        redactor = reporter_options.redactor
        body = redactor.text(body, limit)
        user = redactor.properties(user, limit) if user else user
    else:
        body = cut(body, limit)
    attributes: dict[str, Any] = {ATTR_LOGGER: name or ""}
    if distinct_id:
        attributes[ATTR_DISTINCT_ID] = distinct_id
    if session_id:
        attributes[ATTR_SESSION_ID] = session_id
    if event_uuid:
        attributes[ATTR_EXCEPTION_UUID] = event_uuid
    attributes.update(user)  # the app's own attributes win (the logs spec)
    number, text = severity(levelno)
    return {
        "body": body,
        "level": posthog_level(levelno),
        "severity_number": number,
        "severity_text": text,
        "timestamp": created
        if isinstance(created, float) and math.isfinite(created)
        else time.time(),
        "logger": name or "",
        "attributes": attributes,
        "trace_id": format(trace_id, "032x") if trace_id and span_id else None,
        "span_id": format(span_id, "016x") if trace_id and span_id else None,
    }
