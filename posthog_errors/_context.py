"""Who hit the failure: the distinct ID and session ID, read on the caller's thread.

Resolution order for each: the value passed for this event, then posthog-python's own
context (``posthog.identify_context`` / ``set_context_session`` inside ``new_context``).
posthog-python's context is read only when it is already imported, so this costs a dict
lookup when it is not.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["resolve_distinct_id", "resolve_session_id"]


def resolve_distinct_id(explicit: Any = None) -> str | None:
    if explicit is not None:
        return _as_id(explicit)
    contexts = sys.modules.get("posthog.contexts")
    if contexts is not None:
        return _as_id(contexts.get_context_distinct_id())
    return None


def resolve_session_id(explicit: Any = None) -> str | None:
    if explicit is not None:
        return _as_id(explicit)
    contexts = sys.modules.get("posthog.contexts")
    if contexts is not None:
        return _as_id(contexts.get_context_session_id())
    return None


def _as_id(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None
