"""What the logging doors share for message-only events, and for not sending one twice.

A log record without an exception still becomes an ``$exception`` event: one synthetic entry
whose stack is the logging call site, one frame (:func:`call_site`), and rate limited per
call site (so f-string messages from one line share one budget).

**Grouping.** PostHog groups it, not us: no ``$exception_fingerprint`` is sent unless the
user set one (a manual fingerprint overrides the team's grouping rules). The synthetic
entry's type carries what must tell issues apart: ``LogMessage[<digest>]``, the digest of
the logger name and the **unformatted** template (:func:`fingerprint`, the
``logger:template`` text that was the manual fingerprint before, and is still the rate
limit's key). The server hashes it with frames: under fingerprint V1 the in-app frames
(or the first frame when none is), under V2, which creates new issues, **every** frame,
framework or not. A log call's stack is whatever path reached it (another worker loop,
another route dispatcher), so the stack sent is the call site alone: the frame of the
logging call, which both versions hash the same way whatever led to it. One template from
one logger at one call site is then one issue, under V1 and V2, whatever the arguments
and the call path (line numbers never count); another template or logger is another issue.
The issue gets a readable ``$issue_name``, ``logger: template`` (:func:`issue_name`), and
the template as its ``$issue_description`` (:func:`issue_description`), not the text of
its first occurrence.

Everything here costs the caller a bounded amount, whatever the size of the message: a
huge template is hashed by its head and length, and messages are compared by their heads.

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
from collections.abc import Hashable
from typing import Any

from posthog_errors._snapshot import FrameRef, frames_from_stack

__all__ = [
    "DESCRIPTION_CHARS",
    "ISSUE_NAME_BYTES",
    "TEXT_HEAD",
    "MessageGroup",
    "call_site",
    "call_site_frames",
    "fingerprint",
    "group_digest",
    "issue_description",
    "issue_name",
    "mark_record_sent",
    "mark_structlog_message",
    "message_rate_key",
    "record_was_sent",
    "was_sent_by_structlog",
]

# Set on a LogRecord once a door sent it as a message-only event. Private by its leading
# underscore, which JSON formatters (python-json-logger) skip when they print a record's
# extra attributes, as they do posthog's own ``_posthog_log_prefix_applied``.
_RECORD_MARK = "_posthog_errors_sent"

# How much of a long text the caller's thread reads: the head of a template that is hashed
# into its fingerprint, and the head by which two messages are compared.
TEXT_HEAD = 8192
# Templates up to this length are their own fingerprint.
_VERBATIM = 200
# The server's limit for ``$issue_name``, in UTF-8 bytes; and how much of a template (and of
# a logger name) a group keeps to make it: more characters than the name can hold, so that a
# longer one is always cut, and marked.
ISSUE_NAME_BYTES = 255
_NAME_HEAD = 2 * ISSUE_NAME_BYTES
# At most this many characters of ``$issue_description`` (a template's head, marked, then
# redacted: a redaction mark may be longer than what it replaces).
DESCRIPTION_CHARS = 1024

# (id of the structlog event dict, comparable head of the formatted message) of the message
# the structlog processor just sent in this context; the stdlib handler in the same call
# skips it.
_recent_structlog_message: contextvars.ContextVar[tuple[int, tuple[bool, str]] | None] = (
    contextvars.ContextVar("posthog_errors_recent_structlog_message", default=None)
)


class MessageGroup(str):
    """The automatic grouping of a message-only event, made by :func:`fingerprint`.

    As a string, ``logger:template`` (what the rate limit keys on). The payload never sends
    it as ``$exception_fingerprint``: it types the synthetic entry with its digest
    (:func:`group_digest`) and names the issue from ``logger_name`` and ``template_head``
    (:func:`issue_name`). A plain ``str`` fingerprint on a message event is the user's (a
    record's ``extra``), and is sent.
    """

    logger_name: str
    template_head: str  # the template's first _NAME_HEAD characters
    template_length: int  # the whole template's, to mark a cut head


def fingerprint(logger_name: str, template: str) -> MessageGroup:
    """One group per (logger, unformatted template), whatever the arguments.

    A template of up to 200 characters is used verbatim. A longer one becomes its first 100
    characters and a 16-hex-digit SHA-256 digest. Up to ``TEXT_HEAD`` (8192) characters the
    digest covers the whole template; beyond that it covers the first 8192 characters and
    the length only, so a 50 MB template costs the caller what an 8 KB one does. The
    trade-off, intended: two templates of the same length that differ only after their
    first 8192 characters share a fingerprint (one issue); a different length or a
    different head gives a different fingerprint.
    """
    length = len(template)
    if length <= _VERBATIM:
        group = MessageGroup(f"{logger_name}:{template}")
    else:
        if length <= TEXT_HEAD:
            data = template.encode("utf-8", "replace")
        else:
            # Unambiguous: a template of at most TEXT_HEAD characters never hashes these
            # bytes (they start with TEXT_HEAD characters and go on).
            data = template[:TEXT_HEAD].encode("utf-8", "replace") + b"\0%d" % length
        digest = hashlib.sha256(data).hexdigest()[:16]
        group = MessageGroup(f"{logger_name}:{template[:100]}...{digest}")
    group.logger_name = logger_name
    group.template_head = template[:_NAME_HEAD]
    group.template_length = length
    return group


def group_digest(group_text: str) -> str:
    """12 hex digits of SHA-256 of a group's ``logger:template`` text (redacted, by the
    payload, when redaction is on: a digest must not let a filtered secret be guessed).
    Stable across processes and versions of Python, unlike ``hash()``."""
    return hashlib.sha256(group_text.encode("utf-8", "replace")).hexdigest()[:12]


def issue_name(logger_name: str, text: str) -> str:
    """``logger: template`` on one line (runs of whitespace made one space), from bounded
    heads of both; not yet redacted or cut to ``ISSUE_NAME_BYTES``."""
    head = text[:_NAME_HEAD] + ("..." if len(text) > _NAME_HEAD else "")
    name = f"{logger_name[:_NAME_HEAD]}: {head}" if logger_name else head
    return " ".join(name.split())


def issue_description(group: MessageGroup) -> str:
    """The template, for ``$issue_description``: what the issue is about, where PostHog's
    default would be the formatted text of its first occurrence (user data: an order ID,
    an e-mail address). Its first ``_NAME_HEAD`` characters, marked when cut; line breaks
    kept. Not yet redacted."""
    head = group.template_head
    cut = getattr(group, "template_length", len(head)) > len(head)
    return head + "..." if cut else head


def message_rate_key(
    logger_name: str,
    record: logging.LogRecord | None,
    frames: tuple[FrameRef, ...],
    template_fingerprint: str | None,
    fallback: str,
) -> Hashable:
    """What a message-only event is rate limited by: its call site.

    The site is the record's ``pathname``/``lineno`` (right through a ``QueueHandler``, and
    honouring ``stacklevel``), else, when the record has none (``logging._srcfile = None``,
    structlog's native chain), the innermost frame of ``frames``. An f-string message from
    one line then shares one budget whatever its text. ``template_fingerprint`` is given
    when the message was logged with arguments: its template is then stable, and a helper
    that logs many templates from one line keeps a budget per template. With no site at
    all, ``fallback`` (the event's fingerprint) is the key.
    """
    if record is not None and record.lineno and record.pathname != "(unknown file)":
        return (logger_name, record.pathname, record.lineno, template_fingerprint)
    if frames:
        code, lineno, _ = frames[-1]
        return (logger_name, code.co_filename, lineno, template_fingerprint)
    return fallback


def call_site(frames: tuple[FrameRef, ...]) -> tuple[FrameRef, ...]:
    """The stack a message-only event is sent with: its innermost frame, the logging call.

    Fingerprint V2 hashes every frame of the stack, in-app or not, so any frame that
    depends on how the call was reached (a worker loop, a route dispatcher, a signal
    dispatcher, the app's own helpers) would make one log template several issues. The
    logging call's own frame is the same whatever the path: it shows where the message
    was logged (file, function, line and source), and V1 (in-app frames, else the first
    one) and V2 (every frame) hash it alike. The path that led there is what is given up.
    """
    return frames[-1:]


def call_site_frames(max_frames: int) -> tuple[tuple[FrameRef, ...], int]:
    """The logging call's frame (see :func:`call_site`): the innermost of the stack
    without logging's, structlog's, sentry-sdk's or our frames. Never any omitted."""
    frames, _ = frames_from_stack(sys._getframe(1), max_frames, _is_logging_module)
    return call_site(frames), 0


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


def _comparable(message: str) -> tuple[bool, str]:
    """A message as the doors compare it: whether it is long, and its head. Bounded, and
    the same for the structlog processor's full message and the handler's, whose long
    arguments were cut (see ``handler._message``) after the head."""
    return len(message) > TEXT_HEAD, message[:TEXT_HEAD]


def mark_structlog_message(event_dict: Any, message: str) -> None:
    _recent_structlog_message.set((id(event_dict), _comparable(message)))


def was_sent_by_structlog(record: logging.LogRecord, message: str) -> bool:
    """True when the structlog processor already sent this record's message."""
    if record_was_sent(record):
        return True
    recent = _recent_structlog_message.get()
    if recent is None:
        return False
    if id(record.msg) == recent[0] or _comparable(message) == recent[1]:
        _recent_structlog_message.set(None)
        return True
    return False
