"""``PostHogHandler``: a real :class:`logging.Handler` with a level allow list.

A real handler, not a patch of ``Logger.callHandlers`` (as sentry-sdk's logging integration
does): with its level set to the lowest allowed level, a record it does not want costs what
it costs through ``logging.NullHandler``. Every argument can come as a plain string or list
from ``logging.config.dictConfig`` and from ``fileConfig`` INI ``args``/``kwargs``.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import reprlib
import sys
from collections.abc import Iterable
from typing import Any

from posthog_errors import _guard, _queue_logging
from posthog_errors._event_dict import read_event_dict
from posthog_errors._levels import LevelAllowList, posthog_level
from posthog_errors._log_message import (
    TEXT_HEAD,
    call_site_frames,
    fingerprint,
    mark_record_sent,
    message_rate_key,
    record_was_sent,
    was_sent_by_structlog,
)
from posthog_errors._logs import (
    EVENT_UUID_ATTR,
    BeforeSendLog,
    LogsOptions,
    logs_level,
    submit_record,
)
from posthog_errors._queue_logging import Carried, carried_of, forwarded, from_traceback_text
from posthog_errors._reporter import BeforeSend, EventFields, Reporter
from posthog_errors._stats import STATS
from posthog_errors._steps import add_record as add_step_record

__all__ = ["DEFAULT_IGNORED_LOGGERS", "PostHogHandler"]

# The posthog client, its HTTP stack and this library: their records are never captured,
# or a PostHog outage would be reported to PostHog, in a loop.
DEFAULT_IGNORED_LOGGERS = ("posthog", "backoff", "urllib3*", "requests", "posthog_errors")

# What a record becomes, by its level (PostHogHandler._route).
_EVENT, _STEP, _NOTHING = object(), object(), object()
STEP_ROUTE = _STEP  # for install()'s logging hook, which adds steps inline

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "_posthog_errors_sent",
    "_posthog_errors_event_uuid",
    "_posthog_errors_logged",
    _queue_logging.CARRIED_ATTR,
}


class PostHogHandler(logging.Handler):
    """Sends log records to PostHog as ``$exception`` events.

    Records with an exception become events of that exception; records without one become
    message-only events (one synthetic entry, the call site's stack, a type digested from
    the logger name and the unformatted template, and an ``$issue_name`` of both; no
    ``$exception_fingerprint`` unless the record's ``extra`` sets one) unless
    ``capture_messages`` is false. Records below ``levels`` at ``steps_levels`` become
    exception steps of the current context (``steps=False``: off); ``release`` is sent as
    ``$release_id``, ``environment`` and ``service`` as those properties (see
    :func:`posthog_errors.install`). A message is rate
    limited by its call site (and its template, when it has arguments), so f-string messages
    from one line share one budget. ``levels`` is an allow list, not a threshold:
    ``["debug", "error"]`` sends DEBUG and ERROR records only. ``redact_secrets``,
    ``redact_keys`` and ``redact_patterns`` are :func:`posthog_errors.install`'s.
    ``send_logs`` (a level: ``"info"``) also sends every record at or above it to PostHog
    Logs, through ``before_send_log`` (docs/logs.md); None (the default) sends none.
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        client: Any = None,
        api_key: str | None = None,
        host: str | None = None,
        levels: str | int | Iterable[str | int] = ("error", "fatal"),
        capture_messages: bool | str = True,
        ignore_loggers: str | Iterable[str] = (),
        before_send: BeforeSend | str | None = None,
        ignore: Iterable[type[BaseException] | str] | str = (),
        in_app_include: Iterable[str] = (),
        in_app_exclude: Iterable[str] = (),
        project_root: str | None = None,
        redact_secrets: bool | str = True,
        redact_keys: Iterable[str] | str = (),
        redact_patterns: Iterable[str] | str = (),
        release: str | None = None,
        environment: str | None = None,
        service: str | None = None,
        steps: bool | str = True,
        steps_levels: str | int | Iterable[str | int] = ("info", "warning"),
        reporter: Reporter | None = None,
        send_logs: str | int | None = None,
        before_send_log: BeforeSendLog | str | None = None,
    ) -> None:
        self.levels = LevelAllowList(levels)
        logs_threshold = logs_level(send_logs)
        self._logs_level = sys.maxsize if logs_threshold is None else logs_threshold
        # Records below the allow list at these levels become exception steps (``_steps``).
        self.steps = LevelAllowList(steps_levels) if _boolean("steps", steps) else None
        self._routes: dict[int, object] = {}  # levelno -> _EVENT, _STEP or _NOTHING
        super().__init__(level)
        self.level = max(self.level, self._lowest())
        self.capture_messages = _boolean("capture_messages", capture_messages)
        ignored = [ignore_loggers] if isinstance(ignore_loggers, str) else list(ignore_loggers)
        self.ignore_loggers = DEFAULT_IGNORED_LOGGERS + tuple(_logger_patterns(ignored))
        self._ignored_cache: dict[str, bool] = {}
        if reporter is None:
            # Behind a QueueListener, records lose their exception in QueueHandler.prepare:
            # from now on they carry what the event needs (see ``_queue_logging``).
            _queue_logging.wrap_queue_handlers(by_handler=True)
            reporter = Reporter(
                _imported(client, "client"),
                api_key=api_key,
                host=host,
                before_send=_imported(before_send, "before_send"),
                ignore=_exception_types(ignore),
                in_app_include=in_app_include,
                in_app_exclude=in_app_exclude,
                project_root=project_root,
                redact_secrets=_boolean("redact_secrets", redact_secrets),
                redact_keys=redact_keys,  # a single name or regex from a config file: one
                redact_patterns=redact_patterns,
                release=release,
                environment=environment,
                service=service,
            )
        self.reporter = reporter
        self.logs: LogsOptions | None = None
        if logs_threshold is not None:
            self.logs = LogsOptions(
                logs_threshold, reporter, _imported(before_send_log, "before_send_log"), self
            )
            # Only then: every other handler keeps handle() as the class has it.
            self.handle = self._handle_and_send_log  # type: ignore[method-assign]
        elif before_send_log is not None:
            raise ValueError("before_send_log needs send_logs (a level): no log is sent without")

    def setLevel(self, level: int | str) -> None:
        """Never below the lowest allowed level, so unwanted records cost nothing."""
        super().setLevel(level)
        self.level = max(self.level, self._lowest())

    def _route(self, levelno: int) -> object:
        """What a record at ``levelno`` becomes: an event, a step, or nothing (cached)."""
        if self.levels.allows(levelno):
            route = _EVENT
        elif self.steps is not None and self.steps.allows(levelno):
            route = _STEP
        else:
            route = _NOTHING
        if len(self._routes) < 256:
            self._routes[levelno] = route
        return route

    def _lowest(self) -> int:
        """The lowest level this handler looks at: the allow list's, or the steps' below it."""
        steps = self.steps
        lowest = self.levels.lowest if steps is None else min(self.levels.lowest, steps.lowest)
        return min(lowest, getattr(self, "_logs_level", lowest))

    def _handle_and_send_log(self, record: logging.LogRecord) -> bool:
        """``handle()`` with ``send_logs``: the record becomes an event or a step as ever,
        then, at or above ``send_logs``, a log of PostHog Logs (with that event's uuid).

        A record that becomes a step, the common case, is checked once for both (ignored
        logger, filters): ``handle()``'s step branch, inline, kept in step with it."""
        logs = self.logs
        levelno = record.levelno
        if logs is None or levelno < logs.level:
            return PostHogHandler.handle(self, record)
        if self._routes.get(levelno) is _STEP:
            name = record.name
            ignored = self._ignored_cache.get(name)
            if ignored is None:
                ignored = self._is_ignored(name)
            if not ignored and (not self.filters or self.filter(record)):
                add_step_record(record)
                submit_record(logs, record, True)
            return False
        sent = PostHogHandler.handle(self, record)
        submit_record(logs, record)
        return sent

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: emit() shares no state between calls. The common case, a record
        # that becomes a step, is one dict lookup per check (see docs/performance.md).
        levelno = record.levelno
        route = self._routes.get(levelno)
        if route is None:
            route = self._route(levelno)
        if route is not _EVENT:
            if route is _STEP:
                name = record.name
                ignored = self._ignored_cache.get(name)
                if ignored is None:
                    ignored = self._is_ignored(name)
                if not ignored and (not self.filters or self.filter(record)):
                    # A step of the trail, not an event; not another thread's or process's
                    # record (a queue's): add_step_record checks, inline.
                    add_step_record(record)
            return False
        if _guard.inside_library():
            return False
        if self._is_ignored(record.name) or not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception as error:
            _guard.internal_error(error)

    def _emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
        carried = carried_of(record)
        if carried is None and not record.exc_info and forwarded(record):
            # Queued by a producer without posthog-errors: its traceback is only text.
            msg = record.msg
            if isinstance(msg, str) and not record_was_sent(record):
                carried = from_traceback_text(msg)
        if carried is not None:
            # Made elsewhere, through a queue: sent as its producer would have, in an empty
            # context (none of this thread's person, steps or context tags).
            contextvars.Context().run(self._emit_carried, record, carried, extras)
            return
        if isinstance(record.msg, dict):
            view = read_event_dict(record.msg)
            extras.update(view.properties)
            exc = view.exception
            message, template = view.message or "", view.template or ""
            has_args = bool(record.msg.get("positional_args"))
            distinct_id, session_id = view.distinct_id, view.session_id
        else:
            exc = record.exc_info[1] if record.exc_info else None
            message = _message(record, self.reporter.options.max_value_length)
            template = "" if exc is not None else _template(record, message)
            has_args = bool(record.args)
            distinct_id, session_id = None, None
        distinct_id = extras.pop("distinct_id", distinct_id)
        session_id = extras.pop("session_id", session_id)
        properties = {"logger": record.name, **extras}
        level = posthog_level(record.levelno)
        if exc is not None:
            if message:
                properties.setdefault("log_message", message)
            # Reported (or deduplicated) here: a QueueListener further on must not send
            # this record again as a message.
            mark_record_sent(record)
            event_uuid = self.reporter.capture(
                exc,
                level=level,
                handled=True,
                mechanism="logger",
                source="python.logging",
                distinct_id=distinct_id,
                session_id=session_id,
                properties=properties,
            )
            if event_uuid:  # PostHog Logs' record of it points at the event (``_logs``)
                record.__dict__[EVENT_UUID_ATTR] = event_uuid
        elif self.capture_messages and not was_sent_by_structlog(record, message):
            mark_record_sent(record)
            frames, omitted = call_site_frames(self.reporter.options.max_frames)
            grouping = fingerprint(record.name, template) if has_args else None
            event_fingerprint = (
                _extra_fingerprint(extras) or grouping or fingerprint(record.name, template)
            )
            event_uuid = self.reporter.capture_message(
                message,
                fingerprint=event_fingerprint,
                rate_key=message_rate_key(record.name, record, frames, grouping, event_fingerprint),
                frames=frames,
                frames_omitted=omitted,
                level=level,
                distinct_id=distinct_id,
                session_id=session_id,
                properties=properties,
            )
            if event_uuid:
                record.__dict__[EVENT_UUID_ATTR] = event_uuid

    def _emit_carried(
        self, record: logging.LogRecord, carried: Carried, extras: dict[str, Any]
    ) -> None:
        if record_was_sent(record):
            return
        mark_record_sent(record)
        distinct_id = extras.pop("distinct_id", None) or carried.distinct_id
        session_id = extras.pop("session_id", None) or carried.session_id
        properties = {**carried.properties, "logger": record.name, **extras}
        if carried.steps:
            properties.setdefault("$exception_steps", carried.steps)
        level = posthog_level(record.levelno)
        if carried.exceptions:
            if carried.message:
                properties.setdefault("log_message", carried.message)
            entries = _queue_logging.exception_snapshots(carried)
            root = entries[0]
            site = root.frames[-1] if root.frames else None
            rate_key = (root.type_name, site[0].co_filename, site[1]) if site else root.type_name
            fields = EventFields(
                level, True, "logger", "python.logging", distinct_id, session_id, properties, None
            )
            reporter = self.reporter
            reporter._guarded(reporter._capture_entries, entries, fields, rate_key)
        elif self.capture_messages:
            frames = _queue_logging.frame_refs(carried.frames)
            template = carried.template
            grouping = fingerprint(record.name, template) if carried.has_args else None
            event_fingerprint = (
                _extra_fingerprint(extras) or grouping or fingerprint(record.name, template)
            )
            self.reporter.capture_message(
                carried.message,
                fingerprint=event_fingerprint,
                rate_key=message_rate_key(record.name, record, frames, grouping, event_fingerprint),
                frames=frames,
                level=level,
                distinct_id=distinct_id,
                session_id=session_id,
                properties=properties,
            )

    def _is_ignored(self, name: str) -> bool:
        ignored = self._ignored_cache.get(name)
        if ignored is None:
            ignored = any(_logger_matches(name, p) for p in self.ignore_loggers)
            if len(self._ignored_cache) < 4096:
                self._ignored_cache[name] = ignored
        return ignored

    def flush(self) -> None:
        """Does not wait for delivery (``logging.shutdown`` calls this at exit, and the
        library's own exit flush already sends what is queued, bounded)."""


def _extra_fingerprint(extras: dict[str, Any]) -> str | None:
    value = extras.get("$exception_fingerprint")
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _message(record: logging.LogRecord, max_length: int) -> str:
    """The record's message, at a cost that does not grow with the size of its arguments.

    ``logger.error("response: %s", body)`` with a 50 MB ``body``: the worker keeps only the
    first ``max_length`` characters, so string arguments are cut first (to just over that,
    and over ``TEXT_HEAD``, so the value is still marked cut and the head the doors compare
    is intact). Only for a plain LogRecord's ``%`` formatting of a ``str`` template; other
    records are formatted as they say. (A ``%r`` of a cut string may quote it differently,
    and a width over the cut pads it: both only with arguments of more than 8 KB.)
    """
    msg, args = record.msg, record.args
    keep = max(max_length, TEXT_HEAD) + 1
    try:
        cut = None
        if args and type(msg) is str and type(record).getMessage is _GET_MESSAGE:
            cut = _cut_arguments(args, keep)
        if cut is None:
            return record.getMessage()
        # Fails exactly when the whole arguments would: cut strings are still strings, and
        # longer than any %c takes.
        formatted: str = msg % cut
        return formatted
    except Exception:
        # ``logger.error("x %s %s", 1)``: the record is still worth reporting.
        STATS.add("invalid_input")
        text = msg if isinstance(msg, str) else str(msg)
        if len(text) > keep:
            text = text[:keep]
        return f"{text} (bad logging arguments: {_BAD_ARGUMENTS_REPR.repr(args)})"


_GET_MESSAGE = logging.LogRecord.getMessage

# Arguments that did not fit their template, shown bounded (a 50 MB argument included).
_BAD_ARGUMENTS_REPR = reprlib.Repr()
_BAD_ARGUMENTS_REPR.maxstring = _BAD_ARGUMENTS_REPR.maxother = 1024
_BAD_ARGUMENTS_REPR.maxtuple = _BAD_ARGUMENTS_REPR.maxdict = 20


def _cut_arguments(args: Any, length: int) -> Any:
    """``args`` with every ``str`` longer than ``length`` cut to it; None if none is."""
    if type(args) is tuple:
        if not any(type(a) is str and len(a) > length for a in args):
            return None
        return tuple(a[:length] if type(a) is str and len(a) > length else a for a in args)
    if type(args) is dict:  # logger.error("%(body)s", {"body": ...})
        if not any(type(a) is str and len(a) > length for a in args.values()):
            return None
        return {k: a[:length] if type(a) is str and len(a) > length else a for k, a in args.items()}
    return None


def _template(record: logging.LogRecord, message: str) -> str:
    msg = record.msg
    if isinstance(msg, str):
        return msg
    if not record.args and type(record).getMessage is _GET_MESSAGE:
        return message  # already str(msg): a large __str__ runs once
    return str(msg)


def _logger_matches(name: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern or name.startswith(pattern + ".")


def _logger_patterns(patterns: list[Any]) -> list[str]:
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(
                f"ignore_loggers takes logger names ('myapp.noisy', or 'prefix*'), got {pattern!r}"
            )
    return patterns


def _boolean(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} takes a bool (or 'true'/'false' in config files), got {value!r}")


def _imported(value: Any, name: str) -> Any:
    """A dotted path (``"myapp.analytics.client"``) from a config file, imported now."""
    if not isinstance(value, str):
        return value
    module_name, _, attribute = value.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{name}={value!r} is not an importable object ('package.module.attribute'): {error}"
        ) from error


def _exception_types(
    value: Iterable[type[BaseException] | str] | str,
) -> list[type[BaseException]]:
    items = [value] if isinstance(value, str) else list(value)
    types: list[type[BaseException]] = []
    for item in items:
        if isinstance(item, str):
            item = _imported(item if "." in item else f"builtins.{item}", "ignore")
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"ignore takes exception classes or their dotted names, got {item!r}")
        types.append(item)
    return types
