"""What the PostHog Logs tests share: every OTLP body parsed as a collector parses it."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from posthog_errors.capture_server import CaptureServer


def parse_otlp(body: Any) -> ExportLogsServiceRequest:
    """``body`` (OTLP JSON) as the collector's ``ExportLogsServiceRequest``, unknown fields
    refused. OTLP/JSON spells trace and span ids in hex where protobuf's JSON mapping wants
    base64 (the one deviation the OTLP spec makes), so they are checked as hex of the right
    length and converted first, as a collector's decoder does."""
    body = copy.deepcopy(body)
    for resource_logs in body.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                for key, size in (("traceId", 16), ("spanId", 8)):
                    if key in record:
                        raw = bytes.fromhex(record[key])
                        assert len(raw) == size, record[key]
                        record[key] = base64.urlsafe_b64encode(raw).decode()  # as protobuf reads
    return json_format.Parse(json.dumps(body), ExportLogsServiceRequest())


def assert_collector_accepts(server: CaptureServer) -> int:
    """Every logs request the server received parses; the number of records in them."""
    count = 0
    for request in server.log_requests:
        if request.status == 413:
            continue
        parsed = parse_otlp(request.body)
        for resource_logs in parsed.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                count += len(scope_logs.log_records)
    return count
