"""Printing a received ``$exception`` event the way a Python developer reads a traceback.

Shared by ``posthog-errors demo`` and ``posthog-errors serve``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

__all__ = ["Style", "render_event"]


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


def render_event(event: dict[str, Any], *, style: Style | None = None, max_frames: int = 3) -> str:
    """One block: headline, who and where from, then the innermost in-app frames."""
    style = style or Style(sys.stdout)
    props = event.get("properties") or {}
    exceptions = props.get("$exception_list") or [{}]
    root = exceptions[0]
    personless = props.get("$process_person_profile") is False
    who = "(personless)" if personless else str(event.get("distinct_id"))
    lines = [
        style.bold(style.red(f"{root.get('type', '?')}: {root.get('value', '')}")),
        style.dim(
            f"  level={props.get('$exception_level')}  distinct_id={who}  "
            f"source={props.get('$exception_source')}  handled={props.get('$exception_handled')}"
        ),
    ]
    if props.get("$session_id"):
        lines.append(style.dim(f"  session_id={props['$session_id']}"))
    if props.get("$exception_fingerprint"):
        lines.append(style.dim(f"  fingerprint={props['$exception_fingerprint']}"))
    for index, entry in enumerate(exceptions):
        if index:
            relation = (entry.get("mechanism") or {}).get("source", "context")
            lines.append(f"  {relation}: {entry.get('type')}: {entry.get('value')}")
        frames = (entry.get("stacktrace") or {}).get("frames") or []
        shown = [f for f in frames if f.get("in_app")][-max_frames:]
        for frame in shown:
            lines.append(
                style.cyan(
                    f'    File "{frame.get("filename")}", line {frame.get("lineno")}, '
                    f"in {frame.get('function')}"
                )
            )
            if frame.get("context_line"):
                lines.append(f"      {frame['context_line'].strip()}")
    return "\n".join(lines)
