"""Redacting credentials from text that is sent: exception values and log messages.

An exception message often quotes what failed: a database URL with its password, a request
with its ``Authorization`` header. These are replaced by ``[Filtered]`` before the event
leaves the process (on the worker, so it costs the app nothing).
"""

from __future__ import annotations

import re

__all__ = ["FILTERED", "redact"]

FILTERED = "[Filtered]"

# scheme://user:password@host  ->  scheme://user:[Filtered]@host
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s]*):[^@/\s]+@")
# Authorization: Bearer abc..., "Basic dXNlcjpw...", token 3f9a...  (long values only, so
# prose like "token expired" is left alone)
_AUTH_SCHEME = re.compile(
    r"(?P<head>\b(?:bearer|basic|token|digest)\s+)[A-Za-z0-9\-._~+/]{12,}=*", re.IGNORECASE
)
# password=..., api_key: ..., secret="..." (a quoted value may hold spaces)
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
    r"\b\s*[=:]\s*)(?:(?P<quote>['\"])(?:(?!(?P=quote)).)*(?P=quote)|[^\s'\",;&]+)",
    re.IGNORECASE,
)


def _filtered_assignment(match: re.Match[str]) -> str:
    quote = match.group("quote") or ""
    return f"{match.group('head')}{quote}{FILTERED}{quote}"


def redact(text: str) -> str:
    """``text`` with URL credentials, auth header values and secret assignments filtered."""
    if "://" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<head>:{FILTERED}@", text)
    text = _AUTH_SCHEME.sub(rf"\g<head>{FILTERED}", text)
    return _SECRET_ASSIGNMENT.sub(_filtered_assignment, text)
