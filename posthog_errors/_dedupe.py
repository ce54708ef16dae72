"""One exception object is sent once, whichever door it comes through.

The mark is the one posthog-python uses (``__posthog_exception_captured`` and
``__posthog_exception_uuid``), so the two libraries honour each other: an exception that
posthog-python's autocapture already sent is not sent again, and one sent here is skipped by
posthog-python.

No lock. Reading and setting the mark can run user code (an exception class's
``__getattr__`` or ``__setattr__`` that logs, as delegating wrappers do), and a lock held
around user code deadlocks when that code captures; a signal handler that captures would
do the same. Two threads claiming one exception at once are told apart by an atomic
``dict.setdefault`` on the exception's id instead.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["CAPTURED_ATTR", "UUID_ATTR", "claim", "release"]

CAPTURED_ATTR = "__posthog_exception_captured"
UUID_ATTR = "__posthog_exception_uuid"

# Exceptions that refuse attributes (frozen dataclasses, a ``__setattr__`` that raises) are
# remembered here instead: id -> (weak reference, uuid). Weak, so a listed exception (and
# its traceback and locals) is never kept alive by this table; an entry leaves when its
# exception dies, and the table never holds more than _UNMARKABLE_LIMIT entries.
_UNMARKABLE_LIMIT = 1024
_unmarkable: dict[int, tuple[weakref.ref[BaseException], str]] = {}

# The exceptions being claimed right now: id -> (the claim's own token, the exception).
# The exception itself is held while its claim lasts, so that its id cannot be reused by
# another object meanwhile: a claim that an asynchronous exception interrupted before its
# ``finally`` could otherwise make a later exception at the same address look claimed.
# Such stale entries are the only ones that outlive their claim; the table is cleared
# when they pile up (at worst, a claim in flight then loses its guard against a race).
_CLAIMING_LIMIT = 256
_claiming: dict[int, tuple[object, BaseException]] = {}


def claim(exc: BaseException, uuid: str) -> bool:
    """Mark ``exc`` as captured with ``uuid``; False if it already was (by anyone).

    Two threads capturing the same exception at once produce one event: the first to
    register its claim on the exception's id marks it; the other sees the claim, or,
    once the claim is over, the mark.
    """
    if _is_marked(exc):
        return False
    key = id(exc)
    claim = (object(), exc)
    if len(_claiming) >= _CLAIMING_LIMIT:
        _claiming.clear()
    if _claiming.setdefault(key, claim) is not claim:
        return False  # another thread is claiming it this very moment
    try:
        if _is_marked(exc):  # marked between the first check and our claim
            return False
        _mark(exc, uuid)
        return True
    finally:
        if _claiming.get(key) is claim:
            del _claiming[key]


def release(exc: BaseException, uuid: str) -> None:
    """Undo ``claim`` when the event was not sent after all (rate-limited, queue full, no
    client): the mark must never name an event that does not exist, and another door, or
    posthog-python, may still report the exception."""
    entry = _unmarkable.get(id(exc))
    if entry is not None and entry[0]() is exc and entry[1] == uuid:
        _unmarkable.pop(id(exc), None)
        return
    try:
        if getattr(exc, UUID_ATTR, None) == uuid:
            delattr(exc, CAPTURED_ATTR)
            delattr(exc, UUID_ATTR)
    except Exception:
        pass  # an exception that refuses this keeps its mark


def _mark(exc: BaseException, uuid: str) -> None:
    try:
        setattr(exc, CAPTURED_ATTR, True)
        setattr(exc, UUID_ATTR, uuid)
        return
    except Exception:
        pass
    try:
        reference = weakref.ref(exc, _forget(id(exc)))
    except TypeError:
        return  # neither markable nor weakly referenceable: it may be sent twice
    while len(_unmarkable) >= _UNMARKABLE_LIMIT:
        try:
            _unmarkable.pop(next(iter(_unmarkable)))
        except (KeyError, RuntimeError, StopIteration):
            break  # another thread changed the table meanwhile
    _unmarkable[id(exc)] = (reference, uuid)


def _forget(key: int) -> Any:
    def forget(reference: weakref.ref[BaseException]) -> None:
        entry = _unmarkable.get(key)
        if entry is not None and entry[0] is reference:
            _unmarkable.pop(key, None)

    return forget


def _is_marked(exc: BaseException) -> bool:
    try:
        if hasattr(exc, CAPTURED_ATTR):
            return True
    except Exception:
        pass
    entry = _unmarkable.get(id(exc))
    return entry is not None and entry[0]() is exc


def _after_fork_in_child() -> None:
    # A claim in flight in another thread of the parent never finishes in the child.
    _claiming.clear()
