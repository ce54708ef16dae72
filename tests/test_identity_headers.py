"""Identity headers are cleaned as posthog-python's integrations clean them: trimmed,
control characters removed, empty means personless; the same for Celery and RQ values."""

from __future__ import annotations

import io
import types
from typing import Any

import pytest

import posthog_errors
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.integrations import rq as rq_integration
from posthog_errors.integrations._headers import clean_header_value
from posthog_errors.integrations._requests import RequestReporter
from posthog_errors.integrations.wsgi import WSGIMiddleware

CASES = [
    ("user-1", "user-1"),
    ("user-1\n", "user-1"),
    ("  user-1  ", "user-1"),
    ("user\x00-1\x7f", "user-1"),
    ("   ", None),
    ("", None),
    ("\t\r\n", None),
    (None, None),
    (42, None),
    ("x" * 2000, "x" * 1000),
]


@pytest.mark.parametrize(("raw", "clean"), CASES)
def test_header_values_are_cleaned(raw: object, clean: str | None) -> None:
    assert clean_header_value(raw) == clean


@pytest.mark.parametrize(("raw", "clean"), CASES[:8])
def test_request_ids_from_headers(raw: Any, clean: str | None) -> None:
    headers = {"x-posthog-distinct-id": raw, "x-posthog-session-id": raw}
    assert RequestReporter(None, None, "wsgi.middleware").ids(None, headers.get) == (clean, clean)


@pytest.mark.parametrize(("raw", "clean"), CASES[:8])
def test_rq_carried_ids(raw: Any, clean: str | None) -> None:
    job = types.SimpleNamespace(
        meta={rq_integration.META_KEY: {"distinct_id": raw, "session_id": raw}}
    )
    carried = rq_integration._carried(job)
    assert (carried.distinct_id, carried.session_id) == (clean, clean)


def _failing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise ValueError("boom")


@pytest.mark.parametrize(
    ("distinct_id", "session_id", "person", "session"),
    [
        (
            "   ",
            " 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n",
            None,
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        ),
        ("user-1\n", "", "user-1", None),
    ],
)
def test_wsgi_events_on_the_wire(
    capture_server: CaptureServer,
    reporter: Reporter,
    distinct_id: str,
    session_id: str,
    person: str | None,
    session: str | None,
) -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "example.com",
        "wsgi.input": io.BytesIO(),
        "HTTP_X_POSTHOG_DISTINCT_ID": distinct_id,
        "HTTP_X_POSTHOG_SESSION_ID": session_id,
    }
    with pytest.raises(ValueError):
        WSGIMiddleware(_failing_app)(environ, lambda *args: None)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    props = event["properties"]
    if person is None:
        assert props.get("$process_person_profile") is False
        assert event["distinct_id"].strip()
    else:
        assert event["distinct_id"] == person
    assert props.get("$session_id") == session
