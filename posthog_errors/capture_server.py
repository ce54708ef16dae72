"""A tiny PostHog-compatible capture server that records what clients send.

It exists so the demo, ``posthog-errors serve`` and the test suite can point the
real ``posthog`` client at something local and inspect the exact JSON it posts,
without network access or a PostHog account. It is stdlib-only on purpose: it
ships inside the library and must not drag in a web framework.

Only ``127.0.0.1`` is ever bound: this is a debugging aid, not something to
expose. :class:`Fault` lets tests make the server misbehave (error statuses,
``Retry-After``, hangs, slow bodies, dropped connections) to prove the library
copes with a sick ingestion endpoint.
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

__all__ = ["CaptureServer", "Fault", "ReceivedRequest"]

# PostHog's own ingestion limit; anything bigger is left unread and answered 400.
_MAX_BODY = 20 * 1024 * 1024
# Enough for a client to believe flags were evaluated (v4 "flags" and legacy keys).
_FLAGS_BODY = {
    "flags": {},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "errorsWhileComputingFlags": False,
}
# "results" keeps capture-v1 clients happy (absent uuids count as accepted).
_OK_BODY = {"status": 1, "results": {}}
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


@dataclasses.dataclass(frozen=True)
class ReceivedRequest:
    """One capture POST as received (path without query string)."""

    path: str
    headers: dict[str, str]
    status: int  # what the server answered (0 if it never answered)
    body: Any  # decoded JSON (after gzip), or None if undecodable


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
        if events is None:
            owner._record(ReceivedRequest(url.path, headers, 400, body), [])
            self._answer(400, {"detail": "malformed capture body"})
            return
        status = 200 if fault.drip_seconds > 0 else fault.status
        extra = {} if fault.retry_after is None else {"Retry-After": _seconds(fault.retry_after)}
        # Record before answering: once the client sees 2xx, the events are visible.
        owner._record(
            ReceivedRequest(url.path, headers, status, body), events if 200 <= status < 300 else []
        )
        payload = _OK_BODY if 200 <= status < 300 else {"detail": f"fault injected: {status}"}
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
    ) -> None:
        self._fault = fault or Fault()
        self._on_event = on_event
        self._events: list[dict[str, Any]] = []
        self._requests: list[ReceivedRequest] = []
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

    def clear(self) -> None:
        with self._cond:
            self._events.clear()
            self._requests.clear()

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
