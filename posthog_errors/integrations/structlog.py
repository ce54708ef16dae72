"""``PostHogProcessor``: a structlog processor that sends failures to PostHog.

Place it before ``format_exc_info``/``dict_tracebacks``: those pop ``exc_info``, after which
the exception is gone (it warns once if it finds itself placed after them). It returns the
event dict unchanged, never raises into the app, works with or without ``add_log_level``,
and keeps no per-call state on the instance, so one processor can serve many threads.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, MutableMapping
from typing import Any

try:
    import structlog as _structlog  # noqa: F401 (imported to fail early without the extra)
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "posthog_errors.structlog needs structlog: pip install 'posthog-errors[structlog]'"
    ) from error

from posthog_errors import _guard, _logs, _steps
from posthog_errors._event_dict import exception_from_exc_info, read_event_dict
from posthog_errors._levels import LevelAllowList, posthog_level
from posthog_errors._log_message import (
    call_site_frames,
    fingerprint,
    mark_record_sent,
    mark_structlog_message,
    message_rate_key,
    record_was_sent,
)
from posthog_errors._reporter import BeforeSend, DoorReporter, Reporter

# The handler's logger filter, shared: the same defaults (the posthog client, its HTTP stack
# and this library), the same patterns ("name" and its dotted children, "prefix*").
from posthog_errors.handler import DEFAULT_IGNORED_LOGGERS, _logger_matches, _logger_patterns

__all__ = ["PostHogProcessor"]

# structlog method names and level names -> Python level numbers.
_METHOD_LEVELS = {
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "exception": logging.ERROR,
    "error": logging.ERROR,
    "err": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "msg": logging.INFO,
    "log": logging.INFO,
    "debug": logging.DEBUG,
    "notset": logging.NOTSET,
}


class PostHogProcessor:
    """Sends events with an exception (``exc_info``) and, unless ``capture_messages`` is
    false, error-level messages to PostHog. ``levels`` is the same allow list as
    :class:`posthog_errors.PostHogHandler`'s, and ``ignore_loggers`` the same logger filter
    (a name ignores that logger and its dotted children, ``"prefix*"`` every name that
    starts so; the posthog client's, its HTTP stack's and this library's loggers are always
    ignored). A message is rate limited by its call site (and its template, with
    ``positional_args``), so f-string events from one line share one budget.

    Payload options (``before_send``, ``ignore``, ``in_app_include``, ``in_app_exclude``,
    ``project_root``, ``redact_secrets``, ``redact_keys``, ``redact_patterns``,
    ``capture_code_variables``, ``release``, ``environment``, ``service``): given none, and
    no ``reporter``, events use the options
    :func:`posthog_errors.install` was given (``capture_code_variables=True`` included),
    sent to ``client`` when one is given; given any, the processor uses its own options
    only (the defaults for the others: redaction on, no code variables).

    Events below ``levels`` at ``steps_levels`` (INFO and WARNING) become exception steps
    of the current context, sent with its next ``$exception``; ``steps=False`` turns it
    off.

    ``send_logs`` (a level: ``"info"``) also sends every event at or above it to PostHog
    Logs, its key-values as attributes, through ``before_send_log`` (docs/logs.md).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        levels: str | int | Iterable[str | int] = ("error", "fatal"),
        capture_messages: bool = True,
        ignore_loggers: str | Iterable[str] = (),
        before_send: BeforeSend | None = None,
        ignore: Iterable[type[BaseException]] = (),
        in_app_include: Iterable[str] = (),
        in_app_exclude: Iterable[str] = (),
        project_root: str | None = None,
        redact_secrets: bool | None = None,
        redact_keys: Iterable[str] = (),
        redact_patterns: Iterable[str | re.Pattern[str]] = (),
        capture_code_variables: bool | None = None,
        release: str | None = None,
        environment: str | None = None,
        service: str | None = None,
        steps: bool = True,
        steps_levels: str | int | Iterable[str | int] = ("info", "warning"),
        reporter: Reporter | None = None,
        send_logs: str | int | None = None,
        before_send_log: _logs.BeforeSendLog | None = None,
    ) -> None:
        self.levels = LevelAllowList(levels)
        # Events below the allow list at these levels become exception steps (``_steps``).
        self.steps = LevelAllowList(steps_levels) if steps else None
        logs_threshold = _logs.logs_level(send_logs)
        if logs_threshold is None and before_send_log is not None:
            raise ValueError("before_send_log needs send_logs (a level): no log is sent without")
        self.capture_messages = bool(capture_messages)
        ignored = [ignore_loggers] if isinstance(ignore_loggers, str) else list(ignore_loggers)
        self.ignore_loggers = DEFAULT_IGNORED_LOGGERS + tuple(_logger_patterns(ignored))
        self._ignored_cache: dict[str, bool] = {}  # configuration, derived: not per call
        self._reporter = DoorReporter(
            client,
            {
                "before_send": before_send,
                "ignore": ignore,
                "in_app_include": in_app_include,
                "in_app_exclude": in_app_exclude,
                "project_root": project_root,
                "redact_secrets": redact_secrets,
                "redact_keys": redact_keys,
                "redact_patterns": redact_patterns,
                "capture_code_variables": capture_code_variables,
                "release": release,
                "environment": environment,
                "service": service,
            },
            reporter,
        )
        self._warned_misplaced = False  # configuration feedback, not per-call state
        # The reporter is resolved per log on the worker (install()'s may come later).
        self.logs = (
            None
            if logs_threshold is None
            else _logs.LogsOptions(logs_threshold, self._reporter, before_send_log)
        )

    @property
    def reporter(self) -> Reporter:
        """Where events go: the processor's own options if it was given any (or a
        ``reporter``), else ``install()``'s, sent to this processor's client if it has one."""
        return self._reporter.get()

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not _guard.inside_library():
            try:
                event_uuid = self._process(logger, method_name, event_dict)
                if self.logs is not None:
                    self._send_log(logger, method_name, event_dict, event_uuid)
            except Exception as error:
                _guard.internal_error(error)
        return event_dict

    def _send_log(
        self,
        logger: Any,
        method_name: str,
        event_dict: MutableMapping[str, Any],
        event_uuid: str | None,
    ) -> None:
        """The event as a PostHog Logs record, at or above ``send_logs``: its key-values as
        attributes; a stdlib record (``ProcessorFormatter``) as the logging doors send it,
        once."""
        logs = self.logs
        assert logs is not None
        levelno = _level_number(event_dict.get("level"), method_name)
        if levelno < logs.level:
            return
        record = event_dict.get("_record")
        if isinstance(record, logging.LogRecord):
            if event_uuid and _logs.EVENT_UUID_ATTR not in record.__dict__:
                record.__dict__[_logs.EVENT_UUID_ATTR] = event_uuid
            _logs.submit_record(logs, record)  # once, if install()'s hook sent it too
            return
        logger_name = _logger_name(logger, event_dict, None)
        if self._is_ignored(logger_name):
            return
        attributes = {k: v for k, v in event_dict.items() if k not in _NOT_ATTRIBUTES}
        exception = exception_from_exc_info(event_dict.get("exc_info"))
        if exception is not None:
            attributes.setdefault("exception.type", type(exception).__name__)
        _logs.submit_event(
            logs,
            levelno,
            logger_name,
            event_dict.get("event", ""),
            attributes,
            event_uuid=event_uuid,
            distinct_id=event_dict.get("distinct_id"),
            session_id=event_dict.get("session_id"),
        )

    def _process(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> str | None:
        """The event's uuid when it became an ``$exception`` event."""
        levelno = _level_number(event_dict.get("level"), method_name)
        allowed = self.levels.allows(levelno)
        steps = self.steps
        if not allowed and (steps is None or not steps.allows(levelno)):
            return None
        record = event_dict.get("_record")  # set by ProcessorFormatter
        if not isinstance(record, logging.LogRecord):
            record = None
        logger_name = _logger_name(logger, event_dict, record)
        if self._is_ignored(logger_name):
            return None
        if not allowed:  # a step of the context's trail, not an event
            if record is not None:
                _steps.add_record(record)  # once, if install()'s logging hook added it too
            else:
                _steps.add_event_dict(event_dict, posthog_level(levelno), logger_name)
            return None
        view = read_event_dict(event_dict)
        if view.exception is None and "exc_info" not in event_dict:
            self._warn_if_misplaced(event_dict)
        reporter = self.reporter
        properties: dict[str, Any] = {"logger": logger_name, **view.properties}
        level = posthog_level(levelno)
        if view.exception is not None:
            if view.message:
                properties.setdefault("log_message", view.message)
            return reporter.capture(
                view.exception,
                level=level,
                handled=True,
                mechanism="logger",
                source="structlog.processor",
                distinct_id=view.distinct_id,
                session_id=view.session_id,
                properties=properties,
            )
        if not self.capture_messages or view.message is None:
            return None
        if record is not None:
            if record_was_sent(record):
                return None  # the stdlib handler already sent this record
            mark_record_sent(record)
        mark_structlog_message(event_dict, view.message)
        frames, omitted = call_site_frames(reporter.options.max_frames)
        template, has_args = _template(view.message, view.template, event_dict, record)
        event_fingerprint = fingerprint(logger_name, template)
        grouping = event_fingerprint if has_args else None
        return reporter.capture_message(
            view.message,
            fingerprint=event_fingerprint,
            rate_key=message_rate_key(logger_name, record, frames, grouping, event_fingerprint),
            frames=frames,
            frames_omitted=omitted,
            level=level,
            mechanism="logger",
            source="structlog.processor",
            distinct_id=view.distinct_id,
            session_id=view.session_id,
            properties=properties,
        )

    def _is_ignored(self, name: str) -> bool:
        ignored = self._ignored_cache.get(name)
        if ignored is None:
            ignored = any(_logger_matches(name, p) for p in self.ignore_loggers)
            if len(self._ignored_cache) < 4096:
                self._ignored_cache[name] = ignored
        return ignored

    def _warn_if_misplaced(self, event_dict: MutableMapping[str, Any]) -> None:
        formatted = event_dict.get("exception")
        if self._warned_misplaced or not formatted:
            return
        self._warned_misplaced = True
        warnings.warn(
            "PostHogProcessor runs after format_exc_info or dict_tracebacks, which remove "
            "exc_info: exceptions cannot be reported. Place PostHogProcessor before them.",
            RuntimeWarning,
            stacklevel=2,
        )


# structlog's own keys: the message, level, logger and time are the log record's fields;
# the exception and the ids are sent otherwise (exception.*, posthogDistinctId, sessionId).
_NOT_ATTRIBUTES = frozenset(
    {
        "event",
        "level",
        "logger",
        "logger_name",
        "timestamp",
        "exc_info",
        "exception",
        "stack_info",
        "positional_args",
        "distinct_id",
        "session_id",
    }
)


def _level_number(level: object, method_name: str) -> int:
    if isinstance(level, int):
        return level
    name = level if isinstance(level, str) else method_name
    number = _METHOD_LEVELS.get(str(name).lower())
    if number is None:
        registered = logging.getLevelName(str(name).upper())
        number = registered if isinstance(registered, int) else logging.INFO
    return number


def _logger_name(
    logger: Any, event_dict: MutableMapping[str, Any], record: logging.LogRecord | None
) -> str:
    """The event's logger: ``add_logger_name``'s key; else the stdlib record's own logger
    (``ProcessorFormatter`` passes its record, and in ``foreign_pre_chain`` no logger), as
    the stdlib handler names it; else the bound logger's name."""
    for candidate in (event_dict.get("logger"), event_dict.get("logger_name")):
        if isinstance(candidate, str) and candidate:
            return candidate
    if record is not None and isinstance(record.name, str) and record.name:
        return record.name
    name = getattr(logger, "name", None)
    return name if isinstance(name, str) and name else "structlog"


def _template(
    message: str,
    template: str | None,
    event_dict: MutableMapping[str, Any],
    record: logging.LogRecord | None,
) -> tuple[str, bool]:
    """A message's unformatted template, and whether it was logged with arguments.

    A stdlib record in ``foreign_pre_chain`` arrives formatted (``event`` is its
    ``getMessage()``, and structlog emptied the record's ``args``): its template is the
    record's ``msg``, as the stdlib handler reads it, so that either door groups it alike.
    """
    positional = bool(event_dict.get("positional_args"))
    if record is not None and event_dict.get("_from_structlog") is False:
        msg = record.msg
        if isinstance(msg, str):
            return msg, positional or msg != message
    return template or message, positional
