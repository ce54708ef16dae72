"""Sentry's event data, read for PostHog: pure functions, no I/O, no sentry-sdk import.

Sentry's ``exception.values`` lists the root cause first; PostHog's ``$exception_list`` the
outermost (caught) exception first, so :func:`exception_list` reverses it, keeping frames,
code context and ``in_app``. Used by :mod:`posthog_errors.sentry` for events that reach
PostHog through Sentry with no live exception object (``capture_message``, a re-sent
event).
"""

from __future__ import annotations

from typing import Any

from posthog_errors._mechanisms import GENERIC, sentry_category, sentry_relation
from posthog_errors._payload import MESSAGE_TYPE

__all__ = ["exception_data", "exception_list", "message_of", "sentry_level"]


def sentry_level(event: dict[str, Any]) -> str:
    level = event.get("level") or "error"
    level = str(level).lower()
    return {"critical": "fatal", "warn": "warning"}.get(level, level)


def message_of(event: dict[str, Any]) -> str:
    message = event.get("message")
    if isinstance(message, str):
        return message
    logentry = event.get("logentry") or {}
    formatted = logentry.get("formatted") or logentry.get("message")
    return formatted if isinstance(formatted, str) else ""


def exception_data(data: Any, *, keep_vars: bool) -> Any:
    """Sentry's ``exception`` data for ``$sentry_exception``: a copy without the frames'
    ``vars`` (sentry-sdk's locals) unless code variables are on. Only the dicts on the way
    to the frames are copied; the event Sentry sends is left as it is."""
    if keep_vars or not isinstance(data, dict) or not isinstance(data.get("values"), list):
        return data
    values = []
    for value in data["values"]:
        stacktrace = value.get("stacktrace") if isinstance(value, dict) else None
        if isinstance(stacktrace, dict) and isinstance(stacktrace.get("frames"), list):
            frames = [
                {k: v for k, v in frame.items() if k != "vars"}
                if isinstance(frame, dict)
                else frame
                for frame in stacktrace["frames"]
            ]
            value = {**value, "stacktrace": {**stacktrace, "frames": frames}}
        values.append(value)
    return {**data, "values": values}


def exception_list(event: dict[str, Any]) -> list[dict[str, Any]]:
    """PostHog's ``$exception_list`` from Sentry's data: outermost first (Sentry lists the
    root cause first), with frames, code context and ``in_app`` kept."""
    values = list(reversed((event.get("exception") or {}).get("values") or []))
    entries: list[dict[str, Any]] = []
    for index, value in enumerate(values[:50]):
        mechanism: dict[str, Any] = {"synthetic": False, "exception_id": index}
        sentry_mechanism = value.get("mechanism") or {}
        if index == 0:
            handled = sentry_mechanism.get("handled")
            mechanism.update(
                type=sentry_category(sentry_mechanism.get("type")),
                handled=handled if isinstance(handled, bool) else True,
            )
        else:
            mechanism.update(type="chained", parent_id=index - 1)
            relation = sentry_relation(sentry_mechanism.get("source"))
            if relation is not None:  # unknown: omitted (PostHog's SDK event spec)
                mechanism["source"] = relation
        entry: dict[str, Any] = {
            "type": str(value.get("type") or "Error"),
            "value": str(value.get("value") or ""),
            "module": value.get("module") if isinstance(value.get("module"), str) else None,
            "mechanism": mechanism,
        }
        raw_frames = (value.get("stacktrace") or {}).get("frames") or []
        frames = [_frame(f) for f in raw_frames if isinstance(f, dict)]
        if frames:
            entry["stacktrace"] = {"type": "raw", "frames": frames[-100:]}
        entries.append(entry)
    if not entries:
        entries.append(
            {
                "type": MESSAGE_TYPE,
                "value": message_of(event),
                "module": None,
                "mechanism": {
                    "type": GENERIC,
                    "handled": True,
                    "synthetic": True,
                    "exception_id": 0,
                },
            }
        )
    return entries


def _frame(frame: dict[str, Any]) -> dict[str, Any]:
    def text(key: str) -> str | None:
        value = frame.get(key)
        return value if isinstance(value, str) else None

    def lines(key: str) -> list[str]:
        value = frame.get(key)
        return [line for line in value if isinstance(line, str)] if isinstance(value, list) else []

    built: dict[str, Any] = {
        "platform": "python",
        "filename": text("filename") or text("abs_path") or "<unknown>",
        "abs_path": text("abs_path"),
        "function": text("function") or "<unknown>",
        "module": text("module"),
        "lineno": _u32(frame.get("lineno")),
        "pre_context": lines("pre_context"),
        "context_line": text("context_line"),
        "post_context": lines("post_context"),
        "in_app": frame.get("in_app") is True,
    }
    colno = _u32(frame.get("colno"))
    if colno is not None:
        built["colno"] = colno
    return built


_U32 = 2**32


def _u32(value: object) -> int | None:
    """A line or column number as PostHog takes it, an unsigned 32-bit integer; anything
    else Sentry's data may hold (``True``, ``-1``, ``2**32``, ``12.0``, ``"12"``) is
    dropped: PostHog's legacy pipeline rejects the whole event for it, and v2 leaves the
    stack unresolved."""
    return value if type(value) is int and 0 <= value < _U32 else None
