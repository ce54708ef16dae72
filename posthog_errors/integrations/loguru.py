"""``PostHogSink``: a loguru sink that sends failures to PostHog.

loguru does not go through :mod:`logging`, so neither ``PostHogHandler`` nor ``install()``'s
logging hook sees its records: the sink is loguru's door, added with ``logger.add(...)``.
It reads what loguru puts in the record (the level, the exception, ``extra`` from
``bind()``/``contextualize()``), never changes it, and never raises into loguru.

**The template.** loguru formats the message before any sink runs (``"order {} failed"``
with ``7`` arrives as ``"order 7 failed"``) and keeps no unformatted template in the record.
A sink that is called synchronously (the default, ``enqueue=False``) runs inside loguru's
``Logger._log``, whose frame still holds the template and the arguments: the sink reads
them there, only after checking that the frame's record is the one it was given. Then one
template from one logger is one issue, whatever its arguments, as for the other doors.
Called from loguru's writer thread (``enqueue=True``), there is no such frame: a message is
then grouped by its call site (logger, function and line), and has that one frame as its
stack.

**One failure, one event.** An exception is captured as the object loguru was given, so
its dedupe mark makes ``logger.exception(...)`` followed by a re-raise that reaches
``sys.excepthook`` one event. A stdlib record forwarded to loguru (loguru's documented
``InterceptHandler``) is marked sent, as the logging doors mark it, so the record is one
event and one step whichever door sees it first.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import re
import sys
import threading
from collections.abc import Callable, Hashable, Iterable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

try:
    import loguru as _loguru
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "posthog_errors.loguru needs loguru: pip install 'posthog-errors[loguru]'"
    ) from error

from posthog_errors import _guard, _logs, _steps
from posthog_errors._conform import warn_once
from posthog_errors._levels import LevelAllowList, posthog_level
from posthog_errors._log_message import (
    ISSUE_NAME_BYTES,
    fingerprint,
    mark_record_sent,
    record_was_sent,
)
from posthog_errors._reporter import BeforeSend, DoorReporter, Reporter
from posthog_errors._snapshot import FrameRef, frames_from_stack

# The handler's logger filter, shared: the same defaults (the posthog client, its HTTP stack
# and this library), the same patterns ("name" and its dotted children, "prefix*").
from posthog_errors.handler import DEFAULT_IGNORED_LOGGERS, _logger_matches, _logger_patterns

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["PostHogSink", "install_integration"]

_PLAIN = (str, int, float, bool)
# The record that a PostHogSink last sent as a message, and last kept as a step, in this
# context: loguru hands every sink the same record dict in one call, so install()'s sink and
# one the app added itself send it once (an exception is sent once by its own mark). Known
# by its id and its time, not kept: a later record at the same address has a later time
# (loguru's clock has microseconds; no log call through a sink is that quick).
_Seen = tuple[int, datetime.datetime]
_sent_as_event: contextvars.ContextVar[_Seen | None] = contextvars.ContextVar(
    "posthog_errors_loguru_event", default=None
)
_sent_as_log: contextvars.ContextVar[_Seen | None] = contextvars.ContextVar(
    "posthog_errors_loguru_log", default=None
)
_kept_as_step: contextvars.ContextVar[_Seen | None] = contextvars.ContextVar(
    "posthog_errors_loguru_step", default=None
)
# Keys of ``extra`` that are the event's person, not properties.
_ID_KEYS = frozenset({"distinct_id", "session_id"})
# Frames between the app's logging call and the sink: loguru's own, and those of the stdlib
# logging (and structlog, sentry-sdk) that a record forwarded to loguru went through.
_SKIPPED_PACKAGES = frozenset({"loguru", "logging", "structlog", "sentry_sdk"})
# How many frames above the sink loguru's ``Logger._log`` may be (it is 3: CallableSink.write,
# Handler.emit, Logger._log), with room for a user's wrapper around the sink; and how many
# above that a forwarding stdlib ``Handler.handle`` may be.
_LOG_FRAME_DEPTH = 12
_HANDLE_FRAME_DEPTH = 8


def _function_code(owner: object, name: str) -> CodeType | None:
    function = getattr(owner, name, None)
    code = getattr(function, "__code__", None)
    return code if isinstance(code, CodeType) else None


try:  # loguru's private layout: without it, messages are grouped by call site
    from loguru import _logger as _loguru_logger_module

    _LOG_CODE = _function_code(_loguru_logger_module.Logger, "_log")
except Exception:  # pragma: no cover - another loguru than the ones tested
    _LOG_CODE = None
_HANDLE_CODE = _function_code(logging.Handler, "handle")


class PostHogSink:
    """A loguru sink: ``loguru.logger.add(PostHogSink(client))``.

    Records with an exception (``logger.exception(...)``, ``logger.opt(exception=...)``,
    ``@logger.catch``) become events of that exception; records without one become
    message-only events unless ``capture_messages`` is false, grouped by the logger (the
    module's name) and the unformatted template. ``levels`` is the same allow list as
    :class:`posthog_errors.PostHogHandler`'s, read against loguru's level numbers (TRACE 5,
    DEBUG 10, INFO 20, SUCCESS 25, WARNING 30, ERROR 40, CRITICAL 50): a standard name
    covers its range, as for the handler (``"info"`` is 20 to 29, SUCCESS included), and a
    loguru-only name (``"SUCCESS"``, ``"TRACE"``, a level made with ``logger.level(...)``
    before the sink) or a number means exactly that level. ``ignore_loggers`` is the
    handler's logger filter, on the record's ``name``.

    ``distinct_id`` and ``session_id`` are read from the record's ``extra``
    (``logger.bind(...)``, ``logger.contextualize(...)``), then from the context; the other
    ``extra`` values are sent as properties. Records below ``levels`` at ``steps_levels``
    (INFO, SUCCESS and WARNING) become exception steps of the current context, sent with its
    next ``$exception``; ``steps=False`` turns it off.

    Payload options (``before_send``, ``ignore``, ``in_app_include``, ``in_app_exclude``,
    ``project_root``, ``redact_secrets``, ``redact_keys``, ``redact_patterns``,
    ``capture_code_variables``, ``release``, ``environment``, ``service``): given none, and
    no ``reporter``, events use the options :func:`posthog_errors.install` was given, sent
    to ``client`` when one is given; given any, the sink uses its own options only.

    Add it with ``enqueue=False`` (loguru's default): the sink only snapshots and queues,
    delivery happens on the library's own thread, so it never blocks the app anyway; and
    only there does it see the caller's context (steps, template, stack).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        levels: str | int | Iterable[str | int] = ("error", "critical"),
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
        self.levels = LevelAllowList(_loguru_levels(levels))
        # loguru's own level names first ("SUCCESS", "TRACE" are loguru's, not logging's).
        named = _loguru_level_number(send_logs) if isinstance(send_logs, str) else None
        logs_threshold = _logs.logs_level(send_logs if named is None else named)
        if logs_threshold is None and before_send_log is not None:
            raise ValueError("before_send_log needs send_logs (a level): no log is sent without")
        # Records below the allow list at these levels become exception steps (``_steps``).
        self.steps = LevelAllowList(_loguru_levels(steps_levels)) if steps else None
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
        # The reporter is resolved per log on the worker (install()'s may come later).
        self.logs = (
            None
            if logs_threshold is None
            else _logs.LogsOptions(logs_threshold, self._reporter, before_send_log)
        )

    @property
    def lowest(self) -> int:
        """The lowest level number the sink uses (events or steps): the ``level`` to add it
        with, so that loguru formats no record for it that it would drop."""
        lowest = self.levels.lowest
        if self.steps is not None:
            lowest = min(lowest, self.steps.lowest)
        if self.logs is not None:
            lowest = min(lowest, self.logs.level)
        return lowest

    @property
    def reporter(self) -> Reporter:
        """Where events go: the sink's own options if it was given any (or a ``reporter``),
        else ``install()``'s, sent to this sink's client if it has one."""
        return self._reporter.get()

    def __repr__(self) -> str:  # loguru names the handler by it
        return "PostHogSink()"

    def __call__(self, message: Message) -> None:
        if _guard.inside_library():
            return
        try:
            record: Record | None = getattr(message, "record", None)
            if isinstance(record, dict):
                caller = sys._getframe(1)
                event_uuid = self._process(record, caller)
                if self.logs is not None:
                    self._send_log(record, caller, event_uuid)
        except Exception as error:
            _guard.internal_error(error)

    def _send_log(self, record: Record, caller: FrameType | None, event_uuid: str | None) -> None:
        """The record as a PostHog Logs record, at or above ``send_logs``: loguru's
        ``extra`` as attributes. Once: a stdlib record forwarded to loguru was sent by the
        logging doors already, and another PostHogSink may have had this one."""
        logs = self.logs
        assert logs is not None
        levelno = record["level"].no
        if levelno < logs.level:
            return
        name = record["name"]
        logger_name = name if isinstance(name, str) and name else "loguru"
        if self._is_ignored(logger_name):
            return
        seen = (id(record), record["time"])
        if _sent_as_log.get() == seen:
            return
        _sent_as_log.set(seen)
        on_caller = record["thread"].id == threading.get_ident()
        forwarded = _forwarded_record(_log_frame(caller)) if on_caller else None
        if forwarded is not None and _logs.LOGGED_ATTR in forwarded.__dict__:
            return  # install()'s logging hook (or a PostHogHandler) sent it
        extra = record["extra"]
        exception = record["exception"]
        attributes: dict[str, Any] = {
            k: v for k, v in extra.items() if isinstance(k, str) and k not in _ID_KEYS
        }
        if exception is not None and isinstance(exception.value, BaseException):
            attributes.setdefault("exception.type", type(exception.value).__name__)
        _logs.submit_event(
            logs,
            levelno,
            logger_name,
            record["message"],
            attributes,
            event_uuid=event_uuid,
            distinct_id=extra.get("distinct_id"),
            session_id=extra.get("session_id"),
        )

    def _process(self, record: Record, caller: FrameType | None) -> str | None:
        """The record's event uuid when it became an ``$exception`` event."""
        levelno = record["level"].no
        allowed = self.levels.allows(levelno)
        steps = self.steps
        if not allowed and (steps is None or not steps.allows(levelno)):
            return None
        name = record["name"]
        logger_name = name if isinstance(name, str) and name else "loguru"
        if self._is_ignored(logger_name):
            return None
        # Synchronous (enqueue=False): the sink runs on the thread that logged, inside
        # loguru's Logger._log. On loguru's writer thread the caller's context is gone.
        on_caller = record["thread"].id == threading.get_ident()
        log_frame = _log_frame(caller) if on_caller else None
        if not on_caller:
            warn_once(
                "loguru enqueue",
                "PostHogSink runs on loguru's writer thread (added with enqueue=True): "
                "records below the allow list are not kept as steps, and messages are "
                "grouped by call site. Add it with enqueue=False: it never blocks anyway.",
            )
        # Another PostHogSink (install()'s, and the app's own) may have had this record.
        seen = (id(record), record["time"])
        if not allowed:  # a step of the context's trail, not an event
            if on_caller and _kept_as_step.get() != seen:
                _kept_as_step.set(seen)
                self._add_step(record, logger_name, levelno, _forwarded_record(log_frame))
            return None
        forwarded = _forwarded_record(log_frame)
        extra = record["extra"]
        exception = record["exception"]
        value = None if exception is None else exception.value
        if not isinstance(value, BaseException):
            value = None
        distinct_id = extra.get("distinct_id")
        session_id = extra.get("session_id")
        properties: dict[str, Any] = {
            "logger": logger_name,
            **{k: v for k, v in extra.items() if isinstance(k, str) and k not in _ID_KEYS},
        }
        level = posthog_level(levelno)
        text = record["message"]
        reporter = self.reporter
        if value is not None:
            if text:
                properties.setdefault("log_message", text)
            return reporter.capture(
                value,
                level=level,
                handled=True,
                mechanism="logger",
                source="loguru.sink",
                distinct_id=distinct_id,
                session_id=session_id,
                properties=properties,
            )
        if not self.capture_messages or _sent_as_event.get() == seen:
            return None  # (an exception is sent once by its own mark)
        _sent_as_event.set(seen)
        if forwarded is not None:
            if record_was_sent(forwarded):
                return None  # install()'s logging hook (or a PostHogHandler) already sent it
            mark_record_sent(forwarded)  # and a PostHogHandler after this one skips it
        max_frames = reporter.options.max_frames
        site = record["file"].path, record["line"]
        template = _template(log_frame, record, text)
        if template is not None:
            group = fingerprint(logger_name, template[0])
            frames, omitted = frames_from_stack(log_frame, max_frames, _is_skipped)
            grouping: str | None = group if template[1] else None
        else:
            # No template: one group per call site, named by the first message seen.
            group = fingerprint(logger_name, f"{record['function']}:{record['line']}")
            group.template_head = text[: 2 * ISSUE_NAME_BYTES]
            frames, omitted = (_site_frame(record, logger_name),), 0
            grouping = group
        manual = extra.get("$exception_fingerprint")
        rate_key: Hashable = (logger_name, *site, grouping)
        return reporter.capture_message(
            text,
            fingerprint=manual if isinstance(manual, str) else group,
            rate_key=rate_key,
            frames=frames,
            frames_omitted=omitted,
            level=level,
            mechanism="logger",
            source="loguru.sink",
            distinct_id=distinct_id,
            session_id=session_id,
            properties=properties,
        )

    def _add_step(
        self,
        record: Record,
        logger_name: str,
        levelno: int,
        forwarded: logging.LogRecord | None,
    ) -> None:
        if forwarded is not None and _steps.holds_record(forwarded):
            return  # install()'s logging hook kept the stdlib record already
        properties = {
            key: value
            for key, value in record["extra"].items()
            if isinstance(key, str)
            and key != "message"
            and not key.startswith("_")
            and isinstance(value, _PLAIN)
        }
        properties["level"] = posthog_level(levelno)
        properties["logger"] = logger_name
        _steps.add_step(record["message"], **properties)

    def _is_ignored(self, name: str) -> bool:
        ignored = self._ignored_cache.get(name)
        if ignored is None:
            ignored = any(_logger_matches(name, p) for p in self.ignore_loggers)
            if len(self._ignored_cache) < 4096:
                self._ignored_cache[name] = ignored
        return ignored


def install_integration(
    reporter: Reporter,
    *,
    levels: str | int | Iterable[str | int] = ("error", "critical"),
    capture_messages: bool = True,
    steps: bool = True,
    steps_levels: str | int | Iterable[str | int] = ("info", "warning"),
    send_logs: str | int | None = None,
    before_send_log: _logs.BeforeSendLog | None = None,
) -> Callable[[], None]:
    """Add a :class:`PostHogSink` sending to ``reporter`` to ``loguru.logger``, for
    ``install()``; returns the undo, which removes it (and is a no-op when the app already
    removed it, as ``logger.remove()`` with no argument does).

    The sink is added at its lowest level, so records it would drop cost loguru nothing;
    with ``format="{message}"`` and without ``backtrace``/``diagnose``, because loguru
    formats every record (and its traceback) for every sink, and this one reads the record
    only."""
    sink = PostHogSink(
        levels=levels,
        capture_messages=capture_messages,
        steps=steps,
        steps_levels=steps_levels,
        reporter=reporter,
        send_logs=send_logs,
        before_send_log=before_send_log,
    )
    logger = _loguru.logger
    handler_id = logger.add(
        sink,
        level=sink.lowest,
        format="{message}",
        backtrace=False,
        diagnose=False,
        enqueue=False,
    )

    def remove() -> None:
        with contextlib.suppress(ValueError):  # already removed by the app
            logger.remove(handler_id)

    return remove


def _log_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost loguru ``Logger._log`` frame above the sink's caller: the one that
    made the record, when the sink runs inside it (code identity only: cheap enough for
    every step)."""
    if _LOG_CODE is None:
        return None
    for _ in range(_LOG_FRAME_DEPTH):
        if frame is None:
            return None
        if frame.f_code is _LOG_CODE:
            return frame
        frame = frame.f_back
    return None


def _template(log_frame: FrameType | None, record: Record, text: str) -> tuple[str, bool] | None:
    """The unformatted template of ``record``, and whether it had arguments; None without
    the frame that made it."""
    if log_frame is None:
        return None
    local = log_frame.f_locals
    if local.get("log_record") is not record:
        return None  # an outer log call's frame (a sink that logs), not this record's
    message, args, kwargs = local.get("message"), local.get("args"), local.get("kwargs")
    has_args = bool(args) or bool(kwargs)
    if isinstance(message, str):
        return message, has_args
    return text, False  # logger.info(obj): str(obj), formatted with nothing


def _forwarded_record(log_frame: FrameType | None) -> logging.LogRecord | None:
    """The stdlib record a logging handler (loguru's ``InterceptHandler``) is forwarding to
    loguru, if this log call comes from one."""
    if log_frame is None or _HANDLE_CODE is None:
        return None
    frame = log_frame.f_back
    for _ in range(_HANDLE_FRAME_DEPTH):
        if frame is None:
            return None
        if frame.f_code is _HANDLE_CODE:
            record = frame.f_locals.get("record")
            return record if isinstance(record, logging.LogRecord) else None
        frame = frame.f_back
    return None


def _is_skipped(module: str | None) -> bool:
    return module is not None and module.partition(".")[0] in _SKIPPED_PACKAGES


# A code object per call site, for the one frame of a message without its stack: the frame
# builder reads the file name, function and source lines from it. The path is one of its
# constants, because code objects compare (and are cached) without their file name.
_SITE_TEMPLATE = compile("pass", "<loguru>", "exec")
_site_codes: dict[tuple[str, str], CodeType] = {}


def _site_frame(record: Record, logger_name: str) -> FrameRef:
    path, function = record["file"].path, record["function"]
    code = _site_codes.get((path, function))
    if code is None:
        code = _SITE_TEMPLATE.replace(
            co_filename=path, co_name=function, co_consts=(*_SITE_TEMPLATE.co_consts, path)
        )
        if len(_site_codes) < 1024:
            _site_codes[(path, function)] = code
    return code, record["line"], logger_name


def _loguru_levels(levels: str | int | Iterable[str | int]) -> list[str | int]:
    """``levels`` with loguru-only level names (SUCCESS, TRACE, custom) as their numbers:
    the allow list knows the stdlib's names only."""
    if isinstance(levels, str):
        items: list[Any] = [part for part in levels.split(",") if part.strip()] or [levels]
    elif isinstance(levels, int):
        items = [levels]
    else:
        try:
            items = list(levels)
        except TypeError:
            raise ValueError(f"unknown level {levels!r} in levels") from None
    resolved: list[str | int] = []
    for item in items:
        if isinstance(item, str) and item.strip() != "*":
            try:
                LevelAllowList(item)
            except ValueError:
                number = _loguru_level_number(item.strip())
                if number is not None:
                    resolved.append(number)
                    continue
        resolved.append(item)
    return resolved


def _loguru_level_number(name: str) -> int | None:
    for candidate in (name, name.upper()):
        try:
            number = _loguru.logger.level(candidate).no
        except (ValueError, TypeError):
            continue
        if isinstance(number, int):
            return number
    return None
