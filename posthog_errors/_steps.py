"""Exception steps: what the app logged before it failed, sent as ``$exception_steps``.

PostHog shows ``$exception_steps`` as a timeline on the issue (exception-event.md): a list
of ``{"$message", "$timestamp", ...}`` objects, oldest first. Here they come from log
records below the allow list (INFO and WARNING by default), from structlog events, and from
:func:`add_step`.

**Per context.** The trail lives in a :class:`contextvars.ContextVar`, so a thread, an
asyncio task and a web request each see only their own steps. It is a linked list of
immutable nodes, newest first: adding a step makes a new head and sets the variable. A
task created inside a request copies the request's context, so it starts from the
request's steps and its own additions stay its own; the request never sees them. The
middlewares start each request with an empty trail (:func:`start_trail`).

**Cheap on the caller's thread.** A step from logging keeps the :class:`logging.LogRecord`
itself: no formatting, no copying, one small object and one ``ContextVar.set`` (the cost
is in docs/performance.md). Everything else happens on the worker, when an event takes
the trail: messages formatted and cut, the record's plain extras kept, all of it redacted
with the event's properties.

**Bounded.** A trail is two segments of at most ``MAX_STEPS`` nodes: the newest one, and
the full one before it. When the newest is full it becomes the older one (the one before
is dropped whole, by this context) and a new segment starts: no copying, ever. So a
context holds at most ``2 * MAX_STEPS`` nodes. An event sends the newest ``MAX_STEPS``
steps that fit in ``MAX_STEP_BYTES`` of JSON (posthog-js's 32,768 bytes), oldest dropped
first, and never replaces a ``$exception_steps`` the caller set.

**Per thread, too.** A trail belongs to the thread that wrote it: the newest node holds
that thread's ident, and a trail read on another thread is empty there. From Python 3.14,
with ``sys.flags.thread_inherit_context``, a new thread starts with a copy of its
starter's context, trail included: without this, one unit of work's steps would show on
every failure of a thread it started (an executor's workers, for good). The IDs and bound
properties do follow the thread; the steps start empty, as they do on every other Python
and without the flag. :func:`adopt` (``carry_context()``) is the one way to take a trail
to another thread.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from posthog_errors import _guard
from posthog_errors._levels import posthog_level

__all__ = [
    "HEAD",
    "MAX_STEPS",
    "MAX_STEP_BYTES",
    "add_record",
    "add_step",
    "adopt",
    "current",
    "end_trail",
    "nodes",
    "render",
    "start_trail",
    "take_over",
]

MAX_STEPS = 100
MAX_STEP_BYTES = 32_768
MAX_MESSAGE_LENGTH = 1_024  # characters of one step's message

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "_posthog_errors_sent",
}
_PLAIN = (str, int, float, bool)


# A node: (item, the next older node of its segment or None, its depth in the segment,
# the ident of the thread that made it). Plain tuples: a node is made for every step, on
# the caller's thread. Only the head's thread counts (see "Per thread" above); a node of
# the same thread reuses the head's ident object, so a step allocates no int.
Node = tuple[Any, Any, int, int]
# What a snapshot carries: (newest segment's head, older segment's head or None).
Trail = tuple[Node, "Node | None"]

_HEAD: contextvars.ContextVar[Node | None] = contextvars.ContextVar(
    "posthog_errors_steps", default=None
)
# The newest segment, for install()'s logging hook, which adds a step inline when the
# segment has room (the hot path; the rest goes through add_record).
HEAD = _HEAD
_OLDER: contextvars.ContextVar[Node | None] = contextvars.ContextVar(
    "posthog_errors_older_steps", default=None
)
_ident = threading.get_ident


def add_record(record: logging.LogRecord) -> None:
    """Add a log record to the current context's trail (the logging doors' hot path)."""
    head = _HEAD.get()
    if head is not None and head[0] is record:
        return  # install()'s hook and an explicit PostHogHandler both saw it
    _push(record, head)


def adopt() -> None:
    """Make the current context's trail this thread's (``carry_context()``, which runs a
    function in a copy of its caller's context, steps included, on purpose)."""
    head = _HEAD.get()
    if head is not None and head[3] != _ident():
        _HEAD.set((head[0], head[1], head[2], _ident()))


def take_over(trail: Trail | None) -> None:
    """Make ``trail`` this context's, owned by this thread: a unit of work that ran part of
    its code on another thread (a sync endpoint in a thread pool) continues from the trail
    that thread left."""
    if trail is None:
        _HEAD.set(None)
        _OLDER.set(None)
        return
    head = trail[0]
    _HEAD.set((head[0], head[1], head[2], _ident()))
    _OLDER.set(trail[1])


def add_step(message: object, **properties: Any) -> None:
    """Add a step to the current context's trail: ``message`` and any properties, shown on
    the timeline of the next ``$exception`` captured in this context (a request, a task,
    a thread). Properties are redacted like every other property when an event sends
    them. Never raises."""
    try:
        _push(_step(message, properties))
    except Exception as error:
        _guard.internal_error(error)


def add_event_dict(event_dict: Mapping[str, Any], level: str, logger_name: str) -> None:
    """Add a structlog event (below the allow list) to the trail, its plain values copied."""
    properties = {
        key: value
        for key, value in event_dict.items()
        if key != "event" and not key.startswith("_") and isinstance(value, _PLAIN)
    }
    properties["level"] = level
    properties["logger"] = logger_name
    message = event_dict.get("event")
    _push(_step("" if message is None else message, properties))


def _step(message: object, properties: dict[str, Any]) -> dict[str, Any]:
    try:
        text = message if isinstance(message, str) else str(message)
    except Exception:
        text = f"<unprintable {type(message).__name__}>"
    return {**properties, "$message": text[:MAX_MESSAGE_LENGTH], "$timestamp": time.time()}


def _push(item: Any, head: Node | None = None) -> None:
    if head is None:
        head = _HEAD.get()
    if head is None:
        _HEAD.set((item, None, 1, _ident()))
    elif head[3] != _ident():
        # Another thread's trail, inherited with the context: this thread starts its own.
        _OLDER.set(None)
        _HEAD.set((item, None, 1, _ident()))
    elif head[2] < MAX_STEPS:
        _HEAD.set((item, head, head[2] + 1, head[3]))
    else:
        _OLDER.set(head)
        _HEAD.set((item, None, 1, head[3]))


def current() -> Trail | None:
    """The current context's trail, for a snapshot to carry (None: no steps, or only
    another thread's)."""
    head = _HEAD.get()
    return None if head is None or head[3] != _ident() else (head, _OLDER.get())


def start_trail() -> tuple[contextvars.Token[Node | None], contextvars.Token[Node | None]]:
    """An empty trail for what runs from now in this context (a request); give the tokens
    to :func:`end_trail` when it is over."""
    return _HEAD.set(None), _OLDER.set(None)


def end_trail(
    tokens: tuple[contextvars.Token[Node | None], contextvars.Token[Node | None]],
) -> None:
    try:
        _HEAD.reset(tokens[0])
        _OLDER.reset(tokens[1])
    except ValueError:  # reset from another context: leave that context's trail alone
        _HEAD.set(None)
        _OLDER.set(None)


def nodes(trail: Trail | None) -> list[Any]:
    """The items of a trail, newest first (for tests and the benchmark)."""
    items: list[Any] = []
    for node in () if trail is None else trail:
        while node is not None:
            items.append(node[0])
            node = node[1]
    return items


def render(trail: Trail | None, max_bytes: int = MAX_STEP_BYTES) -> list[dict[str, Any]]:
    """The steps of a trail as PostHog takes them, oldest first: the newest ``MAX_STEPS``
    that fit in ``max_bytes`` of JSON. Runs on the worker."""
    steps: list[dict[str, Any]] = []
    used = 2  # the list's brackets
    for node in () if trail is None else trail:
        while node is not None and len(steps) < MAX_STEPS:
            step = _as_step(node[0])
            node = node[1]
            if step is None:
                continue
            size = len(json.dumps(step, default=str)) + 1
            if used + size > max_bytes:
                steps.reverse()
                return steps
            used += size
            steps.append(step)
    steps.reverse()
    return steps


def _as_step(item: Any) -> dict[str, Any] | None:
    if isinstance(item, logging.LogRecord):
        return _record_step(item)
    if isinstance(item, dict):
        step = dict(item)
        stamp = step.get("$timestamp")
        if isinstance(stamp, float):
            step["$timestamp"] = _iso(stamp)
        return step if step.get("$message") else None
    return None


def _record_step(record: logging.LogRecord) -> dict[str, Any] | None:
    try:
        message = record.getMessage()
    except Exception:
        try:
            message = str(record.msg)
        except Exception:
            return None
    if not message:
        return None
    step: dict[str, Any] = {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and isinstance(value, _PLAIN)
    }
    step["$message"] = message[:MAX_MESSAGE_LENGTH]
    step["$timestamp"] = _iso(record.created)
    step["level"] = posthog_level(record.levelno)
    step["logger"] = record.name
    return step


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()
