"""Exception steps: what the app logged before it failed, sent as ``$exception_steps``.

PostHog shows ``$exception_steps`` as a timeline on the issue (exception-event.md): a list
of ``{"$message", "$timestamp", ...}`` objects, oldest first. Here they come from log
records below the allow list (INFO and WARNING by default), from structlog events, and from
:func:`add_step`.

**Per context.** The trail lives in a :class:`contextvars.ContextVar`, so a thread, an
asyncio task and a web request each see only their own steps. It is a linked list of
immutable nodes, newest first: adding a step makes a new head and sets the variable (one
``ContextVar.set`` per step: a copy of a context keeps the trail as it was when it was
copied, which a mutable segment shared with the copies could not). A
task created inside a request copies the request's context, so it starts from the
request's steps and its own additions stay its own; the request never sees them. The
middlewares start each request with an empty trail (:func:`start_trail`).

**Fixed when logged, on the caller's thread.** A step is a tuple of small immutable values
made when the record is logged (:func:`freeze_record`), never the record itself: no
``exc_info``, traceback, frame or argument object outlives the call. Its message reads as
it did then, and the app's own code (an argument's ``__str__``/``__repr__``, a proxy such as
werkzeug's ``LocalProxy``) runs on the app's thread, in its context, or not at all. The
common case costs a few type checks: a ``str`` template whose arguments are all short
``str``, ``int``, ``float``, ``bool`` or ``None`` keeps the template and that tuple of
arguments (immutable: formatting them later reads as formatting them now), formatted by
the worker when an event sends the step. Anything else is formatted at once, with big
``str``/``bytes``/container arguments cut first (``_bounded``). A record with an exception
keeps its type name and message. The record's plain extras are copied, bounded. Then the
worker only renders and redacts, for the steps an event sends.

**Bounded.** A step holds at most ``MAX_MESSAGE_LENGTH`` characters of template (or
formatted message), ``MAX_ARGUMENTS`` arguments of at most ``MAX_ARGUMENT_LENGTH``
characters, and ``MAX_EXTRA_TEXT`` characters of extras and exception text, whatever the
record referenced. A trail is two segments of at most ``MAX_STEPS`` nodes: the newest one, and
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
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from posthog_errors import _guard
from posthog_errors._bounded import CUT_MARK, bounded_arguments, bounded_repr, cut
from posthog_errors._levels import posthog_level
from posthog_errors._snapshot import exception_message, exception_type_name

__all__ = [
    "HEAD",
    "MAX_ARGUMENTS",
    "MAX_ARGUMENT_LENGTH",
    "MAX_EXTRA_TEXT",
    "MAX_MESSAGE_LENGTH",
    "MAX_STEPS",
    "MAX_STEP_BYTES",
    "PID",
    "PLAIN_RECORD_SIZE",
    "Step",
    "add_record",
    "add_step",
    "adopt",
    "current",
    "end_trail",
    "freeze_record",
    "holds_record",
    "make_step",
    "message_of",
    "nodes",
    "render",
    "start_trail",
    "take_over",
]

MAX_STEPS = 100
MAX_STEP_BYTES = 32_768
MAX_MESSAGE_LENGTH = 1_024  # characters of one step's template or message
MAX_ARGUMENTS = 4  # arguments kept unformatted (more: formatted at once)
MAX_ARGUMENT_LENGTH = 256  # characters of a str argument kept unformatted
MAX_EXTRA_TEXT = 1_024  # characters of a step's extras (keys and values) and exception
_MAX_EXTRA_VALUE = 256  # characters of one extra value
_MAX_EXTRAS = 16
_MAX_NAME = 200  # characters of a logger name
_MAX_INT = 1 << 63  # a bigger int argument is formatted at once
_MIN_INT = -_MAX_INT

# A step: (created, levelno or None, logger name or None, template or message, arguments
# or None), and for the records that needed more (and add_step()'s, structlog's), three
# more: (..., extras or None, exception or None, key). ``arguments`` is a tuple of small
# immutables formatted by the worker; ``extras`` a tuple of (key, plain value) pairs;
# ``exception`` (type name, message); ``key`` the record's id() (0 for add_step()), so that
# install()'s hook and an explicit PostHogHandler add a record once (see holds_record).
Step = tuple[Any, ...]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "_posthog_errors_sent",
    "_posthog_errors_event_uuid",
    "_posthog_errors_logged",
}
# How many attributes a record made by logging has (taskName included where Python has
# it): a record with more has extras, or was formatted already.
_PLAIN_RECORD_SIZE = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
PLAIN_RECORD_SIZE = _PLAIN_RECORD_SIZE  # for install()'s logging hook
_PLAIN = (str, int, float, bool)
_LogRecord = logging.LogRecord


# A node: (the next older node of its segment or None, its depth in the segment, the
# ident of the thread that made it, *step): one flat tuple, made for every step on the
# caller's thread (the step's fields are the node's from ``STEP``: no second tuple). Only
# the head's thread counts (see "Per thread" above); a node of the same thread reuses the
# head's ident object, so a step allocates no int.
Node = tuple[Any, ...]
STEP = 3  # where a node's step starts: ``node[STEP:]`` is the step
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
# This process's id, kept current across fork(): a record of another process (through a
# queue) is its producer's step, never this thread's.
PID = [os.getpid()]


def _forked() -> None:
    PID[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def freeze_record(record: logging.LogRecord) -> Step:
    """The step a log record becomes, made now, on the logging thread: a few type checks
    for the common case, which install()'s hook and :func:`add_record` also make inline
    (keep the three in step)."""
    try:
        fields = record.__dict__
        msg = fields["msg"]
        if (
            type(msg) is str
            and len(fields) == _PLAIN_RECORD_SIZE
            and fields["exc_info"] is None
            and len(msg) <= MAX_MESSAGE_LENGTH
            and type(record) is _LogRecord
        ):
            args = fields["args"]
            if not args:
                return (fields["created"], fields["levelno"], fields["name"], msg, None)
            if type(args) is tuple and len(args) <= MAX_ARGUMENTS:
                arg: Any
                for arg in args:
                    kind = type(arg)
                    if kind is int:
                        if arg > _MAX_INT or arg < _MIN_INT:
                            break
                    elif kind is str:
                        if len(arg) > MAX_ARGUMENT_LENGTH:
                            break
                    elif kind is not float and kind is not bool and arg is not None:
                        break
                else:
                    return (fields["created"], fields["levelno"], fields["name"], msg, args)
    except Exception:
        pass  # an odd record (attributes deleted, a __dict__ of its own): the slow way
    return _freeze_slowly(record)


def _freeze_slowly(record: logging.LogRecord) -> Step:
    """Everything but the common case: the message formatted now, bounded; extras and the
    exception copied. Never raises (an exit exception from the app's ``__str__`` passes)."""
    try:
        message = _message_now(record)
        extras, exception = _extras_and_exception(record)
        name = record.name
        name = cut(name, _MAX_NAME) if isinstance(name, str) else "<unnamed>"
        created = record.created
        if type(created) is not float:
            created = float(created) if isinstance(created, (int, float)) else time.time()
        return (created, _levelno(record), name, message, None, extras, exception, id(record))
    except Exception as error:
        _guard.internal_error(error)
        return (time.time(), None, None, "<unprintable step>", None, None, None, id(record))


def _levelno(record: logging.LogRecord) -> int | None:
    levelno = record.levelno
    return levelno if type(levelno) is int else None


def _message_now(record: logging.LogRecord) -> str:
    """The record's message as ``getMessage()`` makes it, at a cost that does not grow with
    its arguments (big ``str``/``bytes``/containers are cut first), cut."""
    msg, args = record.msg, record.args
    try:
        if type(record).getMessage is not _LogRecord.getMessage:
            return cut(record.getMessage(), MAX_MESSAGE_LENGTH)  # the app's own way
        template = msg if type(msg) is str else str(msg)
        if len(template) > MAX_MESSAGE_LENGTH and not args:
            return cut(template, MAX_MESSAGE_LENGTH)
        if not args:
            return template
        bounded = bounded_arguments(args, MAX_MESSAGE_LENGTH)
        text: str = template % (args if bounded is None else bounded)
        return cut(text, MAX_MESSAGE_LENGTH)
    except Exception:
        # Unprintable, or arguments that do not fit the template: what logging would show.
        try:
            text = msg if type(msg) is str else bounded_repr(msg, MAX_MESSAGE_LENGTH)
            return cut(
                f"{cut(text, MAX_MESSAGE_LENGTH)} (arguments: "
                f"{bounded_repr(args, MAX_MESSAGE_LENGTH)})",
                MAX_MESSAGE_LENGTH,
            )
        except Exception:
            return "<unprintable message>"


def _extras_and_exception(record: logging.LogRecord) -> tuple[Any, Any]:
    exception = None
    budget = MAX_EXTRA_TEXT
    exc_info = record.exc_info
    if exc_info:
        exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else None
        if isinstance(exc, BaseException):
            type_name = cut(exception_type_name(exc), 200)
            text = cut(exception_message(exc), _MAX_EXTRA_VALUE)
            exception = (type_name, text)
            budget -= len(type_name) + len(text)
    extras: list[tuple[str, Any]] = []
    if len(record.__dict__) != _PLAIN_RECORD_SIZE:
        for key, value in list(record.__dict__.items()):
            if (
                key in _RECORD_ATTRIBUTES
                or type(key) is not str
                or key.startswith("_")
                or not isinstance(value, _PLAIN)
            ):
                continue
            if len(extras) >= _MAX_EXTRAS or budget <= 0:
                break
            key = cut(key, 64)
            if type(value) is str or isinstance(value, str):
                value = cut(value, min(_MAX_EXTRA_VALUE, max(budget, len(CUT_MARK) + 1)))
                budget -= len(value)
            elif type(value) is int and not -_MAX_INT < value < _MAX_INT:
                value = bounded_repr(value, 64)
            elif type(value) not in _PLAIN:
                value = (
                    float.__float__(value)
                    if isinstance(value, float)
                    else (bool(value) if isinstance(value, bool) else int.__int__(value))
                )
            budget -= len(key) + 8
            extras.append((key, value))
    return (tuple(extras) if extras else None), exception


def add_record(record: logging.LogRecord) -> None:
    """Add a log record to the current context's trail, unless another thread or process
    made it (it came through a queue: its producer's step, never this thread's). An explicit
    PostHogHandler's path; install()'s hook adds steps inline, the same way.

    The common case is inline (the hot path: one Python call from ``handle()``): a short
    record, as :func:`freeze_record` keeps it, added to this thread's segment with room."""
    head = _HEAD.get()
    owner = _ident()
    try:
        msg, args, created = record.msg, record.args, record.created
        if (
            head is not None
            and head[1] < MAX_STEPS
            and record.thread == head[2] == owner
            and record.process == PID[0]
            and head[3] != created  # else maybe this record's step already (holds_record)
            and type(msg) is str
            and len(msg) <= MAX_MESSAGE_LENGTH
            and record.exc_info is None
            and type(record) is _LogRecord
        ):
            levelno, name = record.levelno, record.name  # before __dict__, which makes a dict
            if len(record.__dict__) != _PLAIN_RECORD_SIZE:  # extras
                args = _SLOW
            elif not args:
                args = None
            elif type(args) is not tuple or len(args) > MAX_ARGUMENTS:
                args = _SLOW
            else:
                arg: Any
                for arg in args:
                    kind = type(arg)
                    if kind is int:
                        if arg > _MAX_INT or arg < _MIN_INT:
                            args = _SLOW
                            break
                    elif kind is str:
                        if len(arg) > MAX_ARGUMENT_LENGTH:
                            args = _SLOW
                            break
                    elif kind is not float and kind is not bool and arg is not None:
                        args = _SLOW
                        break
            if args is not _SLOW:
                # head[2]: the head's ident object, so a step allocates no int.
                _HEAD.set((head, head[1] + 1, head[2], created, levelno, name, msg, args))
                return
    except Exception:
        pass  # an odd record: the slow way
    if _forwarded(record, owner):
        return
    if head is not None and head[2] == owner and holds_record(record):
        return  # install()'s hook and an explicit PostHogHandler both saw it
    _push(freeze_record(record), head)


_SLOW: Any = object()  # arguments freeze_record does not keep as they are


def _forwarded(record: logging.LogRecord, owner: int) -> bool:
    """Whether ``record`` was made on another thread or in another process."""
    thread, process = getattr(record, "thread", None), getattr(record, "process", None)
    return (thread is not None and thread != owner) or (process is not None and process != PID[0])


def adopt() -> None:
    """Make the current context's trail this thread's (``carry_context()``, which runs a
    function in a copy of its caller's context, steps included, on purpose)."""
    head = _HEAD.get()
    if head is not None and head[2] != _ident():
        _HEAD.set((head[0], head[1], _ident(), *head[STEP:]))


def add_step(message: object, **properties: Any) -> None:
    """Add a step to the current context's trail: ``message`` and any properties, shown on
    the timeline of the next ``$exception`` captured in this context (a request, a task,
    a thread). The message and properties are read now (bounded: plain values kept, other
    objects by their bounded repr); they are redacted like every other property when an
    event sends them. Never raises."""
    try:
        _push(_step(message, properties))
    except Exception as error:
        _guard.internal_error(error)


def add_event_dict(event_dict: Mapping[str, Any], level: str, logger_name: str) -> None:
    """Add a structlog event (below the allow list) to the trail, its plain values copied."""
    properties = {
        key: value
        for key, value in event_dict.items()
        if type(key) is str
        and key != "event"
        and not key.startswith("_")
        and isinstance(value, _PLAIN)
    }
    properties["level"] = level
    properties["logger"] = logger_name
    message = event_dict.get("event")
    _push(_step("" if message is None else message, properties))


def _step(message: object, properties: dict[str, Any]) -> Step:
    if type(message) is str:
        text = message
    else:
        try:
            text = str(message)
        except Exception:
            text = f"<unprintable {type(message).__name__}>"
    extras: list[tuple[str, Any]] = []
    budget = MAX_EXTRA_TEXT
    for key, value in properties.items():
        if len(extras) >= _MAX_EXTRAS or budget <= 0:
            break
        key = cut(key, 64)
        cls = type(value)
        if (
            value is None
            or cls is bool
            or cls is float
            or (cls is int and -_MAX_INT < value < _MAX_INT)
        ):
            pass
        else:
            limit = min(_MAX_EXTRA_VALUE, max(budget, len(CUT_MARK) + 1))
            value = cut(value, limit) if isinstance(value, str) else bounded_repr(value, limit)
            budget -= len(value)
        budget -= len(key) + 8
        extras.append((key, value))
    return (
        time.time(),
        None,
        None,
        cut(text, MAX_MESSAGE_LENGTH),
        None,
        tuple(extras) if extras else None,
        None,
        0,
    )


# A step of a message and properties, bounded (add_step()'s; PostHog Logs' structlog and
# loguru records are frozen the same way).
make_step = _step


def holds_record(record: logging.LogRecord) -> bool:
    """Whether the newest step of this context's trail was made from ``record`` (install()'s
    hook and another door, an explicit handler or loguru's forwarding, saw the same record).

    A short step keeps the record's own template and arguments objects, so the same objects
    and the same timestamp name the same record (only two records of one constant message
    with no arguments, logged within one tick of the clock, could be taken for one: the
    second step would repeat the first exactly); a longer one keeps the record's id()."""
    head = _HEAD.get()
    if head is None or head[2] != _ident():
        return False
    step = head[STEP:]
    if step[0] != record.created:
        return False
    if len(step) == 5:
        args = record.args
        return step[3] is record.msg and (step[4] is args if args else step[4] is None)
    return bool(step[7] == id(record))


def take_over(trail: Trail | None) -> None:
    """Make ``trail`` this context's, owned by this thread: a unit of work that ran part of
    its code on another thread (a sync endpoint in a thread pool) continues from the trail
    that thread left."""
    if trail is None:
        _HEAD.set(None)
        _OLDER.set(None)
        return
    head = trail[0]
    _HEAD.set((head[0], head[1], _ident(), *head[STEP:]))
    _OLDER.set(trail[1])


def _from_dict(step: Mapping[str, Any]) -> Step:
    """A step the integrations made as a dict (``$message``, ``$timestamp`` and plain
    properties: a retried task's earlier attempt), frozen like add_step()'s."""
    properties = {k: v for k, v in step.items() if k not in ("$message", "$timestamp")}
    frozen = _step(step.get("$message", ""), properties)
    stamp = step.get("$timestamp")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return (float(stamp), *frozen[1:])
    return frozen


def _push(item: Step | Mapping[str, Any], head: Node | None = None) -> None:
    if not isinstance(item, tuple):
        item = _from_dict(item)
    if head is None:
        head = _HEAD.get()
    if head is None:
        _HEAD.set((None, 1, _ident(), *item))
    elif head[2] != _ident():
        # Another thread's trail, inherited with the context: this thread starts its own.
        _OLDER.set(None)
        _HEAD.set((None, 1, _ident(), *item))
    elif head[1] < MAX_STEPS:
        _HEAD.set((head, head[1] + 1, head[2], *item))
    else:
        _OLDER.set(head)
        _HEAD.set((None, 1, head[2], *item))


def current() -> Trail | None:
    """The current context's trail, for a snapshot to carry (None: no steps, or only
    another thread's)."""
    head = _HEAD.get()
    return None if head is None or head[2] != _ident() else (head, _OLDER.get())


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
    """The steps of a trail, newest first (for tests and the benchmark)."""
    items: list[Any] = []
    for node in () if trail is None else trail:
        while node is not None:
            items.append(node[STEP:])
            node = node[0]
    return items


def render(trail: Trail | None, max_bytes: int = MAX_STEP_BYTES) -> list[dict[str, Any]]:
    """The steps of a trail as PostHog takes them, oldest first: the newest ``MAX_STEPS``
    that fit in ``max_bytes`` of JSON. Runs on the worker, on plain values only."""
    steps: list[dict[str, Any]] = []
    used = 2  # the list's brackets
    for node in () if trail is None else trail:
        while node is not None and len(steps) < MAX_STEPS:
            step = _as_step(node[STEP:])
            node = node[0]
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


def _as_step(item: Step) -> dict[str, Any] | None:
    created, levelno, name = item[:3]
    extras, exception = (item[5], item[6]) if len(item) > 5 else (None, None)
    message = message_of(item)
    if not message:
        return None
    step: dict[str, Any] = dict(extras) if extras else {}
    if exception is not None:
        step["exception_type"], step["exception_message"] = exception
    step["$message"] = message
    step["$timestamp"] = _iso(created)
    if levelno is not None:
        step["level"] = posthog_level(levelno)
        step["logger"] = name
    return step


def message_of(item: Step) -> Any:
    """A step's message: its template formatted with its arguments (small immutables only:
    no app code runs here), cut; the template as it is when they do not fit it."""
    template, args = item[3], item[4]
    if args is None:
        return template
    try:
        message = template % args
    except Exception:
        return template
    return cut(message, MAX_MESSAGE_LENGTH)


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()
