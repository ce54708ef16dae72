"""The cheap part, taken on the caller's thread.

A snapshot holds references, never formatted text: the exception objects of the chain, and
for each frame its code object, line number and module name. Walking a 30-frame traceback
this way costs a few microseconds; everything that reads files or formats strings happens
later, on the worker (see ``_payload``). The chain is walked here, not later, because an
exception's ``__cause__``/``__context__`` and traceback can change once the app moves on.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import random
import sys
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any, Protocol, TypeVar

__all__ = [
    "UUIDS",
    "EventSnapshot",
    "ExceptionSnapshot",
    "FrameRef",
    "LateProperties",
    "frames_from_stack",
    "frames_from_traceback",
    "group_members",
    "walk_exceptions",
]

# (code object, line number or None, module name or None)
FrameRef = tuple[CodeType, "int | None", "str | None"]

_OWN_PACKAGE = __name__.partition(".")[0]
_BUILTIN_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)


@dataclasses.dataclass(slots=True)
class ExceptionSnapshot:
    """One entry of the future ``$exception_list``."""

    exception: BaseException | None
    frames: tuple[FrameRef, ...]
    frames_omitted: int = 0
    exception_id: int = 0
    parent_id: int | None = None
    relation: str | None = None  # "cause", "context" or "member"; None for the root
    is_group: bool = False
    stack_is_synthetic: bool = False  # frames come from the call site, not a traceback
    synthetic_type: str | None = None  # message-only entries have no exception object
    synthetic_value: str | None = None
    # Per frame, a shallow copy of its locals (opt-in code variables; in-app frames only).
    frame_locals: tuple[dict[str, Any] | None, ...] | None = None


class LateProperties(Protocol):
    """Properties another part of the process fills in shortly after the capture (the
    Sentry event that saw the same failure). The worker asks for them, bounded."""

    def wait(self, timeout: float) -> dict[str, Any]: ...


@dataclasses.dataclass(slots=True)
class EventSnapshot:
    """Everything the worker needs to build and send one ``$exception`` event."""

    uuid: str
    timestamp: float
    exceptions: list[ExceptionSnapshot]
    level: str
    handled: bool
    mechanism: str
    source: str
    distinct_id: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] | None = None
    fingerprint: str | None = None
    client: Any = None  # the posthog client resolved on the caller's thread
    reporter: Any = None  # the Reporter that took the snapshot and will deliver it
    late: LateProperties | None = None
    not_before: float = 0.0  # time.monotonic() before which the worker should not build it
    # An $exception_list built elsewhere (from a Sentry event with no live exception).
    prebuilt_exceptions: list[dict[str, Any]] | None = None


class _UuidSource:
    """uuid4 strings without a system call per event.

    ``uuid.uuid4()`` reads ``os.urandom``, a system call that releases the GIL: on a busy
    process the capturing thread may then wait for another thread to hand the GIL back,
    which is most of what a capture costs. Event ids need to be unique, not secret, so a
    generator seeded from ``os.urandom`` (and reseeded in a forked child, or parent and
    child would produce the same ids) does.
    """

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))

    def new(self) -> str:
        bits = self._random.getrandbits(128)
        bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
        bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
        text = f"{bits:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    def _after_fork_in_child(self) -> None:
        self._random = random.Random(os.urandom(32))


UUIDS = _UuidSource()


# Decides, per frame, whether to copy its locals: (code, module) -> bool.
LocalsFilter = Callable[[CodeType, object], bool]


def frames_from_traceback(
    tb: TracebackType | None, max_frames: int
) -> tuple[tuple[FrameRef, ...], int]:
    """Frames oldest call first, capped by keeping both ends; returns (frames, omitted)."""
    frames: list[FrameRef] = []
    while tb is not None:
        frame = tb.tb_frame
        frames.append((frame.f_code, tb.tb_lineno, frame.f_globals.get("__name__")))
        tb = tb.tb_next
    return _cap(frames, max_frames)


def locals_from_traceback(
    tb: TracebackType | None, max_frames: int, wanted: LocalsFilter
) -> tuple[dict[str, Any] | None, ...]:
    """Shallow copies of the locals of the frames ``wanted`` accepts, aligned with
    ``frames_from_traceback`` (None for the others). Taken now: the app goes on changing
    them."""
    copies: list[dict[str, Any] | None] = []
    while tb is not None:
        frame = tb.tb_frame
        copied = None
        if wanted(frame.f_code, frame.f_globals.get("__name__")):
            try:
                copied = dict(frame.f_locals)
            except Exception:
                copied = None
        copies.append(copied)
        tb = tb.tb_next
    return _cap(copies, max_frames)[0]


def frames_from_stack(
    frame: FrameType | None,
    max_frames: int,
    skip: Callable[[str | None], bool] | None = None,
) -> tuple[tuple[FrameRef, ...], int]:
    """The live call stack from ``frame`` outwards, oldest call first.

    Frames whose module ``skip`` accepts are left out, and so are this library's own, so
    the stack ends at the user's call site.
    """
    frames: list[FrameRef] = []
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if not _is_own_module(module) and not (skip is not None and skip(module)):
            frames.append((frame.f_code, frame.f_lineno, module))
        frame = frame.f_back
    frames.reverse()
    return _cap(frames, max_frames)


def walk_exceptions(
    exc: BaseException,
    *,
    max_exceptions: int,
    max_frames: int,
    locals_for: LocalsFilter | None = None,
) -> list[ExceptionSnapshot]:
    """The exception, its causes/contexts and group members, outermost first.

    Depth-first, pre-order, in the order posthog-python uses: an exception, then its cause
    (or context, unless ``__suppress_context__``) with everything below it, then its group
    members. Cycle-safe, and capped at ``max_exceptions`` entries. Iterative, so a chain
    longer than the recursion limit cannot break it.
    """
    result: list[ExceptionSnapshot] = []
    seen: set[int] = set()
    # (exception, parent id, relation)
    pending: list[tuple[BaseException, int | None, str | None]] = [(exc, None, None)]
    while pending and len(result) < max_exceptions:
        current, parent_id, relation = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = _traceback_of(current)
        frames, omitted = frames_from_traceback(tb, max_frames)
        entry = ExceptionSnapshot(
            exception=current,
            frames=frames,
            frames_omitted=omitted,
            exception_id=len(result),
            parent_id=parent_id,
            relation=relation,
            is_group=group_members(current) is not None,
        )
        if locals_for is not None and frames:
            # Each exception's own traceback: chained exceptions get their own locals.
            entry.frame_locals = locals_from_traceback(tb, max_frames, locals_for)
        if parent_id is None and _no_app_frames(frames):
            # Never raised (``capture_exception(ValueError(...))``), or raised by one of
            # our own wrappers (``sys.exit``): show where it was captured instead, marked
            # synthetic.
            entry.frames, entry.frames_omitted = frames_from_stack(sys._getframe(1), max_frames)
            entry.stack_is_synthetic = bool(entry.frames)
            entry.frame_locals = None
        result.append(entry)
        children = _children(current)
        # Reversed, so that the first child is popped (visited) first.
        for child, child_relation in reversed(children):
            pending.append((child, entry.exception_id, child_relation))
    return result


def _children(exc: BaseException) -> list[tuple[BaseException, str]]:
    children: list[tuple[BaseException, str]] = []
    try:
        if exc.__suppress_context__:
            if isinstance(exc.__cause__, BaseException):
                children.append((exc.__cause__, "cause"))
        elif isinstance(exc.__context__, BaseException):
            children.append((exc.__context__, "context"))
        members = group_members(exc)
        if members is not None:
            children.extend((m, "member") for m in members if isinstance(m, BaseException))
    except Exception:
        # A hostile subclass may make these attributes raise; the chain just ends here.
        pass
    return children


def group_members(exc: BaseException) -> tuple[object, ...] | None:
    """The members of an exception group (built-in, or the ``exceptiongroup`` backport)."""
    group_types: list[object] = [_BUILTIN_GROUP]
    backport = sys.modules.get("exceptiongroup")
    if backport is not None:
        group_types.append(getattr(backport, "BaseExceptionGroup", None))
    for group_type in group_types:
        # type(), not isinstance(): a hostile __class__/__getattribute__ must not matter.
        if isinstance(group_type, type) and issubclass(type(exc), group_type):
            try:
                members = exc.exceptions  # type: ignore[attr-defined]
            except Exception:
                return ()
            return members if isinstance(members, tuple) else ()
    return None


def _traceback_of(exc: BaseException) -> TracebackType | None:
    try:
        tb = exc.__traceback__
    except Exception:
        return None
    return tb if isinstance(tb, TracebackType) else None


def _no_app_frames(frames: tuple[FrameRef, ...]) -> bool:
    """True for an empty traceback, or one of this library's frames only."""
    return all(_is_own_module(module) for _, _, module in frames)


def _is_own_module(module: object) -> bool:
    return isinstance(module, str) and (
        module == _OWN_PACKAGE or module.startswith(_OWN_PACKAGE + ".")
    )


T = TypeVar("T")


def _cap(frames: list[T], max_frames: int) -> tuple[tuple[T, ...], int]:
    if len(frames) <= max_frames:
        return tuple(frames), 0
    head = max_frames // 2
    tail = max_frames - head
    return tuple(frames[:head] + frames[-tail:]), len(frames) - max_frames
