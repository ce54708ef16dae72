"""Identity values read from headers (HTTP, Celery, RQ), cleaned as posthog-python does.

``X-POSTHOG-DISTINCT-ID`` and ``X-POSTHOG-SESSION-ID`` come from the browser or from the
code that enqueued a task: used as sent, ``"   "`` would become a person whose ID is
spaces instead of a personless event, ``"user-1\\n"`` a different person from ``user-1``,
and a padded session ID would no longer match its replay. posthog-python's integrations
remove control characters, trim, keep at most 1,000 characters, and read an empty value as
none; so does every integration here.
"""

from __future__ import annotations

import re

__all__ = ["clean_header_value"]

_MAX_HEADER_LENGTH = 1000
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_header_value(value: object) -> str | None:
    """Control characters removed, surrounding blanks trimmed, at most 1,000 characters;
    empty (or not a string) is ``None``, so that the event is personless."""
    if not isinstance(value, str):
        return None
    return _CONTROL_CHARS.sub("", value).strip()[:_MAX_HEADER_LENGTH] or None
