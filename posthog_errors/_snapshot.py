"""The cheap part, taken on the caller's thread.

A snapshot holds plain data and code objects, never the exception: for each exception of
the chain its type name, module and value text (the value cut to the payload's maximum
length at once, so a 50 MB message costs nothing more), and for each frame its code object,
line number and module name. Walking a 30-frame traceback this way costs a few
microseconds; everything that reads files, redacts or formats frames happens later, on the
worker (see ``_payload``). The chain is walked here, not later, because an exception's
``__cause__``/``__context__`` and traceback can change once the app moves on.

Keeping no reference to the exception keeps memory bounded: a queued event pins no
traceback, no frame and no local, however many events wait for the worker. The one
exception is opt-in code variables (``frame_locals``: shallow copies of in-app frames'
locals, which pin the values until the worker renders them). At most
``MAX_PENDING_LOCALS`` queued snapshots hold locals at once (see :data:`LOCALS_PERMITS`);
a capture made while all permits are taken goes without code variables, and is counted as
``invalid_input``.
"""

from __future__ import annotations

import builtins
import collections.abc
import dataclasses
import os
import random
import sys
import weakref
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any, Protocol, TypeVar

from posthog_errors._frames import safe_text

__all__ = [
    "LOCALS_PERMITS",
    "MAX_PENDING_LOCALS",
    "UUIDS",
    "EventSnapshot",
    "ExceptionSnapshot",
    "FrameRef",
    "LateProperties",
    "LocalsPermit",
    "cut_text",
    "exception_message",
    "exception_reference",
    "exception_type_module",
    "exception_type_name",
    "exception_value",
    "frames_from_stack",
    "frames_from_traceback",
    "group_members",
    "release_locals",
    "walk_exceptions",
]

# (code object, line number or None, module name or None)
FrameRef = tuple[CodeType, "int | None", "str | None"]

_OWN_PACKAGE = __name__.partition(".")[0]
_BUILTIN_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)


@dataclasses.dataclass(slots=True)
class ExceptionSnapshot:
    """One entry of the future ``$exception_list``: plain text, no exception object."""

    type_name: str
    value: str  # already cut to the payload's maximum value length; redacted later
    module: str | None
    frames: tuple[FrameRef, ...]
    frames_omitted: int = 0
    exception_id: int = 0
    parent_id: int | None = None
    relation: str | None = None  # "cause", "context" or "member"; None for the root
    is_group: bool = False
    stack_is_synthetic: bool = False  # frames come from the call site, not a traceback
    is_message: bool = False  # a message-only entry (a log record): no exception at all
    # Per frame, a shallow copy of its locals (opt-in code variables; in-app frames only).
    # Dropped by ``release_locals`` once the worker rendered them.
    frame_locals: tuple[dict[str, Any] | None, ...] | None = None


class LateProperties(Protocol):
    """Properties another part of the process fills in shortly after the capture (the
    Sentry event that saw the same failure). The worker asks for them, bounded; None means
    the event is filtered out (the user's Sentry ``before_send`` removed the PostHog tag)."""

    def wait(self, timeout: float) -> dict[str, Any] | None: ...

    def settled(self) -> bool:
        """True once the other side has decided (sent its event, or not): an event held
        back for these properties need not wait out the rest of its grace."""
        ...


@dataclasses.dataclass(slots=True)
class EventSnapshot:
    """Everything the worker needs to build and send one ``$exception`` event."""

    uuid: str
    timestamp: float
    exceptions: list[ExceptionSnapshot]
    level: str
    handled: bool
    mechanism: str
    source: str | None  # $exception_source; None for a manual capture (sent without one)
    distinct_id: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] | None = None
    fingerprint: str | None = None
    client: Any = None  # the posthog client resolved on the caller's thread
    reporter: Any = None  # the Reporter that took the snapshot and will deliver it
    late: LateProperties | None = None
    # The caller's trail of exception steps (``_steps``): rendered by the worker.
    steps: Any = None
    not_before: float = 0.0  # time.monotonic() before which the worker should not build it
    # An $exception_list built elsewhere (from a Sentry event with no live exception).
    prebuilt_exceptions: list[dict[str, Any]] | None = None
    # Held while ``exceptions`` carry frame locals; given back by ``release_locals``.
    locals_permit: LocalsPermit | None = None
    # A weak reference to the captured exception, only so that the worker can release its
    # captured mark when the event is not sent after all (``before_send`` dropped it): it
    # never keeps the exception (its traceback, its frames' locals) alive. None for
    # built-in exception types, which refuse weak references (see ``Reporter`` for how
    # their mark is released then).
    exception_ref: weakref.ref[BaseException] | None = None


MAX_PENDING_LOCALS = 8


class LocalsPermit:
    """The right of one snapshot to hold frame locals until the worker renders them."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: list[object]) -> None:
        self._tokens: list[object] | None = tokens

    def release(self) -> None:
        """Give the permit back; only the first call counts."""
        tokens, self._tokens = self._tokens, None
        if tokens is not None:
            tokens.append(None)


class _LocalsPermits:
    """At most ``limit`` snapshots hold frame locals at once, process-wide.

    Pending memory is then bounded by ``limit`` times one failure's locals, whatever the
    rate of failures. No lock (a signal handler may capture in the middle of a capture):
    a permit is a token in a list, taken with ``list.pop`` and given back with
    ``list.append``, each one atomic C call.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tokens: list[object] = [None] * limit

    def take(self) -> LocalsPermit | None:
        tokens = self._tokens
        try:
            tokens.pop()
        except IndexError:
            return None
        return LocalsPermit(tokens)

    @property
    def available(self) -> int:
        return len(self._tokens)

    def _after_fork_in_child(self) -> None:
        # The child's queue starts empty: every permit is free again. Permits taken in the
        # parent give their token back to the parent's (old) list, harmlessly.
        self._tokens = [None] * self.limit


LOCALS_PERMITS = _LocalsPermits(MAX_PENDING_LOCALS)


def release_locals(snapshot: EventSnapshot) -> None:
    """Drop the snapshot's frame locals and give its permit back (the worker is done)."""
    for entry in snapshot.exceptions:
        entry.frame_locals = None
    permit, snapshot.locals_permit = snapshot.locals_permit, None
    if permit is not None:
        permit.release()


def holds_locals(exceptions: list[ExceptionSnapshot]) -> bool:
    """Whether any entry copied any frame's locals."""
    return any(copied is not None for entry in exceptions for copied in (entry.frame_locals or ()))


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
    max_value_length: int,
    locals_for: LocalsFilter | None = None,
) -> list[ExceptionSnapshot]:
    """The exception, its causes/contexts and group members, outermost first.

    Depth-first, pre-order, in the order posthog-python uses: an exception, then its cause
    (or context, unless ``__suppress_context__``) with everything below it, then its group
    members. Cycle-safe, and capped at ``max_exceptions`` entries. Iterative, so a chain
    longer than the recursion limit cannot break it. Each entry keeps the exception's type
    name, module and value text (see :func:`exception_value`), never the exception.
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
        members = group_members(current)
        entry = ExceptionSnapshot(
            type_name=exception_type_name(current),
            value=exception_value(current, max_value_length),
            module=exception_type_module(current),
            frames=frames,
            frames_omitted=omitted,
            exception_id=len(result),
            parent_id=parent_id,
            relation=relation,
            is_group=members is not None,
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
        children = _children(current, members)
        # Reversed, so that the first child is popped (visited) first.
        for child, child_relation in reversed(children):
            pending.append((child, entry.exception_id, child_relation))
    return result


def _children(
    exc: BaseException, members: tuple[object, ...] | None
) -> list[tuple[BaseException, str]]:
    """The exceptions below ``exc``; ``members`` is ``group_members(exc)``, read once."""
    children: list[tuple[BaseException, str]] = []
    try:
        if exc.__suppress_context__:
            if isinstance(exc.__cause__, BaseException):
                children.append((exc.__cause__, "cause"))
        elif isinstance(exc.__context__, BaseException):
            children.append((exc.__context__, "context"))
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


def exception_type_name(exc: BaseException) -> str:
    """``type(exc).__qualname__``, never raising (a hostile metaclass may)."""
    try:
        cls = type(exc)
        if type(cls) is type:  # no metaclass: reading it runs no user code
            name: object = cls.__qualname__
        else:
            name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None)
        return _plain_text(name) if isinstance(name, str) else "<unknown>"
    except Exception:
        return "<unknown>"


def exception_type_module(exc: BaseException) -> str | None:
    """``type(exc).__module__``; None for builtins, and when it is not a string."""
    try:
        cls = type(exc)
        module = cls.__module__ if type(cls) is type else getattr(cls, "__module__", None)
        if not isinstance(module, str):
            return None
        module = _plain_text(module)
    except Exception:
        return None
    return None if module in ("builtins", "__builtins__", "") else module


def _plain_text(text: str) -> str:
    """A short, plain, encodable str (the common case costs two C calls)."""
    if type(text) is str and len(text) <= 512 and text.isascii():
        return text
    return safe_text(text, 512)


def exception_reference(exc: BaseException) -> weakref.ref[BaseException] | None:
    """A weak reference to ``exc``; None when its class refuses one: built-in exception
    types (``ValueError``; classes defined in Python take them) and ``__slots__`` classes."""
    try:
        return weakref.ref(exc)
    except TypeError:
        return None


def exception_value(exc: BaseException, limit: int) -> str:
    """What Python prints after the type: the message, then each PEP 678 note on its own
    line (as :mod:`traceback` prints them); an exception group's message without the
    member count. Cut to ``limit`` characters, reading no more of a huge message or of
    many notes than that: the final cut, in UTF-8 bytes, is the payload's, after redaction.
    """
    text = cut_text(exception_message(exc), limit)
    try:
        notes = getattr(exc, "__notes__", None)
    except Exception:
        notes = ["<__notes__ getattr() failed>"]
    if notes is None:
        return text
    parts = [text]
    size = len(text)
    try:
        if isinstance(notes, str) or not isinstance(notes, collections.abc.Sequence):
            # traceback prints a str as its characters, one per line (it is a Sequence).
            if isinstance(notes, str):
                parts.extend(notes[: limit - size])
            else:
                parts.append(_safe_str(notes, "__notes__", repr)[: limit - size + 3])
        else:
            for note in notes:
                if size >= limit:
                    break
                line = _safe_str(note, "note", str)[: limit - size + 3]
                parts.append(line)
                size += len(line) + 1
    except Exception:
        pass  # a hostile sequence: the notes read so far
    return cut_text("\n".join(parts), limit)


def _plain_str(func: Callable[[object], object], value: object) -> str | None:
    """``func(value)`` as a plain ``str`` (a subclass never has one of its methods run), or
    None when it raises or returns something else."""
    try:
        text = func(value)
        if type(text) is str:
            return text
        if isinstance(text, str):
            return str.__str__(text)
    except Exception:
        pass
    return None


def _safe_str(value: object, what: str, func: Callable[[object], str]) -> str:
    """``func(value)`` as a plain str, or traceback's own placeholder when it raises."""
    text = _plain_str(func, value)
    return f"<{what} {func.__name__}() failed>" if text is None else text


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, falling back the way :mod:`traceback` does when ``__str__`` raises;
    an exception group's ``message`` (``str()`` adds " (N sub-exceptions)"), unless its
    class prints itself some other way.

    A plain ``str`` always: a subclass returned by a hostile ``__str__`` never has one of
    its methods run. This runs on the caller's thread, so ``KeyboardInterrupt``,
    ``SystemExit`` and cancellations from a ``__str__`` pass through to the app, like any
    exit exception on the caller's thread (a Ctrl-C landing in a Python ``__str__`` cannot
    be told from a hostile one), and abandon the capture.
    """
    try:
        group_message = _group_message(exc)
    except Exception:
        group_message = None
    if group_message is not None:
        return group_message
    text = _plain_str(str, exc)
    if text is not None:
        return text
    try:
        return f"<exception str() failed: {object.__repr__(exc)}>"
    except Exception:
        return "<exception str() failed>"


def _group_message(exc: BaseException) -> str | None:
    cls = type(exc)
    for group_type in _group_types():
        if issubclass(cls, group_type):
            if getattr(cls, "__str__", None) is not getattr(group_type, "__str__", None):
                return None  # the class prints itself its own way: str() it is
            try:
                message = exc.message  # type: ignore[attr-defined]
            except Exception:
                return None
            if type(message) is str:
                return message
            return str.__str__(message) if isinstance(message, str) else None
    return None


def _group_types() -> list[type]:
    found: list[type] = [_BUILTIN_GROUP] if _BUILTIN_GROUP is not None else []
    backport = sys.modules.get("exceptiongroup")
    if backport is not None:
        candidate = getattr(backport, "BaseExceptionGroup", None)
        if isinstance(candidate, type) and candidate not in found:
            found.append(candidate)
    return found


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with "..."), before anything else reads
    it: a slice, so a huge message costs no more than a short one."""
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def _traceback_of(exc: BaseException) -> TracebackType | None:
    try:
        tb = exc.__traceback__
    except Exception:
        return None
    return tb if isinstance(tb, TracebackType) else None


def _no_app_frames(frames: tuple[FrameRef, ...]) -> bool:
    """True for an empty traceback, or one of this library's frames only."""
    return all(_is_own_module(module) for _, _, module in frames)


# The sample app of ``posthog-errors demo`` and the exception ``posthog-errors test`` raises
# are app code that happens to ship in this package: their frames are the story to tell.
_OWN_SAMPLE_APPS = (f"{_OWN_PACKAGE}.demo", f"{_OWN_PACKAGE}.cli")


def _is_own_module(module: object) -> bool:
    return (
        isinstance(module, str)
        and (module == _OWN_PACKAGE or module.startswith(_OWN_PACKAGE + "."))
        and module not in _OWN_SAMPLE_APPS
    )


T = TypeVar("T")


def _cap(frames: list[T], max_frames: int) -> tuple[tuple[T, ...], int]:
    if len(frames) <= max_frames:
        return tuple(frames), 0
    head = max_frames // 2
    tail = max_frames - head
    return tuple(frames[:head] + frames[-tail:]), len(frames) - max_frames


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=LOCALS_PERMITS._after_fork_in_child)
