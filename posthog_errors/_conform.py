"""What every event handed to the posthog client must meet, whatever the user passed.

PostHog's ingestion reads some property keys as typed fields (exception-event.md, "Keys the
server reads as typed fields"): a value of the wrong type there rejects the whole event, as
does JSON nested deeper than about 64 levels. User properties (``properties=``, log
``extra=``, ``bind(properties=...)``) may carry any of those keys, and a ``before_send``
hook may change anything, so:

* :func:`sanitize_typed_keys` coerces a typed key's value when the intent is plain (a
  number where a string is expected, a list fingerprint joined with ``/``), and drops it
  otherwise;
* :func:`conform_exception_list` checks an ``$exception_list`` that this library did not
  build frame by frame itself (a Sentry-derived one, or one a ``before_send`` returned):
  None when it is unusable (the event is then dropped), else a list whose values are
  encodable strings cut at :data:`MAX_VALUE_BYTES` and whose ``lineno``/``colno`` are
  unsigned 32-bit integers or null;
* :func:`conform_after_hook` applies both, plus the nesting bound, to what ``before_send``
  returned, and removes the keys PostHog's ingestion owns (``$exception_fingerprint_version``,
  ``$exception_release``); an ``$exception_source`` it set must have the spec's
  ``<technology>.<hook>`` form.

Bad user input is never an internal error: each kind is logged once per process on the
``posthog_errors`` logger (:func:`bad_input`) and counted in ``invalid_input`` every time.
Nothing here mutates a container it did not create: a changed entry or frame is a new dict.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from posthog_errors._frames import safe_text
from posthog_errors._mechanisms import PROCESSOR_OWNED, is_source_name
from posthog_errors._stats import STATS

__all__ = [
    "MAX_NESTING",
    "MAX_VALUE_BYTES",
    "TYPED_KEYS",
    "bad_input",
    "conform_after_hook",
    "conform_exception_list",
    "copy_for_hook",
    "cut_utf8",
    "reset_warnings",
    "sanitize_typed_keys",
    "warn_once",
]

logger = logging.getLogger("posthog_errors")

# The server cuts an exception's value at 10,000 bytes; sending more only costs bandwidth.
MAX_VALUE_BYTES = 10_000
# The deepest a value inside the properties may nest (the properties object is level 1).
# The server rejects JSON nested deeper than about 64 levels, counted from the request
# body: ``{"batch": [event]}`` and the event itself add three levels, and a margin is kept.
MAX_NESTING = 56
_TOO_DEEP = f"[nested deeper than {MAX_NESTING} levels: cut]"
# The server's bound on a new issue's name.
_ISSUE_NAME_BYTES = 255
_U32 = 2**32
_CONTEXT_LINES = 5

_STR_LIST_KEYS = frozenset(
    {"$exception_types", "$exception_values", "$exception_sources", "$exception_functions"}
)
_STR_KEYS = frozenset(
    {
        "$exception_proposed_fingerprint",
        "$exception_fingerprint",
        "$issue_name",
        "$issue_description",
        "$session_id",  # not cymbal's, but PostHog reads it as the session's id: a string
    }
)
_RECORD_TYPES = frozenset({"frame", "exception", "custom", "manual"})
TYPED_KEYS = (
    _STR_LIST_KEYS
    | _STR_KEYS
    | {
        "$exception_releases",
        "$exception_issue_id",
        "$exception_fingerprint_record",
        "$debug_images",
        "$exception_handled",
    }
)

_warned: set[str] = set()


def warn_once(kind: str, message: str, *args: object, exc_info: bool = False) -> None:
    """Log ``message`` on the ``posthog_errors`` logger the first time ``kind`` happens.

    ``set.add`` after a membership test: two threads may both log the first one, never
    more; no lock, as a signal handler may capture meanwhile."""
    if kind in _warned:
        return
    _warned.add(kind)
    logger.warning(message, *args, exc_info=exc_info)


def bad_input(kind: str, message: str, *args: object) -> None:
    """Run-time bad input given a fallback: counted every time, said once per kind."""
    STATS.add("invalid_input")
    warn_once(kind, message, *args)


def reset_warnings() -> None:
    """Forget which kinds were logged (tests)."""
    _warned.clear()


def cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary, marked with
    "..." when cut. ``text`` must be encodable (see ``safe_text``)."""
    if len(text) * 4 <= limit or (len(text) <= limit and text.isascii()):
        return text
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    # "ignore" drops only the partial character the slice may end in.
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


# -- typed keys ------------------------------------------------------------------------


def sanitize_typed_keys(properties: dict[str, Any]) -> bool:
    """Make the typed keys of ``properties`` (a dict this library owns) meet the server's
    types, in place; True when anything changed (the caller's size estimate is then
    unknown). ``$exception_handled`` is the payload's own and is left to it."""
    changed = False
    for key in TYPED_KEYS.intersection(properties):
        if key == "$exception_handled":
            continue
        value = properties[key]
        fixed = _typed_value(key, value)
        if fixed is _DROP:
            del properties[key]
            bad_input(
                f"typed key {key}",
                "dropped the property %s: PostHog reads it as a typed field and %s is not "
                "one (it would reject the whole event)",
                key,
                type(value).__name__,
            )
            changed = True
        elif fixed is not value:
            properties[key] = fixed
            # A string made encodable, or a name cut to the server's 255 bytes: no warning.
            if not (type(value) is str and type(fixed) is str) and not _same(fixed, value):
                bad_input(
                    f"typed key {key}",
                    "changed the property %s to the type PostHog reads it as",
                    key,
                )
            changed = True
    return changed


class _Drop:
    pass


_DROP: Any = _Drop()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _typed_value(key: str, value: Any) -> Any:
    if key in _STR_KEYS:
        if isinstance(value, str):
            text = safe_text(value, 64 * 1024)
            if key == "$issue_name":
                text = cut_utf8(text, _ISSUE_NAME_BYTES)
            return value if text == value and type(value) is str else text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if (
            key == "$exception_fingerprint"
            and isinstance(value, (list, tuple))
            and all(isinstance(part, (str, int, float)) for part in value)
        ):
            return safe_text("/".join(str(part) for part in value), 512)
        return _DROP
    if key in _STR_LIST_KEYS:
        if isinstance(value, list) and all(v is None or type(v) is str for v in value):
            return value
        return _DROP
    if key == "$exception_releases":
        return value if isinstance(value, dict) else _DROP
    if key == "$exception_issue_id":
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, str):
            try:
                return str(uuid.UUID(value))
            except ValueError:
                return _DROP
        return _DROP
    if key == "$exception_fingerprint_record":
        if not isinstance(value, list):
            return _DROP
        records = [r for r in value if isinstance(r, dict) and r.get("type") in _RECORD_TYPES]
        return value if len(records) == len(value) else records
    if key == "$debug_images":
        if not isinstance(value, list):
            return _DROP
        images = [image for image in value if isinstance(image, dict)]
        return value if len(images) == len(value) else images
    return value


# -- the exception list ----------------------------------------------------------------


def conform_exception_list(entries: object) -> list[dict[str, Any]] | None:
    """``entries`` made to meet the server's types, or None when they cannot be (not a
    non-empty list of objects with a string ``type``). Entries and frames that need a
    change are copied, never edited."""
    if not isinstance(entries, list) or not entries:
        return None
    result: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        kind = entry.get("type")
        if not isinstance(kind, str) or not kind:
            return None
        result.append(_conform_entry(entry))
    return result


def _conform_entry(entry: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    value = entry.get("value")
    if not isinstance(value, str):
        text = "" if value is None else _text_of(value)
    else:
        text = safe_text(value, 4 * MAX_VALUE_BYTES)
    text = cut_utf8(text, MAX_VALUE_BYTES)
    if text is not value:
        changes["value"] = text
    if "stacktrace" in entry:
        stacktrace = entry["stacktrace"]
        frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
        if not isinstance(frames, list) or not frames:
            changes["stacktrace"] = None
        else:
            fixed = [_conform_frame(frame) for frame in frames if isinstance(frame, dict)]
            if len(fixed) != len(frames) or any(
                a is not b for a, b in zip(fixed, frames, strict=True)
            ):
                changes["stacktrace"] = {**stacktrace, "frames": fixed} if fixed else None
    if not changes:
        return entry
    new = {**entry, **changes}
    if new.get("stacktrace", ...) is None:
        del new["stacktrace"]
    return new


def _conform_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """The frame rules of exception-event.md: required strings present, optional ones a
    string or null, context lists of strings only, ``in_app`` a bool, line and column
    numbers unsigned 32-bit integers or null (a Sentry frame may carry ``True``)."""
    changes: dict[str, Any] = {}
    if frame.get("platform") != "python":
        changes["platform"] = "python"
    for key in ("filename", "function"):
        value = frame.get(key)
        if not isinstance(value, str) or not value:
            changes[key] = "<unknown>"
    for key in ("abs_path", "module", "context_line"):
        value = frame.get(key)
        if key not in frame or (value is not None and not isinstance(value, str)):
            changes[key] = None
    for key in ("pre_context", "post_context"):
        lines = frame.get(key)
        if not isinstance(lines, list):
            changes[key] = []
        elif len(lines) > _CONTEXT_LINES or not all(isinstance(line, str) for line in lines):
            kept = [line for line in lines if isinstance(line, str)]
            # The lines nearest the frame's own line.
            changes[key] = kept[-_CONTEXT_LINES:] if key == "pre_context" else kept[:_CONTEXT_LINES]
    if type(frame.get("in_app")) is not bool:
        changes["in_app"] = frame.get("in_app") is True
    for key in ("lineno", "colno"):
        value = frame.get(key, None if key == "lineno" else 0)
        if value is not None and not _is_u32(value):
            changes[key] = None
    if "lineno" not in frame:
        changes["lineno"] = None
    return {**frame, **changes} if changes else frame


def _is_u32(value: object) -> bool:
    return type(value) is int and 0 <= value < _U32


def _text_of(value: object) -> str:
    try:
        text = str(value)
        if type(text) is not str:
            text = str.__str__(text)
    except Exception:
        text = f"<{type(value).__name__}>"
    return safe_text(text, 4 * MAX_VALUE_BYTES)


# -- before_send -----------------------------------------------------------------------


def copy_for_hook(value: Any, depth: int = 1) -> Any:
    """A copy of every dict and list in ``value``, for ``before_send``: whatever the hook
    changes, no cached frame, shared list or object of the app's changes with it.
    Containers nested deeper than :data:`MAX_NESTING` become a short note."""
    if isinstance(value, dict):
        if depth > MAX_NESTING:
            return _TOO_DEEP
        return {key: copy_for_hook(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        if depth > MAX_NESTING:
            return _TOO_DEEP
        return [copy_for_hook(item, depth + 1) for item in value]
    return value


def _bound_nesting(value: Any, depth: int) -> Any:
    """``value``, or a copy of the path down to where it nests too deep, cut there."""
    if isinstance(value, dict):
        if depth > MAX_NESTING:
            return _TOO_DEEP
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            bounded = _bound_nesting(item, depth + 1)
            if bounded is not item:
                if changed is None:
                    changed = {}
                changed[key] = bounded
        return value if changed is None else {**value, **changed}
    if isinstance(value, (list, tuple)):
        if depth > MAX_NESTING:
            return _TOO_DEEP
        items = [_bound_nesting(item, depth + 1) for item in value]
        if isinstance(value, list) and all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items
    return value


def conform_after_hook(returned: dict[str, Any], built: dict[str, Any]) -> dict[str, Any] | None:
    """What ``before_send`` returned, made to meet the server's types; None when its
    ``$exception_list`` is unusable (the event is dropped). ``built`` is the event as it
    was before the hook ran: an own key the hook broke gets its built value back."""
    properties: dict[str, Any] = _bound_nesting(dict(returned), 1)
    entries = conform_exception_list(properties.get("$exception_list"))
    if entries is None:
        return None
    properties["$exception_list"] = entries
    for key, valid in (
        ("$exception_level", lambda v: v in ("fatal", "error", "warning", "log", "info", "debug")),
        ("$exception_source", is_source_name),
        ("$exception_handled", lambda v: isinstance(v, bool)),
    ):
        if key in properties and not _safely(valid, properties[key]):
            bad_input(
                f"before_send {key}",
                "before_send set %s to a value PostHog does not take; the built one is sent",
                key,
            )
            if key in built:
                properties[key] = built[key]
            else:
                del properties[key]
    for key in PROCESSOR_OWNED.intersection(properties):
        del properties[key]  # PostHog's ingestion derives these; an SDK never sends them
    sanitize_typed_keys(properties)
    return properties


def _safely(check: Any, value: object) -> bool:
    try:
        return bool(check(value))
    except Exception:
        return False
