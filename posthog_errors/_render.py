"""Printing what a local capture server received, the way a Python developer reads it: a
``$exception`` event like a traceback, a PostHog Logs record like a log line.

Shared by ``posthog-errors demo`` and ``posthog-errors serve``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, TextIO

__all__ = ["Style", "door_of", "fingerprint_of", "render_event", "render_log_record"]

# How an event without ``$exception_source`` is shown: PostHog's SDK event spec has a manual
# capture (``capture_exception``) send none.
MANUAL = "manual capture"


def door_of(properties: dict[str, Any]) -> str:
    """The door an event came through, as shown: its ``$exception_source``, or
    :data:`MANUAL`."""
    source = properties.get("$exception_source")
    return source if isinstance(source, str) and source else MANUAL


class Style:
    """ANSI colour on a terminal, plain text otherwise (``NO_COLOR`` is respected)."""

    def __init__(self, stream: TextIO) -> None:
        isatty = getattr(stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) and not os.environ.get("NO_COLOR")

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)


def render_event(event: dict[str, Any], style: Style, *, max_frames: int = 3) -> str:
    """One block: the exception, who and where from, then the innermost in-app frames of
    each exception of the chain, with their code, like a traceback.

    Who is the distinct ID, or "personless (no distinct id)" for an event sent with
    ``$process_person_profile`` false; the session ID follows when the event has one. Both
    are read from the properties alone, where the capture server puts them whichever
    capture protocol carried the event."""
    props = event.get("properties") or {}
    exceptions = props.get("$exception_list") or [{}]
    root = exceptions[0]
    personless = props.get("$process_person_profile") is False
    who = "personless (no distinct id)" if personless else f"distinct_id={event.get('distinct_id')}"
    lines = [
        style.bold(style.red(f"{root.get('type', '?')}: {root.get('value', '')}")),
        style.dim(
            f"  level={props.get('$exception_level')}  {who}  "
            f"source={door_of(props)}  mechanism={(root.get('mechanism') or {}).get('type')}  "
            f"handled={props.get('$exception_handled')}"
        ),
    ]
    for key in ("$session_id", "$exception_fingerprint", "$sentry_event_id"):
        if props.get(key):
            lines.append(style.dim(f"  {key.lstrip('$')}={props[key]}"))
    for index, entry in enumerate(exceptions):
        if index:
            relation = (entry.get("mechanism") or {}).get("source", "nested")
            lines.append(f"  {relation}: {entry.get('type')}: {entry.get('value')}")
        frames = (entry.get("stacktrace") or {}).get("frames") or []
        shown = [f for f in frames if f.get("in_app")][-max_frames:]
        for position, frame in enumerate(shown):
            lines.append(
                style.cyan(
                    f'    File "{frame.get("filename")}", line {frame.get("lineno")}, '
                    f"in {frame.get('function')}"
                )
            )
            innermost = position == len(shown) - 1
            lines.extend(_code(frame, style, full=innermost))
    return "\n".join(lines)


def _code(frame: dict[str, Any], style: Style, *, full: bool) -> list[str]:
    line = frame.get("context_line")
    if not isinstance(line, str):
        return []
    if not full:
        return [f"      {line.strip()}"]
    before = [s for s in frame.get("pre_context") or [] if isinstance(s, str)][-2:]
    after = [s for s in frame.get("post_context") or [] if isinstance(s, str)][:1]
    lineno = frame.get("lineno") or 0
    out = []
    for offset, text in enumerate(before, start=lineno - len(before)):
        out.append(style.dim(f"      {offset:>4}   {text}"))
    out.append(style.bold(f"      {lineno:>4} > {line}"))
    for offset, text in enumerate(after, start=lineno + 1):
        out.append(style.dim(f"      {offset:>4}   {text}"))
    return out


def fingerprint_of(event: dict[str, Any]) -> str:
    """What groups an event in a summary: its fingerprint, else type and raising line."""
    props = event.get("properties") or {}
    if isinstance(props.get("$exception_fingerprint"), str):
        return str(props["$exception_fingerprint"])
    root = (props.get("$exception_list") or [{}])[0]
    frames = (root.get("stacktrace") or {}).get("frames") or []
    in_app = [f for f in frames if f.get("in_app")] or frames
    where = f" at {in_app[-1].get('filename')}:{in_app[-1].get('lineno')}" if in_app else ""
    return f"{root.get('type', '?')}{where}"


# The attributes a log line shows up front, by the names PostHog links them with; any other
# attribute follows them as key=value.
_LINK_ATTRIBUTES = (
    ("posthogDistinctId", "distinct_id"),
    ("sessionId", "session"),
)


def render_log_record(record: dict[str, Any], style: Style) -> str:
    """One line a record, as a log formatter would print it, then what links it to the rest
    of PostHog (person, session, trace, the ``$exception`` event it became) and its other
    attributes.

    ``record`` is a flat record as :meth:`CaptureServer.log_records` gives it."""
    attributes = dict(record.get("attributes") or {})
    nanos = record.get("time_unix_nano") or 0
    try:
        stamp = datetime.datetime.fromtimestamp(int(nanos) / 1e9).strftime("%H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError, TypeError):
        stamp = "??:??:??.???"
    level = str(record.get("severity_text") or "?")
    number = record.get("severity_number") or 0
    paint = style.red if isinstance(number, int) and number >= 17 else style.bold
    # OTLP's scope names the sender; the logger is an attribute (``logger.name``).
    logger = attributes.pop("logger.name", None) or record.get("scope") or "-"
    head = f"{stamp} {paint(f'{level:<7}')} {style.cyan(str(logger))}  "
    head += str(record.get("body", ""))
    links = []
    for key, shown in _LINK_ATTRIBUTES:
        if key in attributes:
            links.append(f"{shown}={attributes.pop(key)}")
    if record.get("trace_id"):
        links.append(f"trace={record['trace_id']}")
    if record.get("span_id"):
        links.append(f"span={record['span_id']}")
    rest = [f"{key}={value}" for key, value in sorted(attributes.items(), key=lambda kv: kv[0])]
    tail = "  ".join(links + rest)
    return head + ("\n" + style.dim(f"    {tail}") if tail else "")
