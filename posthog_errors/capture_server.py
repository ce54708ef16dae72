"""A tiny PostHog-compatible capture server that records what clients send.

It exists so the demo, ``posthog-errors serve`` and the test suite can point the
real ``posthog`` client at something local and inspect the exact JSON it posts,
without network access or a PostHog account. It is stdlib-only on purpose: it
ships inside the library and must not drag in a web framework.

It speaks both of PostHog's capture protocols, as the real ingestion checks them:

- **v0**, ``POST /batch/`` (and posthog-js's paths): ``{"api_key", "batch": [...]}``;
  answered ``{"status": 1}``.
- **v1**, ``POST /i/v1/analytics/events`` (posthog-python's ``capture_mode="v1"``, the
  only mode of posthog-python 8): ``Authorization: Bearer <key>`` and a
  ``PostHog-Sdk-Info`` header are required, the body is ``{"created_at", "batch"}``, each
  event carries a typed ``options`` object and top-level ``session_id``/``window_id``. A
  wrong type anywhere fails the whole batch (400), as PostHog's does. A 2xx answer carries
  a per-event ``results`` map (``ok``, ``warning``, ``drop``, ``retry``).

:attr:`CaptureServer.events` holds every accepted event **as PostHog's ingestion reads it**,
whichever protocol carried it: for v1 that means ``session_id``, ``window_id`` and
``options`` back under their ``$`` property names, and ``$lib``/``$lib_version`` from the
``PostHog-Sdk-Info`` header, so one assertion holds for both modes. The bytes that crossed
the wire stay in :attr:`CaptureServer.requests`.

It also receives **PostHog Logs**: OTLP/HTTP JSON on ``POST /i/v1/logs`` with the project key
as ``Authorization: Bearer <key>`` (or ``?token=``), at most 2 MB a request (413 above, as
PostHog answers). :meth:`CaptureServer.log_records` flattens every accepted OTLP log record
into one plain dict (body, severity, time, hex trace/span ids, attributes, resource, scope),
so tests and ``posthog-errors serve`` read a log the way PostHog's Logs tab shows it; the
requests themselves stay in :attr:`CaptureServer.log_requests`.

Only ``127.0.0.1`` is ever bound: this is a debugging aid, not something to
expose. :class:`Fault` lets tests make the server misbehave (error statuses,
``Retry-After``, hangs, slow bodies, dropped connections, and v1 per-event verdicts) to
prove the library copes with a sick ingestion endpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any, cast, final
from urllib.parse import parse_qs, urlsplit

from posthog_errors._loopback import LoopbackServer, QuietHandler

__all__ = [
    "LOGS_PATH",
    "LOGS_REQUEST_LIMIT",
    "V1_PATH",
    "VERDICTS",
    "CaptureServer",
    "Fault",
    "ReceivedRequest",
]

# PostHog's own ingestion limit; anything bigger is left unread and answered 400.
_MAX_BODY = 20 * 1024 * 1024
# Enough for a client to believe flags were evaluated (v4 "flags" and legacy keys).
_FLAGS_BODY = {
    "flags": {},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "errorsWhileComputingFlags": False,
}
_OK_BODY = {"status": 1}
V1_PATH = "/i/v1/analytics/events"
# PostHog Logs' OTLP/HTTP endpoint and its request cap (bigger bodies are answered 413).
LOGS_PATH = "/i/v1/logs"
LOGS_REQUEST_LIMIT = 2 * 1024 * 1024
# Per-event verdicts a v1 answer may carry; events answered ok or warning are accepted.
VERDICTS = ("ok", "warning", "drop", "retry")
_ACCEPTED = ("ok", "warning")
# v1 ``options`` and the type PostHog's capture requires of each (a wrong one fails the
# batch), with the property name ingestion gives it.
_V1_OPTIONS: dict[str, tuple[type, str]] = {
    "process_person_profile": (bool, "$process_person_profile"),
    "cookieless_mode": (bool, "$cookieless_mode"),
    "disable_skew_correction": (bool, "$ignore_sent_at"),
    "product_tour_id": (str, "$product_tour_id"),
}
_V1_TOP_LEVEL = {"session_id": "$session_id", "window_id": "$window_id"}
_V1_REQUIRED: dict[str, type] = {"event": str, "uuid": str, "distinct_id": str, "timestamp": str}
_FLAG_PREFIXES = ("/flags", "/decide")
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, OPTIONS",
}


@dataclasses.dataclass(frozen=True)
class Fault:
    """How the server misbehaves, for fault-injection tests."""

    status: int = 200  # HTTP status to answer capture POSTs with
    retry_after: float | None = None  # adds a Retry-After header (seconds) when set
    hang: bool = False  # read the request, never answer (until the server stops)
    drip_seconds: float = 0.0  # >0: answer 200, body one byte at a time, this long apart
    close: bool = False  # read the request and close the socket without any answer
    # v1 only: the verdict every event gets in a 2xx answer ("drop", "retry", "warning")...
    verdict: str = "ok"
    # ...for the first this many attempts of a request (its PostHog-Attempt); 0: every one
    verdict_attempts: int = 0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def verdict_for(self, attempt: int) -> str:
        if self.verdict_attempts and attempt > self.verdict_attempts:
            return "ok"
        return self.verdict


@dataclasses.dataclass(frozen=True)
class ReceivedRequest:
    """One capture POST as received (path without query string)."""

    path: str
    headers: dict[str, str]
    status: int  # what the server answered (0 if it never answered)
    body: Any  # decoded JSON (after gzip), or None if undecodable
    results: dict[str, str] | None = None  # v1: the verdict answered for each event uuid

    @property
    def capture_mode(self) -> str:
        """``"v1"`` for PostHog's v1 endpoint, ``"v0"`` for every other capture path."""
        return "v1" if self.path == V1_PATH else "v0"


def _decode(raw: bytes, encoding: str) -> Any:
    """Decompress and parse a body; raises ValueError/OSError/zlib.error if malformed."""
    if encoding == "gzip" or raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif encoding == "deflate":
        raw = zlib.decompress(raw)
    return json.loads(raw)


def _seconds(value: float) -> str:
    """Retry-After as delta-seconds: "2" for 2.0, "0.5" kept fractional for fast tests."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _events_of(body: Any) -> list[dict[str, Any]] | None:
    """Events in a /batch/ envelope, a posthog-js list or a single event; None if none."""
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        body = body["batch"]
    elif isinstance(body, dict) and "event" in body:
        body = [body]
    if not isinstance(body, list):
        return None
    return [e for e in body if isinstance(e, dict)]


def _v1_problem(headers: dict[str, str], body: Any) -> tuple[int, str] | None:
    """Why PostHog's v1 capture would refuse the whole request, or None: (status, reason)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    auth = lowered.get("authorization", "")
    if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
        return 401, "missing Bearer token"
    if not lowered.get("posthog-sdk-info"):
        return 400, "missing PostHog-Sdk-Info header"
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        return 400, "body is not {created_at, batch: [...]}"
    if not isinstance(body.get("created_at"), str):
        return 400, "created_at must be a string"
    for index, event in enumerate(body["batch"]):
        problem = _v1_event_problem(event)
        if problem:
            return 400, f"batch[{index}]: {problem}"
    return None


def _v1_event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "not an object"
    for key, kind in _V1_REQUIRED.items():
        if not isinstance(event.get(key), kind):
            return f"{key} must be a {kind.__name__}"
    if not isinstance(event.get("properties"), dict):
        return "properties must be an object"
    options = event.get("options", {})
    if not isinstance(options, dict):
        return "options must be an object"
    for name, value in options.items():
        kind = _V1_OPTIONS.get(name, (object, ""))[0]
        if not isinstance(value, kind):
            return f"options.{name} must be a {kind.__name__}"
    for name in _V1_TOP_LEVEL:
        if name in event and not isinstance(event[name], str):
            return f"{name} must be a string"
    return None


def _as_ingested(event: dict[str, Any], sdk_info: str) -> dict[str, Any]:
    """A v1 event as PostHog's ingestion reads it: the properties a v0 event would carry."""
    properties = dict(event["properties"])
    for name, prop in _V1_TOP_LEVEL.items():
        if name in event:
            properties[prop] = event[name]
    for name, value in event.get("options", {}).items():
        properties[_V1_OPTIONS.get(name, (object, f"${name}"))[1]] = value
    lib, _, version = sdk_info.partition("/")
    properties.setdefault("$lib", lib)
    if version:
        properties.setdefault("$lib_version", version)
    keys = ("event", "uuid", "distinct_id", "timestamp")
    return {**{key: event[key] for key in keys}, "properties": properties}


def _any_value(value: Any) -> Any:
    """An OTLP JSON ``AnyValue`` as the plain Python value it stands for (None if empty)."""
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:  # int64 travels as a decimal string in OTLP JSON
        with contextlib.suppress(TypeError, ValueError):
            return int(value["intValue"])
        return value["intValue"]
    if "doubleValue" in value:
        with contextlib.suppress(TypeError, ValueError):
            return float(value["doubleValue"])  # "NaN", "Infinity" are spelled as strings
        return value["doubleValue"]
    if "arrayValue" in value:
        return [_any_value(item) for item in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return _key_values((value["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]  # base64, as it travelled
    return None


def _key_values(pairs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list → dict (later keys win, as collectors read duplicates)."""
    if not isinstance(pairs, list):
        return {}
    return {
        str(pair.get("key")): _any_value(pair.get("value"))
        for pair in pairs
        if isinstance(pair, dict) and "key" in pair
    }


def _log_records_of(body: Any) -> list[dict[str, Any]] | None:
    """Every log record of an OTLP ``ExportLogsServiceRequest`` (JSON), flattened; None if
    the body is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceLogs"), list):
        return None
    records: list[dict[str, Any]] = []
    for resource_logs in body["resourceLogs"]:
        if not isinstance(resource_logs, dict):
            return None
        resource = _key_values((resource_logs.get("resource") or {}).get("attributes", []))
        for scope_logs in resource_logs.get("scopeLogs") or []:
            if not isinstance(scope_logs, dict):
                return None
            scope = str((scope_logs.get("scope") or {}).get("name", ""))
            for record in scope_logs.get("logRecords") or []:
                if not isinstance(record, dict):
                    return None
                records.append(_flat_record(record, resource, scope))
    return records


def _flat_record(record: dict[str, Any], resource: dict[str, Any], scope: str) -> dict[str, Any]:
    body = _any_value(record.get("body"))
    if not isinstance(body, str):
        body = "" if body is None else json.dumps(body, default=str)
    try:
        time_unix_nano = int(record.get("timeUnixNano") or record.get("observedTimeUnixNano") or 0)
    except (TypeError, ValueError):
        time_unix_nano = 0
    try:
        severity_number = int(record.get("severityNumber") or 0)
    except (TypeError, ValueError):
        severity_number = 0
    return {
        "body": body,
        "severity_number": severity_number,
        "severity_text": str(record.get("severityText", "")),
        "time_unix_nano": time_unix_nano,
        "trace_id": str(record.get("traceId", "")),
        "span_id": str(record.get("spanId", "")),
        "attributes": _key_values(record.get("attributes", [])),
        "resource": resource,
        "scope": scope,
    }


def _logs_token(headers: dict[str, str], query: str) -> str:
    """The project key of a logs request: ``Authorization: Bearer`` or ``?token=``."""
    lowered = {name.lower(): value for name, value in headers.items()}
    auth = lowered.get("authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    return (parse_qs(query).get("token") or [""])[0].strip()


class _Handler(QuietHandler):
    @property
    def capture(self) -> CaptureServer:
        return cast(CaptureServer, self.owner)

    def _answer(
        self, status: int, payload: Any, extra: dict[str, str] | None = None, drip: float = 0.0
    ) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {**_CORS, **(extra or {})}.items():
            self.send_header(name, value)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if drip <= 0:
            self.wfile.write(data)
            return
        stopping = self.capture._stopping
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            if stopping.wait(drip):
                return

    # do_* names are dictated by http.server.
    def do_OPTIONS(self) -> None:
        self._answer(204, None)

    def do_GET(self) -> None:
        self._answer(200, _FLAGS_BODY)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith(_FLAG_PREFIXES):
            self._read_body()
            self._answer(200, _FLAGS_BODY)
            return
        if url.path == LOGS_PATH:
            self._answer_logs(url.query)
            return
        owner = self.capture
        headers = dict(self.headers.items())
        raw = self._read_body()
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if parse_qs(url.query).get("compression") == ["gzip-js"]:
            encoding = "gzip"
        try:
            body = _decode(raw, encoding)
        except (ValueError, OSError, EOFError, zlib.error):
            body = None
        events = _events_of(body)
        fault = owner._fault
        if fault.close or fault.hang:
            owner._record(ReceivedRequest(url.path, headers, 0, body), [])
            if fault.hang:
                owner._stopping.wait()  # released by stop(), so stopping stays prompt
            self.close_connection = True
            return
        if url.path == V1_PATH:
            self._answer_v1(headers, body, fault)
            return
        if events is None:
            owner._record(ReceivedRequest(url.path, headers, 400, body), [])
            self._answer(400, {"detail": "malformed capture body"})
            return
        if url.path == "/batch/" and isinstance(body, dict) and not body.get("api_key"):
            owner._record(ReceivedRequest(url.path, headers, 401, body), [])
            self._answer(401, {"detail": "no api_key in the batch"})
            return
        status = 200 if fault.drip_seconds > 0 else fault.status
        extra = {} if fault.retry_after is None else {"Retry-After": _seconds(fault.retry_after)}
        # Record before answering: once the client sees 2xx, the events are visible.
        owner._record(
            ReceivedRequest(url.path, headers, status, body), events if 200 <= status < 300 else []
        )
        payload = _OK_BODY if 200 <= status < 300 else {"detail": f"fault injected: {status}"}
        self._answer(status, payload, extra, fault.drip_seconds)

    def _answer_v1(self, headers: dict[str, str], body: Any, fault: Fault) -> None:
        owner = self.capture
        extra = {} if fault.retry_after is None else {"Retry-After": _seconds(fault.retry_after)}
        status = 200 if fault.drip_seconds > 0 else fault.status
        problem = _v1_problem(headers, body)
        if problem is not None:
            status, reason = problem
            owner._record(ReceivedRequest(V1_PATH, headers, status, body), [])
            self._answer(status, {"type": "validation_error", "error": reason}, extra)
            return
        if not 200 <= status < 300:
            owner._record(ReceivedRequest(V1_PATH, headers, status, body), [])
            self._answer(status, {"error": f"fault injected: {status}"}, extra)
            return
        try:
            attempt = int(self.headers.get("PostHog-Attempt", "1"))
        except ValueError:
            attempt = 1
        verdict = fault.verdict_for(attempt)
        sdk_info = self.headers.get("PostHog-Sdk-Info", "")
        results = {event["uuid"]: verdict for event in body["batch"]}
        accepted = []
        if verdict in _ACCEPTED:
            accepted = [_as_ingested(event, sdk_info) for event in body["batch"]]
        owner._record(ReceivedRequest(V1_PATH, headers, status, body, results), accepted)
        detail = {"details": f"fault injected: {verdict}"} if verdict != "ok" else {}
        answer = {"results": {uuid: {"result": verdict, **detail} for uuid in results}}
        self._answer(status, answer, extra, fault.drip_seconds)

    def _answer_logs(self, query: str) -> None:
        """OTLP/HTTP JSON logs, checked as PostHog's logs ingestion checks them."""
        owner = self.capture
        headers = dict(self.headers.items())
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length > LOGS_REQUEST_LIMIT:  # left unread: answer and hang up
            owner._record_logs(ReceivedRequest(LOGS_PATH, headers, 413, None), [])
            self.close_connection = True
            self._answer(413, {"error": "request body larger than 2 MB"})
            return
        raw = self._read_body()
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            body = _decode(raw, encoding)
        except (ValueError, OSError, EOFError, zlib.error):
            body = None
        fault = owner._fault
        if fault.close or fault.hang:
            owner._record_logs(ReceivedRequest(LOGS_PATH, headers, 0, body), [])
            if fault.hang:
                owner._stopping.wait()  # released by stop(), so stopping stays prompt
            self.close_connection = True
            return
        if not _logs_token(headers, query):
            owner._record_logs(ReceivedRequest(LOGS_PATH, headers, 401, body), [])
            self._answer(401, {"error": "missing project token"})
            return
        records = _log_records_of(body)
        if records is None:
            owner._record_logs(ReceivedRequest(LOGS_PATH, headers, 400, body), [])
            self._answer(400, {"error": "body is not an OTLP ExportLogsServiceRequest"})
            return
        status = 200 if fault.drip_seconds > 0 else fault.status
        extra = {} if fault.retry_after is None else {"Retry-After": _seconds(fault.retry_after)}
        accepted = 200 <= status < 300
        owner._record_logs(
            ReceivedRequest(LOGS_PATH, headers, status, body), records if accepted else []
        )
        payload = {} if accepted else {"error": f"fault injected: {status}"}
        self._answer(status, payload, extra, fault.drip_seconds)

    def _read_body(self) -> bytes:
        """Honour Content-Length; missing, bad or oversized reads nothing (so: malformed)."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        return self.rfile.read(length) if 0 < length <= _MAX_BODY else b""


@final
class CaptureServer(LoopbackServer):
    """Records events posted by PostHog clients; see the module docstring.

    The socket is bound in ``__init__`` so :attr:`url` is usable before
    :meth:`start`. Faults apply to capture POSTs only: flag lookups always
    succeed, so a client under test stays quiet about them.
    """

    handler_class = _Handler

    def __init__(
        self,
        port: int = 0,
        *,
        fault: Fault | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_log_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._fault = fault or Fault()
        self._on_event = on_event
        self._on_log_record = on_log_record
        self._events: list[dict[str, Any]] = []
        self._requests: list[ReceivedRequest] = []
        self._log_records: list[dict[str, Any]] = []
        self._log_requests: list[ReceivedRequest] = []
        super().__init__(port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_fault(self, fault: Fault | None) -> None:
        """Change behaviour for requests that arrive from now on."""
        with self._cond:  # a frozen dataclass swapped under the lock: readers see old or new
            self._fault = fault or Fault()

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._events)

    def exception_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "$exception"]

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._cond:
            return len(self._requests)

    def wait_for_events(
        self, count: int, *, timeout: float = 10.0, event: str | None = "$exception"
    ) -> list[dict[str, Any]]:
        """Block until ``count`` matching events arrived; on timeout return what there is."""

        def matching() -> list[dict[str, Any]]:
            return [e for e in self._events if event is None or e.get("event") == event]

        with self._cond:
            self._cond.wait_for(lambda: len(matching()) >= count, timeout)
            return matching()

    def log_records(self) -> list[dict[str, Any]]:
        """Every accepted PostHog Logs record, flattened (see the module docstring)."""
        with self._cond:
            return list(self._log_records)

    @property
    def log_requests(self) -> list[ReceivedRequest]:
        """Every ``/i/v1/logs`` request as received, accepted or not."""
        with self._cond:
            return list(self._log_requests)

    def wait_for_log_records(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until ``count`` log records arrived; on timeout return what there is."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._log_records) >= count, timeout)
            return list(self._log_records)

    def clear(self) -> None:
        with self._cond:
            self._events.clear()
            self._requests.clear()
            self._log_records.clear()
            self._log_requests.clear()

    def _record_logs(self, request: ReceivedRequest, records: list[dict[str, Any]]) -> None:
        with self._cond:
            self._log_requests.append(request)
            self._log_records.extend(records)
            self._cond.notify_all()
        callback = self._on_log_record
        if callback is None:
            return
        for record in records:
            with contextlib.suppress(Exception):  # a faulty callback must not break the server
                callback(record)

    def _record(self, request: ReceivedRequest, events: list[dict[str, Any]]) -> None:
        with self._cond:
            self._requests.append(request)
            self._events.extend(events)
            self._cond.notify_all()
        callback = self._on_event
        if callback is None:
            return
        for event in events:
            with contextlib.suppress(Exception):  # a faulty callback must not break the server
                callback(event)
