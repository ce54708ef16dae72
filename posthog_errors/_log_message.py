"""What the logging doors share for message-only events, and for not sending one twice.

A log record without an exception still becomes an ``$exception`` event: one synthetic entry
whose stack is the logging call site (logging's and structlog's own frames removed), grouped
by a fingerprint of the logger name and the unformatted template.

When structlog and the stdlib handler are both configured, one log call reaches both. An
exception is sent once anyway (its object is marked); a message is marked on its LogRecord
(which survives the copies ``structlog.stdlib.ProcessorFormatter`` and ``QueueHandler``
make), or remembered for the rest of the logging call, so the second door skips it.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import sys
from typing import Any

from posthog_errors._snapshot import FrameRef, frames_from_stack

__all__ = [
    "call_site_frames",
    "fingerprint",
    "mark_record_sent",
    "mark_structlog_message",
    "record_was_sent",
    "was_sent_by_structlog",
]

# Set on a LogRecord once a door sent it as a message-only event. Private by its leading
# underscore, which JSON formatters (python-json-logger) skip when they print a record's
# extra attributes, as they do posthog's own ``_posthog_log_prefix_applied``.
_RECORD_MARK = "_posthog_errors_sent"

# (id of the structlog event dict, formatted message) of the message the structlog
# processor just sent in this context; the stdlib handler in the same call skips it.
_recent_structlog_message: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "posthog_errors_recent_structlog_message", default=None
)


def fingerprint(logger_name: str, template: str) -> str:
    """One issue per (logger, unformatted template), whatever the arguments."""
    if len(template) <= 200:
        return f"{logger_name}:{template}"
    digest = hashlib.sha256(template.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{logger_name}:{template[:100]}...{digest}"


def call_site_frames(max_frames: int) -> tuple[tuple[FrameRef, ...], int]:
    """The stack of the logging call, without logging's, structlog's, sentry-sdk's or our
    frames."""
    return frames_from_stack(sys._getframe(1), max_frames, _is_logging_module)


# Frames between the app's logging call and a handler: logging and structlog themselves,
# and sentry-sdk's logging integration, which patches ``Logger.callHandlers``.
_LOGGING_PACKAGES = ("logging", "structlog", "sentry_sdk")


def _is_logging_module(module: str | None) -> bool:
    return module is not None and (
        module in _LOGGING_PACKAGES or module.partition(".")[0] in _LOGGING_PACKAGES
    )


def mark_record_sent(record: logging.LogRecord) -> None:
    setattr(record, _RECORD_MARK, True)


def record_was_sent(record: logging.LogRecord) -> bool:
    return getattr(record, _RECORD_MARK, False) is True


def mark_structlog_message(event_dict: Any, message: str) -> None:
    _recent_structlog_message.set((id(event_dict), message))


def was_sent_by_structlog(record: logging.LogRecord, message: str) -> bool:
    """True when the structlog processor already sent this record's message."""
    if record_was_sent(record):
        return True
    recent = _recent_structlog_message.get()
    if recent is None:
        return False
    if id(record.msg) == recent[0] or message == recent[1]:
        _recent_structlog_message.set(None)
        return True
    return False
