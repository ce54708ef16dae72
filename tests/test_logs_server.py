"""The capture server's PostHog Logs endpoint: OTLP/HTTP JSON in, flat records out."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from posthog_errors.capture_server import LOGS_PATH, LOGS_REQUEST_LIMIT, CaptureServer, Fault

API_KEY = "phc_logs_server"


def otlp_body(*records: dict[str, Any]) -> dict[str, Any]:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]}
    scope = {"scope": {"name": "posthog-errors"}, "logRecords": list(records)}
    return {"resourceLogs": [{"resource": resource, "scopeLogs": [scope]}]}


RECORD = {
    "timeUnixNano": "1700000000000000001",
    "severityNumber": 17,
    "severityText": "ERROR",
    "body": {"stringValue": "payment failed"},
    "traceId": "0af7651916cd43dd8448eb211c80319c",
    "spanId": "b7ad6b7169203331",
    "attributes": [
        {"key": "n", "value": {"intValue": "3"}},
        {"key": "ratio", "value": {"doubleValue": 0.5}},
        {"key": "ok", "value": {"boolValue": False}},
        {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
        {"key": "nested", "value": {"kvlistValue": {"values": [{"key": "k", "value": {}}]}}},
    ],
}


def post(
    server: CaptureServer,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> int:
    request = urllib.request.Request(
        server.url + LOGS_PATH + query,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_records_arrive_flattened() -> None:
    seen: list[str] = []
    with CaptureServer(on_log_record=lambda r: seen.append(r["body"])) as server:
        data = json.dumps(otlp_body(RECORD)).encode()
        assert post(server, data, headers={"Authorization": f"Bearer {API_KEY}"}) == 200
        assert (
            post(
                server,
                gzip.compress(data),
                headers={"Content-Encoding": "gzip"},
                query=f"?token={API_KEY}",
            )
            == 200
        )
        records = server.wait_for_log_records(2, timeout=5)
    assert seen == ["payment failed", "payment failed"]
    assert records[0] == {
        "body": "payment failed",
        "severity_number": 17,
        "severity_text": "ERROR",
        "time_unix_nano": 1700000000000000001,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "attributes": {"n": 3, "ratio": 0.5, "ok": False, "tags": ["a"], "nested": {"k": None}},
        "resource": {"service.name": "shop"},
        "scope": "posthog-errors",
    }
    assert [r.status for r in server.log_requests] == [200, 200]
    assert server.events == [] and server.requests == []  # logs never pass for events
    server.clear()
    assert server.log_records() == [] and server.log_requests == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (json.dumps(otlp_body(RECORD)).encode(), {}, 401),
        (b"not json", {"Authorization": f"Bearer {API_KEY}"}, 400),
        (b'{"batch": []}', {"Authorization": f"Bearer {API_KEY}"}, 400),
        (b"x" * (LOGS_REQUEST_LIMIT + 1), {"Authorization": f"Bearer {API_KEY}"}, 413),
    ],
    ids=["no-key", "not-json", "not-otlp", "over-2MB"],
)
def test_refusals_store_no_record(body: bytes, headers: dict[str, str], status: int) -> None:
    with CaptureServer() as server:
        try:
            answered = post(server, body, headers=headers)
        except (ConnectionError, urllib.error.URLError):  # 413 may hang up mid-upload
            answered = status
        assert answered == status
        assert server.log_records() == []
        assert [r.status for r in server.log_requests] == [status]


def test_faults_apply_to_logs() -> None:
    with CaptureServer(fault=Fault(status=503)) as server:
        data = json.dumps(otlp_body(RECORD)).encode()
        assert post(server, data, headers={"Authorization": f"Bearer {API_KEY}"}) == 503
        assert server.log_records() == []
