"""One exception object is sent once, whichever door it comes through.

The mark is the one posthog-python uses (``__posthog_exception_captured`` and
``__posthog_exception_uuid``), so the two libraries honour each other: an exception that
posthog-python's autocapture already sent is not sent again, and one sent here is skipped by
posthog-python.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["CAPTURED_ATTR", "UUID_ATTR", "claim", "release"]

CAPTURED_ATTR = "__posthog_exception_captured"
UUID_ATTR = "__posthog_exception_uuid"

# Exceptions that refuse attributes (``__slots__`` subclasses, some C types) are remembered
# here instead: bounded, and holding the object so its id cannot be reused while listed.
_UNMARKABLE_LIMIT = 256
_unmarkable: OrderedDict[int, tuple[BaseException, str]] = OrderedDict()
_lock = threading.Lock()


def claim(exc: BaseException, uuid: str) -> bool:
    """Mark ``exc`` as captured with ``uuid``; False if it already was (by anyone).

    Check and mark happen under one lock, so two threads capturing the same exception at
    once produce one event.
    """
    with _lock:
        if _is_marked(exc):
            return False
        try:
            setattr(exc, CAPTURED_ATTR, True)
            setattr(exc, UUID_ATTR, uuid)
        except (AttributeError, TypeError):
            _unmarkable[id(exc)] = (exc, uuid)
            if len(_unmarkable) > _UNMARKABLE_LIMIT:
                _unmarkable.popitem(last=False)
        return True


def release(exc: BaseException, uuid: str) -> None:
    """Undo ``claim`` when the event was not sent after all (rate-limited, queue full, no
    client): the mark must never name an event that does not exist, and another door, or
    posthog-python, may still report the exception."""
    with _lock:
        entry = _unmarkable.get(id(exc))
        if entry is not None and entry[0] is exc and entry[1] == uuid:
            del _unmarkable[id(exc)]
            return
        try:
            if getattr(exc, UUID_ATTR, None) == uuid:
                delattr(exc, CAPTURED_ATTR)
                delattr(exc, UUID_ATTR)
        except Exception:
            pass  # an exception that refuses this keeps its mark


def _is_marked(exc: BaseException) -> bool:
    try:
        if hasattr(exc, CAPTURED_ATTR):
            return True
    except Exception:
        pass
    entry = _unmarkable.get(id(exc))
    return entry is not None and entry[0] is exc


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
