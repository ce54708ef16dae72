"""A tiny Sentry-compatible server that records what the real ``sentry_sdk`` sends.

Point the SDK at :attr:`SentryServer.dsn` and inspect the envelopes it posts to
``/api/{project_id}/envelope/`` (or the legacy ``/store/``), without network access
or a Sentry account. Bodies may be ``gzip`` (the SDK's default), ``br`` (only when
the ``brotli`` module is importable, here as in the SDK) or uncompressed. Only
``127.0.0.1`` is bound. :func:`sentry_initialised` inits the SDK for one test and
leaves no active client behind.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any, cast, final
from urllib.parse import urlsplit

import sentry_sdk

from posthog_errors._loopback import LoopbackServer, QuietHandler

__all__ = ["SENTRY_SDK_MAJOR", "SentryServer", "parse_envelope", "sentry_initialised"]

# The installed sentry-sdk's release line: the suite runs against 2.x and 3.x, and asserts
# each line's own behaviour where they differ (3.x: no logging events by default, Sentry
# Logs, spans streamed instead of transactions).
SENTRY_SDK_MAJOR = int(sentry_sdk.VERSION.split(".")[0])

_MAX_BODY = 20 * 1024 * 1024
_INGEST = re.compile(r"^/api/\d+/(envelope|store)/?$")


def _decompress(raw: bytes, encoding: str) -> bytes:
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # lazy: the SDK sends br only if present

        return cast(bytes, brotli.decompress(raw))
    if encoding in ("gzip", "x-gzip") or raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return zlib.decompress(raw) if encoding == "deflate" else raw


def _payload(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:  # attachments and other binary items stay bytes
        return data


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """``{"headers": {...}, "items": [{"headers", "payload"}]}``; ValueError if malformed."""
    line, _, rest = raw.partition(b"\n")
    headers = json.loads(line)
    if not isinstance(headers, dict):
        raise ValueError("envelope header is not an object")
    items: list[dict[str, Any]] = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        item_headers = json.loads(line)
        length = item_headers.get("length") if isinstance(item_headers, dict) else -1
        if length is None:  # payload runs to the next newline
            data, _, rest = rest.partition(b"\n")
        elif isinstance(length, int) and 0 <= length <= len(rest):
            data, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest[:1] == b"\n" else rest
        else:
            raise ValueError(f"bad envelope item header: {item_headers!r}")
        items.append({"headers": item_headers, "payload": _payload(data)})
    return {"headers": headers, "items": items}


def _store_envelope(event: Any) -> dict[str, Any]:
    """A legacy ``/store/`` body (one bare event) as a one-item envelope."""
    if not isinstance(event, dict):
        raise ValueError("store body is not an object")
    kind = "transaction" if event.get("type") == "transaction" else "event"
    item = {"headers": {"type": kind}, "payload": event}
    return {"headers": {"event_id": event.get("event_id")}, "items": [item]}


class _Handler(QuietHandler):
    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # do_* names are dictated by http.server.
    def do_GET(self) -> None:
        self._answer(200, {})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        raw = self.rfile.read(length) if 0 < length <= _MAX_BODY else b""
        match = _INGEST.match(urlsplit(self.path).path)
        if match is None:
            self._answer(200, {})
            return
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            data = _decompress(raw, encoding)
            if match[1] == "envelope":
                envelope = parse_envelope(data)
            else:
                envelope = _store_envelope(json.loads(data))
        except Exception:  # any undecodable body (including brotli.error): Relay says 400
            self._answer(400, {"detail": "malformed envelope"})
            return
        cast(SentryServer, self.owner)._record(envelope)  # before answering: visible on 2xx
        self._answer(200, {})


@final
class SentryServer(LoopbackServer):
    """Records envelopes posted by ``sentry_sdk``; the socket is bound in ``__init__``."""

    handler_class = _Handler

    def __init__(self, project_id: int = 42) -> None:
        self.project_id = project_id
        self._envelopes: list[dict[str, Any]] = []
        super().__init__()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/{self.project_id}"

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._envelopes)

    def _items(self, kind: str) -> list[dict[str, Any]]:
        return [
            item["payload"]
            for envelope in self._envelopes
            for item in envelope["items"]
            if item["headers"].get("type") == kind and isinstance(item["payload"], dict)
        ]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Error and message events (item type ``event``), in arrival order."""
        with self._cond:
            return self._items("event")

    @property
    def transactions(self) -> list[dict[str, Any]]:
        """Transactions (sentry-sdk 2.x's traces)."""
        with self._cond:
            return self._items("transaction")

    def _contained(self, kind: str) -> list[dict[str, Any]]:
        """The entries of container items (``{"version": 2, "items": [...]}``)."""
        return [
            entry
            for payload in self._items(kind)
            for entry in payload.get("items") or []
            if isinstance(entry, dict)
        ]

    @property
    def spans(self) -> list[dict[str, Any]]:
        """Streamed spans (sentry-sdk 3.x's traces: ``span`` items); the root span of a
        trace has ``is_segment``."""
        with self._cond:
            return self._contained("span")

    @property
    def logs(self) -> list[dict[str, Any]]:
        """Sentry Logs (``log`` items): sentry-sdk 3.x's ``LoggingIntegration()`` sends
        log records there by default."""
        with self._cond:
            return self._contained("log")

    def wait_for_logs(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self._contained("log")) >= count, timeout)
            return self._contained("log")

    def wait_for_events(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until ``count`` events arrived; on timeout return what there is."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items("event")) >= count, timeout)
            return self._items("event")

    def clear(self) -> None:
        with self._cond:
            self._envelopes.clear()

    def _record(self, envelope: dict[str, Any]) -> None:
        with self._cond:
            self._envelopes.append(envelope)
            self._cond.notify_all()


@contextlib.contextmanager
def sentry_initialised(dsn: str, **options: Any) -> Iterator[sentry_sdk.client.BaseClient]:
    """``sentry_sdk.init(dsn, **options)`` for a block; afterwards flush, close, deactivate.

    Defaults differ from a bare ``init`` in three ways, all overridable: a fixed
    ``release`` (no ``git rev-parse HEAD`` subprocess), and no default or
    auto-enabled integrations. Those patch logging, excepthooks, threads, http.client
    and web frameworks once per process and for good (the SDK cannot undo it), which
    changes what later tests see (e.g. an extra ``sentry_patched_callhandlers`` frame
    under every log call). Opt in only where a test needs them.
    """
    options.setdefault("release", "posthog-errors-tests")
    options.setdefault("default_integrations", False)
    options.setdefault("auto_enabling_integrations", False)
    sentry_sdk.init(dsn=dsn, **options)
    client = sentry_sdk.get_client()
    try:
        yield client
    finally:
        client.flush(timeout=5)
        client.close(timeout=5)
        for scope in (
            # Scope's own getters: sentry-sdk 2.0 has no top-level get_*_scope()
            sentry_sdk.Scope.get_current_scope(),
            sentry_sdk.Scope.get_isolation_scope(),
            sentry_sdk.Scope.get_global_scope(),
        ):
            scope.set_client(None)  # None means NonRecordingClient: inactive, no DSN
        assert not sentry_sdk.get_client().is_active()
