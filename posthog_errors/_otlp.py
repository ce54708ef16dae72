"""OTLP log records as JSON: what PostHog Logs ingests on ``/i/v1/logs``. Pure, no I/O.

OpenTelemetry's JSON encoding of ``ExportLogsServiceRequest`` (the protobuf message a
collector takes), written with the standard library: lowerCamelCase field names, 64-bit
integers and nanosecond timestamps as decimal strings, trace and span ids as hex, every
value an ``AnyValue``. JSON rather than protobuf: PostHog's logs spec says SDKs send JSON,
the ingestion accepts both, and protobuf would make ``protobuf`` (and generated code) a
runtime dependency of every app for a few bytes per record that gzip mostly wins back.

Values follow PostHog's logs spec (sdk-specs ``logs/spec.md``, "Attribute value
encoding"): ``str`` → ``stringValue``, ``bool`` → ``boolValue``, ``int`` → ``intValue``
(as a string; one that does not fit int64 is sent as its text), ``float`` →
``doubleValue`` (NaN and the infinities as text), sequences → ``arrayValue``, mappings →
``kvlistValue``; ``None`` drops the key. Anything else is sent as its bounded ``repr``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from posthog_errors._bounded import bounded_repr

__all__ = [
    "SEVERITIES",
    "any_value",
    "export_request",
    "export_request_json",
    "key_values",
    "log_record",
    "severity",
]

# PostHog's six levels as OTLP severity numbers and their canonical text.
SEVERITIES = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "WARN": 13,
    "ERROR": 17,
    "FATAL": 21,
}
# Python's levels onto those: DEBUG 10 → 5, INFO 20 → 9, WARNING 30 → 13, ERROR 40 → 17,
# CRITICAL 50 → 21; a custom level between two takes the lower one's text and a number
# up to 3 above it (OTLP's DEBUG2..DEBUG4 and so on), as OpenTelemetry's LoggingHandler
# maps them; below DEBUG is TRACE.
_BANDS = (("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17), ("FATAL", 21))
_MAX_DEPTH = 8
_MAX_ITEMS = 100
_MAX_REPR = 1_024
_INT64 = 1 << 63


def severity(levelno: int) -> tuple[int, str]:
    """(OTLP severity number, text) of a :mod:`logging` level number."""
    if levelno < 10:
        return 1, "TRACE"
    band = min(levelno // 10, 5)
    text, number = _BANDS[band]
    offset = 0 if band == 5 else min(levelno - band * 10, 3)
    return number + offset, text


def any_value(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """The OTLP ``AnyValue`` of a plain value; None for ``None`` (the key is left out)."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        if -_INT64 <= value < _INT64:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if kind is float:
        if math.isfinite(value):
            return {"doubleValue": value}
        return {
            "stringValue": "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        }
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {"kvlistValue": {"values": key_values(value.items(), depth + 1)}}
        if isinstance(value, (list, tuple)):
            items = []
            for item in value[:_MAX_ITEMS]:
                encoded = any_value(item, depth + 1)
                items.append({} if encoded is None else encoded)
            return {"arrayValue": {"values": items}}
    if isinstance(value, (str, bool, int, float)):  # subclasses: as their base type
        base = str if isinstance(value, str) else bool if isinstance(value, bool) else None
        if base is str:
            return {"stringValue": str.__str__(value)}
        if base is bool:
            return {"boolValue": bool(value)}
        plain = float(value) if isinstance(value, float) else int(value)
        return any_value(plain, depth)
    return {"stringValue": bounded_repr(value, _MAX_REPR)}


def key_values(pairs: Iterable[tuple[Any, Any]], depth: int = 0) -> list[dict[str, Any]]:
    """OTLP ``KeyValue`` list of ``(key, value)`` pairs: keys as text, ``None`` values left
    out, at most ``_MAX_ITEMS``."""
    encoded: list[dict[str, Any]] = []
    for key, value in pairs:
        if len(encoded) >= _MAX_ITEMS:
            break
        wrapped = any_value(value, depth)
        if wrapped is None:
            continue
        encoded.append(
            {"key": key if type(key) is str else bounded_repr(key, 200), "value": wrapped}
        )
    return encoded


def log_record(
    *,
    time_unix_nano: int,
    observed_unix_nano: int,
    levelno: int,
    body: str,
    attributes: Mapping[str, Any],
    trace_id: int = 0,
    span_id: int = 0,
) -> dict[str, Any]:
    """One OTLP ``LogRecord``; trace and span ids only when there is a span (ids are ints,
    as OpenTelemetry's span context holds them)."""
    number, text = severity(levelno)
    record: dict[str, Any] = {
        "timeUnixNano": str(time_unix_nano),
        "observedTimeUnixNano": str(observed_unix_nano),
        "severityNumber": number,
        "severityText": text,
        "body": {"stringValue": body},
        "attributes": key_values(attributes.items()),
    }
    if trace_id and span_id:
        record["traceId"] = format(trace_id, "032x")
        record["spanId"] = format(span_id, "016x")
    return record


def export_request(
    records: list[dict[str, Any]],
    resource: Mapping[str, Any],
    scope_name: str,
    scope_version: str,
) -> dict[str, Any]:
    """One ``ExportLogsServiceRequest``: one resource, one scope, ``records`` (PostHog's
    logs spec: one batch, one envelope)."""
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": key_values(resource.items())},
                "scopeLogs": [
                    {
                        "scope": {"name": scope_name, "version": scope_version},
                        "logRecords": records,
                    }
                ],
            }
        ]
    }


def export_request_json(
    records: list[str],
    resource: Mapping[str, Any],
    scope_name: str,
    scope_version: str,
) -> str:
    """:func:`export_request` as JSON text, from records already encoded one by one (the
    worker measures each record's size by encoding it: it is not encoded twice)."""
    envelope = json.dumps(
        export_request([], resource, scope_name, scope_version), separators=(",", ":")
    )
    head, marker, tail = envelope.partition('"logRecords":[]')
    assert marker, envelope
    return f'{head}"logRecords":[{",".join(records)}]{tail}'
