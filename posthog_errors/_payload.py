"""The ``$exception`` payload builder: pure, no I/O beyond reading source through linecache.

Everything here runs on the worker thread (or in :func:`exception_properties`, for users who
want the payload itself) and never raises: hostile ``__repr__``, missing source, frozen
modules and cyclic chains all produce a valid payload, per exception-event.md. The
exception's own text (``str(exc)``) was read on the caller's thread, into the snapshot
(see ``_snapshot``), so that no queued event holds an exception, its traceback or locals.
Each value is cut to the server's 10,000 UTF-8 bytes here, after redaction. User properties
named like a key PostHog reads as a typed field are coerced or dropped (see ``_conform``).

**Size.** The whole properties JSON (the exception list *and* the user's properties: log
``extra=``, bound properties, Sentry data) is measured against ``max_event_bytes`` (512 KiB
by default, well under the posthog client's 900 KiB drop limit). An event over it is
shrunk, measuring the real JSON after each step, in this order:

1. user properties whose JSON is over 2,100 bytes, largest first, each replaced by a
   string: the first 1,000 characters of its JSON and ``... [cut from N bytes: event size
   limit]``
   (a key PostHog reads as a typed field, such as ``$exception_fingerprint_record``, is
   removed instead); the exception list is untouched while this suffices;
2. code variables;
3. context lines around each frame;
4. middle frames (the outermost and innermost 10 of each stack are kept);
5. each frame's own line, and exception values beyond 1,024 characters;
6. the stack traces of the innermost (last) entries, then of the first.

An event still over the client's limit after that is never handed to the client (see
``Reporter.deliver``): it is dropped and counted as ``dropped``.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable
from typing import Any

from posthog_errors._code_variables import VariableBudget, int_text, serialize_locals
from posthog_errors._conform import MAX_VALUE_BYTES, cut_utf8, sanitize_typed_keys
from posthog_errors._frames import FrameBuilder, safe_text
from posthog_errors._log_message import (
    DESCRIPTION_CHARS,
    ISSUE_NAME_BYTES,
    MessageGroup,
    call_site,
    group_digest,
    issue_description,
    issue_name,
)
from posthog_errors._mechanisms import PROCESSOR_OWNED
from posthog_errors._options import PayloadOptions, as_names
from posthog_errors._snapshot import EventSnapshot, ExceptionSnapshot, walk_exceptions
from posthog_errors._steps import render as render_steps

__all__ = [
    "LEVELS",
    "MESSAGE_TYPE",
    "build_properties",
    "build_properties_sized",
    "exception_properties",
    "json_safe",
    "json_size",
]

LEVELS = ("fatal", "error", "warning", "log", "info", "debug")
# The type of the synthetic entry of a message-only event (a log record with no exception).
MESSAGE_TYPE = "LogMessage"

# Bounds for user properties (record extras, bound properties): JSON-safe and small.
_MAX_PROPERTIES = 100
# Deep enough for Sentry's exception data (values > frames > vars > a value); the server
# rejects JSON nested past about 64 levels.
_MAX_PROPERTY_DEPTH = 8
_MAX_PROPERTY_TEXT = 1024

# Keys the payload owns; user properties cannot overwrite them (a manual capture has no
# ``$exception_source``, and a user's cannot impersonate an integration's), nor set the
# keys PostHog's ingestion derives itself. ``$exception_fingerprint`` is deliberately
# absent: setting a custom fingerprint is a documented use.
_RESERVED = (
    frozenset({"$exception_list", "$exception_level", "$exception_source", "$exception_handled"})
    | PROCESSOR_OWNED
)
# Properties the payload sets itself: never cut to fit the size budget.
_OWN = _RESERVED | {"$exception_fingerprint", "$session_id"}
# Keys PostHog's ingestion reads as typed fields (exception-event.md): a string in their
# place would reject the whole event, so when too big they are removed, not cut.
_TYPED_KEYS = frozenset(
    {
        "$exception_types",
        "$exception_values",
        "$exception_sources",
        "$exception_functions",
        "$exception_releases",
        "$exception_issue_id",
        "$exception_proposed_fingerprint",
        "$exception_fingerprint_record",
        "$issue_name",
        "$issue_description",
        "$debug_images",
    }
)
# What is left of a user property cut to fit the budget: this many characters of its JSON,
# and a note. Only a property whose JSON is over twice that (plus the note) is cut, so a
# cut always saves bytes (the preview's quotes and backslashes are escaped once more).
_PROPERTY_PREVIEW = 1000
_CUTTABLE_PROPERTY = 2 * _PROPERTY_PREVIEW + 100
# JSON (``ensure_ascii``, as the posthog client measures) takes at most 12 bytes for one
# character (an astral one: a \uXXXX\uXXXX pair); the estimates count characters.
_MAX_BYTES_PER_CHAR = 12


def exception_properties(
    exc: BaseException,
    *,
    level: str = "error",
    handled: bool = True,
    mechanism: str = "generic",
    source: str | None = None,
    in_app_include: Iterable[str] = (),
    in_app_exclude: Iterable[str] = (),
    project_root: str | None = None,
    max_frames: int = 100,
    capture_code_variables: bool = False,
) -> dict[str, Any]:
    """The ``$exception`` properties for ``exc``, as this library would send them.

    Pure: no network, no client, no global state touched. Useful to inspect or test what
    PostHog will receive. ``mechanism`` is the category of ``mechanism.type`` and
    ``source`` the ``$exception_source`` (omitted when None, as for a manual capture); see
    PostHog's SDK event spec for both. Bad options raise ``ValueError``/``TypeError``; a
    bad exception never makes it raise.
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
            max_value_length=options.snapshot_value_length,
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
    return build_properties_sized(snapshot, builder, share_frames=share_frames)[0]


def build_properties_sized(
    snapshot: EventSnapshot, builder: FrameBuilder, *, share_frames: bool = False
) -> tuple[dict[str, Any], int]:
    """:func:`build_properties`, and an upper bound of the size of their JSON in bytes
    (exact when it had to be measured), after shrinking to ``max_event_bytes``."""
    options = builder.options
    entries: list[dict[str, Any]] = []
    estimate = 0  # characters; a bound in bytes once multiplied by _MAX_BYTES_PER_CHAR
    # One redaction policy (``_redact``) for everything sent; code variables always use it.
    redactor = options.redactor if options.redact_secrets else None
    budget = VariableBudget(options.code_variables_budget, options.redactor)
    for entry in snapshot.exceptions:
        payload, size = _exception_entry(entry, snapshot, builder, share_frames, budget)
        entries.append(payload)
        estimate += size
    list_bound = estimate * _MAX_BYTES_PER_CHAR
    if snapshot.prebuilt_exceptions:
        entries = snapshot.prebuilt_exceptions
        if redactor is not None:
            entries = redactor.exception_list(
                entries, options.max_value_length, options.max_line_length
            )
        list_bound = json_size(entries)

    user = snapshot.properties
    added: dict[str, Any] = {}
    if snapshot.steps is not None and not (user and "$exception_steps" in user):
        steps = render_steps(snapshot.steps)
        if steps:  # redacted below with the other properties
            added["$exception_steps"] = steps
    if options.release and not (user and "$release_id" in user):
        added["$release_id"] = options.release
    # Under the names PostHog's own apps send them (an explicit property wins).
    if options.environment and not (user and "environment" in user):
        added["environment"] = options.environment
    if options.service and not (user and "service" in user):
        added["service"] = options.service
    if added:
        user = {**user, **added} if user else added
    if user and redactor is not None:
        # Before json_safe's cut: every text redacted first, keys checked, at any depth.
        user = redactor.properties(user, _MAX_PROPERTY_TEXT)
    properties: dict[str, Any] = json_safe(user) if user else {}
    # Typed keys (exception-event.md) of the wrong type would reject the whole event.
    sanitize_typed_keys(properties)
    for key in _RESERVED.intersection(properties):
        del properties[key]
    properties["$exception_level"] = snapshot.level
    if snapshot.source is not None:
        properties["$exception_source"] = snapshot.source
    properties["$exception_handled"] = snapshot.handled
    fingerprint = snapshot.fingerprint
    if snapshot.exceptions and snapshot.exceptions[0].is_message and entries:
        fingerprint = _message_issue(properties, entries[0], fingerprint, redactor)
    fingerprint = fingerprint or properties.get("$exception_fingerprint")
    if fingerprint is not None:
        fingerprint_text = _fingerprint_text(fingerprint)
        if redactor is not None:
            fingerprint_text = safe_text(redactor.fingerprint(fingerprint_text), 512)
        properties["$exception_fingerprint"] = fingerprint_text
    if snapshot.session_id:
        properties["$session_id"] = snapshot.session_id
    # Everything but the list, measured for real (small, usually), plus the list's bound.
    bound = json_size(properties) + len('"$exception_list": , ') + list_bound
    properties["$exception_list"] = entries
    if bound > options.max_event_bytes:
        bound = _shrink(properties, options.max_event_bytes)
    return properties, bound


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON, measured the way the posthog client does (ASCII-only
    JSON, so characters are bytes)."""
    return len(json.dumps(value, default=str))


def _exception_entry(
    entry: ExceptionSnapshot,
    snapshot: EventSnapshot,
    builder: FrameBuilder,
    share_frames: bool,
    budget: VariableBudget,
) -> tuple[dict[str, Any], int]:
    # The value was cut on the caller's thread; made encodable and redacted here.
    options = builder.options
    if options.redact_secrets:  # redacted, then cut to max_value_length (see _redact)
        text = options.redactor.text(entry.value, options.max_value_length)
        text = safe_text(text, options.max_value_length)
    else:
        text = safe_text(entry.value, options.max_value_length)
    # The server's limit, in UTF-8 bytes, cut after redaction (a cut secret is not found).
    text = cut_utf8(text, MAX_VALUE_BYTES)
    module = entry.module
    result: dict[str, Any] = {
        "type": safe_text(entry.type_name, 512),
        "value": text,
        "module": safe_text(module, 512) if module else None,
        "mechanism": _mechanism(entry, snapshot),
    }
    size = 200 + len(text) + len(result["type"]) + len(module or "")
    # A message's stack is its call site alone, whichever door took it (see ``call_site``).
    refs = call_site(entry.frames) if entry.is_message else entry.frames
    if refs:
        frames = []
        for code, lineno, frame_module in refs:
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
    synthetic = entry.stack_is_synthetic or entry.is_message
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
        }
        if entry.relation:  # an unknown relationship is omitted, never guessed
            mechanism["source"] = entry.relation
    if entry.is_group:
        mechanism["is_exception_group"] = True
    return mechanism


def _shrink(properties: dict[str, Any], budget: int) -> int:
    """Fit an oversized event, measuring the real JSON after each step; returns its size.

    An event over the client's 900 KiB limit is dropped silently after its uuid was
    returned, so sending less beats sending nothing. Steps, in the order of the module
    docstring: big user properties, code variables, context lines, middle frames, each
    frame's own line and long values, then the stack traces of the innermost entries.
    """
    size = _fit_user_properties(properties, budget)
    if size <= budget:
        return size
    entries: list[dict[str, Any]] = properties["$exception_list"]
    # Everything but the list, which is all that changes from here on.
    others = size - json_size(entries)

    def measure() -> int:
        return others + json_size(entries)

    def frames_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
        stacktrace = entry.get("stacktrace")
        frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
        return frames if isinstance(frames, list) else []

    def replace_frames(change: Any) -> None:
        # New frame dicts, never edits: frames may be the cached ones, shared by events.
        for entry in entries:
            if isinstance(entry.get("stacktrace"), dict):
                entry["stacktrace"] = {
                    **entry["stacktrace"],
                    "frames": [
                        change(frame) if isinstance(frame, dict) else frame
                        for frame in frames_of(entry)
                    ],
                }

    replace_frames(lambda frame: {k: v for k, v in frame.items() if k != "code_variables"})
    size = measure()
    if size <= budget:
        return size
    replace_frames(lambda frame: {**frame, "pre_context": [], "post_context": []})
    size = measure()
    if size <= budget:
        return size
    for entry in entries:
        frames = frames_of(entry)
        if len(frames) > 20:
            entry["stacktrace"]["frames"] = frames[:10] + frames[-10:]
    size = measure()
    if size <= budget:
        return size
    replace_frames(lambda frame: {**frame, "context_line": None})
    for entry in entries:
        if isinstance(entry.get("value"), str):
            entry["value"] = entry["value"][:1024]
    size = measure()
    for entry in reversed(entries[1:]):
        if size <= budget:
            return size
        entry.pop("stacktrace", None)
        size = measure()
    if size > budget and entries:
        entries[0].pop("stacktrace", None)
        size = measure()
    return size


def _fit_user_properties(properties: dict[str, Any], budget: int) -> int:
    """Cut the largest user properties until the event fits; returns the event's size.

    The exception list is left alone: it is what the event is for.
    """
    sizes = {key: json_size(value) for key, value in properties.items() if key not in _OWN}
    size = json_size(properties)
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if size <= budget or sizes[key] <= _CUTTABLE_PROPERTY:
            break
        value = properties.pop(key)
        # Removing "key": value saves its key, separator and value; a cut one costs back
        # its key and the preview.
        size -= json_size({key: value}) - 2
        if key not in _TYPED_KEYS:
            text = json.dumps(value, default=str)
            preview = (
                f"{text[:_PROPERTY_PREVIEW]}... [cut from {len(text)} bytes: event size limit]"
            )
            properties[key] = preview
            size += json_size({key: preview}) - 2
    return size


def _message_issue(
    properties: dict[str, Any], entry: dict[str, Any], fingerprint: str | None, redactor: Any
) -> str | None:
    """Type and name a message-only event's issue; returns the fingerprint to send.

    Its automatic group (a ``MessageGroup``, see ``_log_message``) is never sent as
    ``$exception_fingerprint``, which would override the team's grouping rules: the
    synthetic entry's ``type`` carries the group's digest instead, which PostHog hashes with
    the call site's frame. A plain string is the user's own, and is sent. The issue's name
    is ``logger: template`` (or, with the user's fingerprint, ``logger: message``), redacted
    and cut to the server's 255 bytes; its description the template, redacted (with the
    user's fingerprint, no template is known: the server's default, the first value).
    """
    if isinstance(fingerprint, MessageGroup):
        group_text = str.__str__(fingerprint)
        if redactor is not None:
            group_text = redactor.fingerprint(group_text)
        entry["type"] = f"{MESSAGE_TYPE}[{group_digest(group_text)}]"
        name = issue_name(fingerprint.logger_name, fingerprint.template_head)
        if "$issue_description" not in properties:
            description = issue_description(fingerprint)
            if redactor is not None:
                description = redactor.text(description, DESCRIPTION_CHARS)
            properties["$issue_description"] = safe_text(description, DESCRIPTION_CHARS)
        fingerprint = None
    else:
        logger = properties.get("logger")
        name = issue_name(logger if isinstance(logger, str) else "", str(entry.get("value", "")))
    if "$issue_name" not in properties and name:
        if redactor is not None:
            name = redactor.text(name, ISSUE_NAME_BYTES)
        properties["$issue_name"] = cut_utf8(safe_text(name, ISSUE_NAME_BYTES), ISSUE_NAME_BYTES)
    return fingerprint


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
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # A huge int has no str() (Python's digit limit) and would break the JSON encoder.
        return value if int.bit_length(value) <= 256 else int_text(value)
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, str):
        return safe_text(value, _MAX_PROPERTY_TEXT)
    if depth >= _MAX_PROPERTY_DEPTH:
        return _bounded_repr(value)
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in list(itertools.islice(value.items(), _MAX_PROPERTIES)):
            name = key if isinstance(key, str) else _bounded_repr(key)
            result[safe_text(name, 200)] = json_safe(item, depth + 1)
        return result
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(itertools.islice(value, _MAX_PROPERTIES))
        return [json_safe(item, depth + 1) for item in items]
    return _bounded_repr(value)


def _bounded_repr(value: Any) -> str:
    try:
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return safe_text(text, _MAX_PROPERTY_TEXT)
