"""Identity values read from headers (HTTP, Celery, RQ), cleaned as posthog-python does.

``X-POSTHOG-DISTINCT-ID`` and ``X-POSTHOG-SESSION-ID`` come from the browser or from the
code that enqueued a task: used as sent, ``"   "`` would become a person whose ID is
spaces instead of a personless event, ``"user-1\\n"`` a different person from ``user-1``,
and a padded session ID would no longer match its replay. posthog-python's integrations
remove control characters, trim, keep at most 1,000 characters, and read an empty value as
none; so does every integration here.

posthog-python's context tags (``posthog.tag``) travel with a Celery task in
``X-POSTHOG-CONTEXT-TAGS``, and with an RQ job in its meta: they are cleaned and bounded
here too (:func:`clean_tags`), on the way out and on the way in.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "MAX_TAGS",
    "MAX_TAGS_JSON",
    "TAGS_HEADER",
    "apply_tags",
    "clean_header_value",
    "clean_tags",
    "current_tags",
    "decode_tags",
    "encode_tags",
]

_MAX_HEADER_LENGTH = 1000
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_header_value(value: object) -> str | None:
    """Control characters removed, surrounding blanks trimmed, at most 1,000 characters;
    empty (or not a string) is ``None``, so that the event is personless."""
    if not isinstance(value, str):
        return None
    return _CONTROL_CHARS.sub("", value).strip()[:_MAX_HEADER_LENGTH] or None


# -- posthog-python's context tags (posthog.tag) -----------------------------------------

TAGS_HEADER = "X-POSTHOG-CONTEXT-TAGS"
"""posthog-python's header of context tags (posthog/integrations/celery.py): a JSON object
string, ``json.dumps(tags, default=str)``."""

MAX_TAGS = 64  # tags carried with one task or job (the first ones that fit)
MAX_TAGS_JSON = 8_192  # characters of the tags' JSON, as sent
_MAX_TAG_KEY = 200  # characters of a tag's name
_MAX_RAW_TAGS = 65_536  # characters of a header we parse at all (a producer of any library)
_VALUE_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and newline kept


def current_tags() -> dict[str, Any]:
    """posthog-python's context tags here and now (``posthog.tag`` inside
    ``posthog.new_context``); none when posthog's contexts were never imported."""
    contexts = sys.modules.get("posthog.contexts")
    if contexts is None:
        return {}
    try:
        tags = contexts.get_tags()
    except Exception:
        return {}
    return tags if isinstance(tags, dict) else {}


def clean_tags(tags: Mapping[Any, Any]) -> dict[str, Any]:
    """Tags as they travel: JSON values (anything else as its ``str``, as posthog-python
    encodes them); names cleaned as the identity headers are (at most 200 characters; an
    empty name is dropped); string values without control characters other than tab and
    newline, at most 1,000 characters; the first :data:`MAX_TAGS` tags whose JSON fits in
    :data:`MAX_TAGS_JSON` characters altogether (a tag that does not fit is left out)."""
    kept: dict[str, Any] = {}
    size = 2  # "{}"
    for raw_key, raw_value in tags.items():
        if len(kept) >= MAX_TAGS:
            break
        key = clean_header_value(raw_key if isinstance(raw_key, str) else str(raw_key))
        if key is None:
            continue
        key = key[:_MAX_TAG_KEY]
        try:
            value = json.loads(json.dumps(raw_value, default=str))
            value = _clean_value(value)
            item = json.dumps({key: value}, default=str)
        except (TypeError, ValueError, RecursionError):
            continue
        cost = len(item) - 2 + (2 if kept else 0)  # without the braces; ", " between items
        if size + cost > MAX_TAGS_JSON:
            continue
        kept.pop(key, None)  # two names that clean to one: the later value, as a dict would
        kept[key] = value
        size = len(json.dumps(kept, default=str))
    return kept


def encode_tags(tags: Mapping[Any, Any]) -> str | None:
    """The header's value for ``tags``, encoded as posthog-python encodes it; None when no
    tag is left to send."""
    cleaned = clean_tags(tags)
    return json.dumps(cleaned, default=str) if cleaned else None


def decode_tags(raw: object) -> dict[str, Any]:
    """The tags a header (or an RQ job's meta) carries, cleaned as :func:`clean_tags` does:
    a JSON object string (posthog-python's header), bytes of one, or a dict; anything else,
    or a string over 64 KiB, is no tags."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return {}
    if isinstance(raw, str):
        if len(raw) > _MAX_RAW_TAGS:
            return {}
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return {}
    return clean_tags(raw) if isinstance(raw, dict) else {}


def apply_tags(tags: Mapping[str, Any]) -> Callable[[], None] | None:
    """Make ``tags`` posthog-python context tags of what runs next, as posthog-python's
    Celery integration does in its worker (``posthog.tag`` in a ``new_context``): every
    event from here (``posthog_errors``' and ``posthog.capture``'s) carries them, and a task
    or job enqueued from here passes them on. Returns the undo (None: nothing applied)."""
    if not tags:
        return None
    try:
        from posthog import contexts
    except ImportError:  # pragma: no cover - posthog is a dependency
        return None
    # fresh=False: a task applied eagerly inside another keeps the outer tags under its own.
    scope = contexts.new_context(fresh=False, capture_exceptions=False)
    scope.__enter__()
    try:
        for key, value in tags.items():
            contexts.tag(key, value)
    except Exception:
        scope.__exit__(None, None, None)
        raise

    def undo() -> None:
        scope.__exit__(None, None, None)

    return undo


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return _VALUE_CONTROL_CHARS.sub("", value)[:_MAX_HEADER_LENGTH]
    return value
