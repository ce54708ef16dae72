"""The ``$exception`` payload builder: pure, no I/O beyond reading source through linecache.

Everything here runs on the worker thread (or in :func:`exception_properties`, for users who
want the payload itself) and never raises: hostile ``__str__``/``__repr__``, missing source,
frozen modules and cyclic chains all produce a valid payload, per exception-event.md.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from posthog_errors._code_variables import VariableBudget, serialize_locals
from posthog_errors._frames import FrameBuilder, safe_text
from posthog_errors._options import PayloadOptions, as_names
from posthog_errors._redact import redact
from posthog_errors._snapshot import EventSnapshot, ExceptionSnapshot, walk_exceptions

__all__ = ["LEVELS", "MESSAGE_TYPE", "build_properties", "exception_properties", "json_safe"]

LEVELS = ("fatal", "error", "warning", "log", "info", "debug")
# The type of the synthetic entry of a message-only event (a log record with no exception).
MESSAGE_TYPE = "LogMessage"

# Bounds for user properties (record extras, bound properties): JSON-safe and small.
_MAX_PROPERTIES = 100
_MAX_PROPERTY_DEPTH = 4
_MAX_PROPERTY_TEXT = 1024

# Keys the payload owns; user properties cannot overwrite them. ``$exception_fingerprint``
# is deliberately absent: setting a custom fingerprint is a documented use.
_RESERVED = frozenset(
    {"$exception_list", "$exception_level", "$exception_source", "$exception_handled"}
)


def exception_properties(
    exc: BaseException,
    *,
    level: str = "error",
    handled: bool = True,
    mechanism: str = "generic",
    source: str = "python.manual",
    in_app_include: Iterable[str] = (),
    in_app_exclude: Iterable[str] = (),
    project_root: str | None = None,
    max_frames: int = 100,
    capture_code_variables: bool = False,
) -> dict[str, Any]:
    """The ``$exception`` properties for ``exc``, as this library would send them.

    Pure: no network, no client, no global state touched. Useful to inspect or test what
    PostHog will receive. Bad options raise ``ValueError``/``TypeError``; a bad exception
    never makes it raise.
    """
    options = _options(
        as_names(in_app_include),
        as_names(in_app_exclude),
        project_root,
        max_frames,
        bool(capture_code_variables),
    )
    builder = _builder(options)
    if not isinstance(exc, BaseException):
        raise TypeError(f"exception_properties() takes an exception, got {type(exc).__name__}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    snapshot = EventSnapshot(
        uuid="",
        timestamp=0.0,
        exceptions=walk_exceptions(
            exc,
            max_exceptions=options.max_exceptions,
            max_frames=options.max_frames,
            locals_for=builder.in_app_code if options.capture_code_variables else None,
        ),
        level=level,
        handled=bool(handled),
        mechanism=mechanism,
        source=source,
    )
    return build_properties(snapshot, builder)


@functools.lru_cache(maxsize=16)
def _options(
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    root: str | None,
    max_frames: int,
    code_variables: bool,
) -> PayloadOptions:
    return PayloadOptions(
        in_app_include=include,
        in_app_exclude=exclude,
        project_root=root,
        max_frames=max_frames,
        capture_code_variables=code_variables,
    )


@functools.lru_cache(maxsize=16)
def _builder(options: PayloadOptions) -> FrameBuilder:
    return FrameBuilder(options)


def build_properties(
    snapshot: EventSnapshot, builder: FrameBuilder, *, share_frames: bool = False
) -> dict[str, Any]:
    """Build the event properties for a snapshot; the caller adds client-side context.

    Frame dicts are cached per code location and shared between events. They are copied
    into each payload unless ``share_frames``: safe only when nothing will change the
    payload before the posthog client copies it (no ``before_send``).
    """
    options = builder.options
    entries: list[dict[str, Any]] = []
    sizes: list[int] = []
    budget = VariableBudget(options.code_variables_budget)
    for entry in snapshot.exceptions:
        payload, size = _exception_entry(entry, snapshot, builder, share_frames, budget)
        entries.append(payload)
        sizes.append(size)
    if snapshot.prebuilt_exceptions:
        entries = snapshot.prebuilt_exceptions
        sizes = [len(json.dumps(entries, default=str))]
    # The estimate counts characters; JSON can take up to 6 bytes for one (\uXXXX), so
    # only an estimate over a sixth of the budget is worth measuring for real.
    if sum(sizes) * 6 > options.max_event_bytes:
        _shrink(entries, options.max_event_bytes)

    properties: dict[str, Any] = json_safe(snapshot.properties) if snapshot.properties else {}
    if options.redact_secrets and isinstance(properties.get("log_message"), str):
        properties["log_message"] = redact(properties["log_message"])
    for key in _RESERVED.intersection(properties):
        del properties[key]
    properties["$exception_list"] = entries
    properties["$exception_level"] = snapshot.level
    properties["$exception_source"] = snapshot.source
    properties["$exception_handled"] = snapshot.handled
    fingerprint = snapshot.fingerprint or properties.get("$exception_fingerprint")
    if fingerprint is not None:
        properties["$exception_fingerprint"] = _fingerprint_text(fingerprint)
    if snapshot.session_id:
        properties["$session_id"] = snapshot.session_id
    return properties


def _exception_entry(
    entry: ExceptionSnapshot,
    snapshot: EventSnapshot,
    builder: FrameBuilder,
    share_frames: bool,
    budget: VariableBudget,
) -> tuple[dict[str, Any], int]:
    limit = builder.options.max_value_length
    exc = entry.exception
    if exc is None:
        type_name, module, value = entry.synthetic_type or "Message", None, entry.synthetic_value
    else:
        type_name, module, value = _type_name(exc), _type_module(exc), _message(exc)
    text = safe_text(value if value is not None else "", limit)
    if builder.options.redact_secrets:
        text = redact(text)
    result: dict[str, Any] = {
        "type": safe_text(type_name, 512),
        "value": text,
        "module": safe_text(module, 512) if module else None,
        "mechanism": _mechanism(entry, snapshot),
    }
    size = 200 + len(result["value"])
    if entry.frames:
        frames = []
        for code, lineno, frame_module in entry.frames:
            cached, frame_size = builder.frame(code, lineno, frame_module)
            # A copy unless shared: the cached dict is used by every event from this line,
            # and a before_send that scrubs frames must not change the next event.
            frames.append(
                cached
                if share_frames
                else {
                    **cached,
                    "pre_context": list(cached["pre_context"]),
                    "post_context": list(cached["post_context"]),
                }
            )
            size += frame_size
        if entry.frame_locals is not None:
            size += _attach_code_variables(frames, entry.frame_locals, budget)
        result["stacktrace"] = {"type": "raw", "frames": frames}
    return result, size


def _attach_code_variables(
    frames: list[dict[str, Any]],
    frame_locals: tuple[dict[str, Any] | None, ...],
    budget: VariableBudget,
) -> int:
    """Each in-app frame's own locals, innermost frames first (they matter most)."""
    before = budget.remaining
    for index in reversed(range(min(len(frames), len(frame_locals)))):
        variables = frame_locals[index]
        if variables is None or not frames[index]["in_app"] or budget.remaining <= 0:
            continue
        serialized = serialize_locals(variables, budget)
        if serialized:
            frames[index] = {**frames[index], "code_variables": serialized}
    return before - budget.remaining


def _mechanism(entry: ExceptionSnapshot, snapshot: EventSnapshot) -> dict[str, Any]:
    synthetic = entry.stack_is_synthetic or entry.exception is None
    if entry.parent_id is None:
        mechanism: dict[str, Any] = {
            "type": snapshot.mechanism,
            "handled": snapshot.handled,
            "synthetic": synthetic,
            "exception_id": entry.exception_id,
        }
    else:
        mechanism = {
            "type": "chained",
            "synthetic": synthetic,
            "exception_id": entry.exception_id,
            "parent_id": entry.parent_id,
            "source": entry.relation or "context",
        }
    if entry.is_group:
        mechanism["is_exception_group"] = True
    return mechanism


def _shrink(entries: list[dict[str, Any]], budget: int) -> None:
    """Fit an oversized event, measuring the real JSON after each step.

    An event over the client's 900 KiB limit is dropped silently after its uuid was
    returned, so sending less beats sending nothing. Steps, least valuable first: code
    variables, context lines around each frame, middle frames, each frame's own line, long
    values, then the stack traces of the innermost (last) entries.
    """

    def frames_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = entry.get("stacktrace", {}).get("frames", [])
        return frames

    def replace_frames(**changes: Any) -> None:
        # New frame dicts, never edits: frames may be the cached ones, shared by events.
        for entry in entries:
            if "stacktrace" in entry:
                entry["stacktrace"] = {
                    **entry["stacktrace"],
                    "frames": [{**frame, **changes} for frame in frames_of(entry)],
                }

    def fits() -> bool:
        return len(json.dumps(entries).encode()) <= budget

    if fits():
        return
    for entry in entries:  # code variables go first
        if "stacktrace" in entry:
            entry["stacktrace"] = {
                **entry["stacktrace"],
                "frames": [
                    {k: v for k, v in frame.items() if k != "code_variables"}
                    for frame in frames_of(entry)
                ],
            }
    if fits():
        return
    replace_frames(pre_context=[], post_context=[])
    if fits():
        return
    for entry in entries:
        frames = frames_of(entry)
        if len(frames) > 20:
            entry["stacktrace"]["frames"] = frames[:10] + frames[-10:]
    if fits():
        return
    replace_frames(context_line=None)
    for entry in entries:
        entry["value"] = entry["value"][:1024]
    for entry in reversed(entries[1:]):
        if fits():
            return
        entry.pop("stacktrace", None)
    if not fits():
        entries[0].pop("stacktrace", None)


def _type_name(exc: BaseException) -> str:
    try:
        cls = type(exc)
        name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None)
        return str.__str__(name) if isinstance(name, str) else "<unknown>"
    except Exception:
        return "<unknown>"


def _type_module(exc: BaseException) -> str | None:
    try:
        module = getattr(type(exc), "__module__", None)
        if not isinstance(module, str):
            return None
        module = str.__str__(module)
    except Exception:
        return None
    return None if module in ("builtins", "__builtins__") else module


def _message(exc: BaseException) -> str:
    """``str(exc)``, falling back the way :mod:`traceback` does when ``__str__`` raises."""
    try:
        text = str(exc)
        if isinstance(text, str):
            return str.__str__(text)  # a plain str: a subclass's methods never run
    except Exception:
        pass
    try:
        return f"<exception str() failed: {object.__repr__(exc)}>"
    except Exception:
        return "<exception str() failed>"


def _fingerprint_text(value: object) -> str:
    if isinstance(value, str):
        return safe_text(value, 512)
    if isinstance(value, (list, tuple)):
        return safe_text("/".join(str(part) for part in value), 512)
    return safe_text(str(value), 512)


def json_safe(value: Any, depth: int = 0) -> Any:
    """A bounded, JSON-safe copy of user data: what cannot be encoded becomes its repr.

    Runs on the worker, so a slow or hostile ``__repr__`` costs the app nothing, and its
    result is cut to a bounded length.
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, str):
        return safe_text(value, _MAX_PROPERTY_TEXT)
    if depth >= _MAX_PROPERTY_DEPTH:
        return _bounded_repr(value)
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in list(value.items())[:_MAX_PROPERTIES]:
            name = key if isinstance(key, str) else _bounded_repr(key)
            result[safe_text(name, 200)] = json_safe(item, depth + 1)
        return result
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item, depth + 1) for item in list(value)[:_MAX_PROPERTIES]]
    return _bounded_repr(value)


def _bounded_repr(value: Any) -> str:
    try:
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return safe_text(text, _MAX_PROPERTY_TEXT)
