"""Queue-based logging: ``QueueHandler`` in the producers, ``PostHogHandler`` behind a
``QueueListener`` (the logging cookbook, 3.12's dictConfig ``queue`` handlers, the
cookbook's multi-process listener).

``QueueHandler.prepare`` makes the record picklable before it is queued: it formats the
traceback into ``msg`` and clears ``exc_info``. The listener's handler would then see a
message record whose text is a traceback, logged from the listener's thread: a
``LogMessage`` event with the listener's stack and context, and every producer's INFO
records merged into the listener's trail. So ``prepare`` is wrapped (by ``install()``,
and by the first ``PostHogHandler`` created): before the exception is cleared, a small
picklable :class:`Carried` snapshot of what the event needs is attached to the queued
record: the exception chain with its frames (file, function, line, module: no code
objects), the producer's person and bound properties, its exception steps (already
rendered), and, for a record without an exception, the producer's call-site stack and the
unformatted template. A record the producer's own hook already reported carries the mark
every door checks (``_log_message.mark_record_sent``) and nothing else.

The listener's ``PostHogHandler`` sends a carried record from that snapshot, in an empty
context (nothing of the listener's own person, steps or context tags mixes in), and a
record made on another thread or process never becomes a step of the listener's trail
(:func:`forwarded`).

Only for records that can become events: those with an exception, and those at WARNING and
above. INFO and DEBUG records pass through untouched (they are the producer's steps, and
its own hook, with ``install()``, already put them on its trail).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from types import CodeType
from typing import Any, NamedTuple, cast

from posthog_errors import _context, _guard, _steps, _units
from posthog_errors._log_message import call_site_frames, record_was_sent
from posthog_errors._options import PayloadOptions
from posthog_errors._reporter import default_reporter_if_set
from posthog_errors._snapshot import ExceptionSnapshot, FrameRef, walk_exceptions

__all__ = [
    "CARRIED_ATTR",
    "PID",
    "Carried",
    "CarriedCode",
    "carried_of",
    "exception_snapshots",
    "forwarded",
    "from_traceback_text",
    "wrap_queue_handlers",
]

# Set on the queued copy of a record. Private by its leading underscore (JSON formatters
# skip it, as they skip ``_posthog_errors_sent``).
CARRIED_ATTR = "_posthog_errors_carried"

_DEFAULT_OPTIONS = PayloadOptions()
_PLAIN = (str, int, float, bool, type(None))
_MAX_PROPERTY_TEXT = 1024


class CarriedCode(NamedTuple):
    """Stands in for a code object in a carried frame: what ``_frames.FrameBuilder`` reads
    of one (its file and function), picklable."""

    co_filename: str
    co_name: str


# (file, function, line, module)
CarriedFrame = tuple[str, str, "int | None", "str | None"]


class CarriedException(NamedTuple):
    type_name: str
    value: str
    module: str | None
    frames: tuple[CarriedFrame, ...]
    frames_omitted: int
    exception_id: int
    parent_id: int | None
    relation: str | None
    is_group: bool


class Carried(NamedTuple):
    """What the listener needs to send a producer's record as the producer would have."""

    message: str  # the record's own message (without the traceback text)
    template: str  # the unformatted template, for message-only grouping
    has_args: bool
    exceptions: tuple[CarriedException, ...]  # empty: a record without an exception
    frames: tuple[CarriedFrame, ...]  # the call site's stack (records without one)
    distinct_id: str | None
    session_id: str | None
    properties: dict[str, Any]
    steps: list[dict[str, Any]]


# -- the producer's side ---------------------------------------------------------------


class _Wrapped:
    """The one wrapper of ``QueueHandler.prepare``, and who wants it."""

    previous: Callable[..., Any] | None = None
    hook: Callable[..., Any] | None = None
    by_install = 0
    by_handler = False


def wrap_queue_handlers(*, by_handler: bool = False) -> Callable[[], None]:
    """Wrap ``logging.handlers.QueueHandler.prepare`` (once). ``install()`` gets an undo
    (the wrapper leaves unless a ``PostHogHandler`` asked for it too); a handler's request
    lasts for the process."""
    import logging.handlers

    queue_handler = logging.handlers.QueueHandler
    if by_handler:
        _Wrapped.by_handler = True
    else:
        _Wrapped.by_install += 1
    if _Wrapped.hook is None or queue_handler.prepare is not _Wrapped.hook:
        previous = queue_handler.prepare

        def posthog_errors_queue_prepare(
            self: logging.handlers.QueueHandler, record: logging.LogRecord
        ) -> Any:
            carried = _carry(record)
            prepared = previous(self, record)
            if carried is not None and isinstance(prepared, logging.LogRecord):
                setattr(prepared, CARRIED_ATTR, carried)
            return prepared

        _Wrapped.previous, _Wrapped.hook = previous, posthog_errors_queue_prepare
        queue_handler.prepare = posthog_errors_queue_prepare  # type: ignore[method-assign]

    def restore() -> None:
        if by_handler:
            return
        _Wrapped.by_install = max(0, _Wrapped.by_install - 1)
        if _Wrapped.by_install or _Wrapped.by_handler:
            return
        if queue_handler.prepare is _Wrapped.hook and _Wrapped.previous is not None:
            queue_handler.prepare = _Wrapped.previous  # type: ignore[method-assign]
            _Wrapped.hook = _Wrapped.previous = None

    return restore


def _carry(record: logging.LogRecord) -> Carried | None:
    """The snapshot a queued record takes along, or None (nothing to carry, or already
    reported by the producer's own hook). Never raises."""
    try:
        exc_info = record.exc_info
        exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
        if not isinstance(exc, BaseException):
            exc = None
        if exc is None and record.levelno < logging.WARNING:
            return None
        if record_was_sent(record) or _guard.inside_library():
            return None
        return _snapshot(record, exc)
    except Exception as error:
        _guard.internal_error(error)
        return None


def _snapshot(record: logging.LogRecord, exc: BaseException | None) -> Carried:
    installed = default_reporter_if_set()
    options = installed.options if installed is not None else _DEFAULT_OPTIONS
    exceptions: tuple[CarriedException, ...] = ()
    frames: tuple[CarriedFrame, ...] = ()
    if exc is not None:
        exceptions = tuple(
            _carried_exception(entry)
            for entry in walk_exceptions(
                exc,
                max_exceptions=options.max_exceptions,
                max_frames=options.max_frames,
                max_value_length=options.snapshot_value_length,
            )
        )
    else:
        frames = tuple(_carried_frame(ref) for ref in call_site_frames(options.max_frames)[0])
    distinct_id, session_id, bound = _context.resolve(exc, None, None)
    properties = dict(_context.caller_properties() or {})
    properties.update(bound)
    found, trail = _units.remembered_trail(exc)
    steps = _steps.render(trail if found else _steps.current())
    _without_itself(record, steps)
    try:
        message = record.getMessage()
    except Exception:
        message = str(record.msg)
    msg = record.msg
    return Carried(
        message=message[: options.snapshot_value_length],
        template=msg if isinstance(msg, str) else message,
        has_args=bool(record.args),
        exceptions=exceptions,
        frames=frames,
        distinct_id=distinct_id,
        session_id=session_id,
        properties={str(k): _plain(v) for k, v in properties.items()},
        steps=steps,
    )


def _without_itself(record: logging.LogRecord, steps: list[dict[str, Any]]) -> None:
    """Drop ``record`` itself from the end of ``steps``: the producer's hook made it a step
    (below the producer's allow list) before the QueueHandler ran, and the event of a
    record is not its own step. Compared by what a step shows of its record."""
    if not steps:
        return
    last = steps[-1]
    stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat()
    if (
        last.get("logger") == record.name
        and last.get("$timestamp") == stamp
        and last.get("$message") == record.getMessage()[: len(str(last.get("$message")))]
    ):
        steps.pop()


def _carried_frame(ref: FrameRef) -> CarriedFrame:
    code, lineno, module = ref
    return (str(code.co_filename), str(code.co_name), lineno, module)


def _carried_exception(entry: ExceptionSnapshot) -> CarriedException:
    return CarriedException(
        entry.type_name,
        entry.value,
        entry.module,
        tuple(_carried_frame(ref) for ref in entry.frames),
        entry.frames_omitted,
        entry.exception_id,
        entry.parent_id,
        entry.relation,
        entry.is_group,
    )


def _plain(value: Any, depth: int = 0) -> Any:
    """A property value that pickles and means the same on the other side: plain values
    as they are, containers of them (bounded), a request's route as its template, and
    anything else as its text."""
    if isinstance(value, _PLAIN):
        return value
    template = getattr(value, "template", None)
    if callable(template) and type(value).__name__ == "Route":
        return template()
    if depth < 4 and isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:100]}
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value[:100]]
    try:
        return str(value)[:_MAX_PROPERTY_TEXT]
    except Exception:
        return f"<{type(value).__name__}>"


# -- the listener's side ---------------------------------------------------------------

_TRACEBACK_HEADER = "Traceback (most recent call last):"
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"
_FRAME_LINE = re.compile(r'^  File "(.*)", line (\d+), in (.*)$')


def from_traceback_text(text: str) -> Carried | None:
    """What a record queued by a producer without posthog-errors (no wrapped ``prepare``)
    still says: the traceback text ``QueueHandler.prepare`` formatted into its message,
    read back into the exception chain (types, values, files, lines, functions). None when
    the text holds no traceback this can read (an exception group's, for one)."""
    index = text.find(_TRACEBACK_HEADER)
    if index < 0 or "Exception Group Traceback" in text:
        return None
    message = text[:index].rstrip("\n")
    blocks: list[list[str]] = [[]]
    relations: list[str] = []
    for line in text[index:].splitlines():
        if line in (_CAUSE, _CONTEXT):
            relations.append("cause" if line == _CAUSE else "context")
            blocks.append([])
        else:
            blocks[-1].append(line)
    parsed = [_parse_block(block) for block in blocks]
    if any(entry is None for entry in parsed):
        return None
    exceptions: list[CarriedException] = []
    # The text prints the oldest of the chain first; the list starts with the logged one.
    for position, entry in enumerate(reversed(parsed)):
        assert entry is not None
        type_name, value, frames = entry
        module, _, name = type_name.rpartition(".")
        exceptions.append(
            CarriedException(
                name,
                value,
                module or "builtins",
                frames,
                0,
                position,
                None if position == 0 else position - 1,
                None if position == 0 else relations[len(relations) - position],
                False,
            )
        )
    return Carried(message, message, False, tuple(exceptions), (), None, None, {}, [])


def _parse_block(lines: list[str]) -> tuple[str, str, tuple[CarriedFrame, ...]] | None:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    frames: list[CarriedFrame] = []
    position = 0
    if lines and lines[0] == _TRACEBACK_HEADER:
        position = 1
        while position < len(lines) and lines[position].startswith("  "):
            match = _FRAME_LINE.match(lines[position])
            if match is not None:
                frames.append((match[1], match[3], int(match[2]), None))
            position += 1
    rest = lines[position:]
    if not rest or not rest[0] or rest[0][0].isspace():
        return None
    type_name, _, value = rest[0].partition(": ")
    if not type_name.replace(".", "").replace("_", "").isalnum():
        return None
    value = "\n".join([value, *rest[1:]]) if len(rest) > 1 else value
    return type_name, value, tuple(frames)


def carried_of(record: logging.LogRecord) -> Carried | None:
    """The snapshot a record brought through a queue, if it has one (and its exception
    was cleared, as ``QueueHandler.prepare`` does)."""
    carried = getattr(record, CARRIED_ATTR, None)
    if isinstance(carried, Carried) and not record.exc_info:
        return carried
    return None


def exception_snapshots(carried: Carried) -> list[ExceptionSnapshot]:
    """The carried exception chain as the worker builds events from it: each frame's code
    object is a :class:`CarriedCode` (source context is read on this side, from the same
    files)."""
    return [
        ExceptionSnapshot(
            type_name=entry.type_name,
            value=entry.value,
            module=entry.module,
            frames=frame_refs(entry.frames),
            frames_omitted=entry.frames_omitted,
            exception_id=entry.exception_id,
            parent_id=entry.parent_id,
            relation=entry.relation,
            is_group=entry.is_group,
        )
        for entry in carried.exceptions
    ]


def frame_refs(frames: tuple[CarriedFrame, ...]) -> tuple[FrameRef, ...]:
    # The payload reads a frame's code only for ``co_filename`` and ``co_name``.
    return tuple(
        (cast(CodeType, CarriedCode(filename, name)), lineno, module)
        for filename, name, lineno, module in frames
    )


# This process's id, kept current across fork (``os.getpid()`` is a system call; the
# logging hook compares it with every record that becomes a step).
PID = [os.getpid()]


def _after_fork() -> None:
    PID[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def forwarded(record: logging.LogRecord) -> bool:
    """Whether ``record`` was made on another thread or in another process (it came
    through a queue): it is that producer's step, never this thread's."""
    thread, process = record.thread, record.process
    return (thread is not None and thread != threading.get_ident()) or (
        process is not None and process != PID[0]
    )
