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

from posthog_errors import _guard
from posthog_errors._event_dict import read_event_dict
from posthog_errors._levels import LevelAllowList, posthog_level
from posthog_errors._log_message import (
    call_site_frames,
    fingerprint,
    mark_record_sent,
    mark_structlog_message,
    message_rate_key,
    record_was_sent,
)
from posthog_errors._reporter import BeforeSend, Reporter

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
    :class:`posthog_errors.PostHogHandler`'s. A message is rate limited by its call site
    (and its template, with ``positional_args``), so f-string events from one line share
    one budget."""

    def __init__(
        self,
        client: Any = None,
        *,
        levels: str | int | Iterable[str | int] = ("error", "fatal"),
        capture_messages: bool = True,
        before_send: BeforeSend | None = None,
        ignore: Iterable[type[BaseException]] = (),
        in_app_include: Iterable[str] = (),
        in_app_exclude: Iterable[str] = (),
        project_root: str | None = None,
        redact_secrets: bool = True,
        redact_keys: Iterable[str] = (),
        redact_patterns: Iterable[str | re.Pattern[str]] = (),
        reporter: Reporter | None = None,
    ) -> None:
        self.levels = LevelAllowList(levels)
        self.capture_messages = bool(capture_messages)
        self.reporter = reporter or Reporter(
            client,
            before_send=before_send,
            ignore=ignore,
            in_app_include=in_app_include,
            in_app_exclude=in_app_exclude,
            project_root=project_root,
            redact_secrets=bool(redact_secrets),
            redact_keys=redact_keys,
            redact_patterns=redact_patterns,
        )
        self._warned_misplaced = False  # configuration feedback, not per-call state

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not _guard.inside_library():
            try:
                self._process(logger, method_name, event_dict)
            except Exception as error:
                _guard.internal_error(error)
        return event_dict

    def _process(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> None:
        levelno = _level_number(event_dict.get("level"), method_name)
        if not self.levels.allows(levelno):
            return
        view = read_event_dict(event_dict)
        record = event_dict.get("_record")  # set in ProcessorFormatter.foreign_pre_chain
        if view.exception is None and "exc_info" not in event_dict:
            self._warn_if_misplaced(event_dict)
        logger_name = _logger_name(logger, event_dict)
        properties: dict[str, Any] = {"logger": logger_name, **view.properties}
        level = posthog_level(levelno)
        if view.exception is not None:
            if view.message:
                properties.setdefault("log_message", view.message)
            self.reporter.capture(
                view.exception,
                level=level,
                handled=True,
                mechanism="structlog",
                source="python.structlog",
                distinct_id=view.distinct_id,
                session_id=view.session_id,
                properties=properties,
            )
            return
        if not self.capture_messages or view.message is None:
            return
        if isinstance(record, logging.LogRecord):
            if record_was_sent(record):
                return  # the stdlib handler already sent this record
            mark_record_sent(record)
        mark_structlog_message(event_dict, view.message)
        frames, omitted = call_site_frames(self.reporter.options.max_frames)
        event_fingerprint = fingerprint(logger_name, view.template or view.message)
        grouping = event_fingerprint if event_dict.get("positional_args") else None
        site_record = record if isinstance(record, logging.LogRecord) else None
        self.reporter.capture_message(
            view.message,
            fingerprint=event_fingerprint,
            rate_key=message_rate_key(
                logger_name, site_record, frames, grouping, event_fingerprint
            ),
            frames=frames,
            frames_omitted=omitted,
            level=level,
            mechanism="structlog",
            source="python.structlog",
            distinct_id=view.distinct_id,
            session_id=view.session_id,
            properties=properties,
        )

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


def _level_number(level: object, method_name: str) -> int:
    if isinstance(level, int):
        return level
    name = level if isinstance(level, str) else method_name
    number = _METHOD_LEVELS.get(str(name).lower())
    if number is None:
        registered = logging.getLevelName(str(name).upper())
        number = registered if isinstance(registered, int) else logging.INFO
    return number


def _logger_name(logger: Any, event_dict: MutableMapping[str, Any]) -> str:
    for candidate in (event_dict.get("logger"), event_dict.get("logger_name")):
        if isinstance(candidate, str) and candidate:
            return candidate
    name = getattr(logger, "name", None)
    return name if isinstance(name, str) and name else "structlog"
