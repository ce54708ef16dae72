"""PostHog Logs: records from logging, structlog and loguru arrive at /i/v1/logs once, with
the person, session, trace and span of the code that logged them, as a collector parses them.
"""

from __future__ import annotations

import logging
import logging.config
import math
import warnings
from collections.abc import Iterator
from typing import Any

import posthog
import pytest
from opentelemetry.sdk.trace import TracerProvider

import posthog_errors
from posthog_errors import _logs_delivery, _otlp
from posthog_errors.capture_server import CaptureServer, Fault
from tests.logs_wire import parse_otlp

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # Starlette 1.x: TestClient moves to httpx2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

TRACER = TracerProvider().get_tracer("tests.logs")


@pytest.fixture
def installed(posthog_client: posthog.Posthog) -> Iterator[posthog_errors.Installation]:
    installation = posthog_errors.install(
        posthog_client,
        send_logs="info",
        service="shop",
        environment="staging",
        release="2.4.1",
        flush_on_signals=False,
    )
    logging.getLogger().setLevel(logging.DEBUG)
    yield installation
    installation.uninstall()
    logging.getLogger().setLevel(logging.WARNING)


def records(logs_server: CaptureServer, count: int) -> list[dict[str, Any]]:
    """Flush, then exactly ``count`` log records from the wire."""
    assert posthog_errors.flush(5)
    found = logs_server.wait_for_log_records(count, timeout=5)
    assert len(found) == count, [r["body"] for r in found]
    return found


def by_body(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    bodies = [r["body"] for r in found]
    assert len(set(bodies)) == len(bodies), f"a record arrived twice: {bodies}"
    return {r["body"]: r for r in found}


# -- the encoder ---------------------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def test_every_python_value_encodes_to_what_a_collector_parses() -> None:
    values: dict[Any, Any] = {
        "text": "é ✓",
        "yes": True,
        "n": -7,
        "huge": 1 << 80,  # over int64: sent as text
        "ratio": 0.25,
        "nan": math.nan,
        "inf": -math.inf,
        "none": None,  # left out
        "list": [1, "a", None, [2]],
        "tuple": (1.5,),
        "map": {"inner": 1, 2: "key not text"},
        "bytes": b"\x00\xff",
        "set": {1},
        "object": Opaque(),
        ("tuple", "key"): 1,
    }
    record = _otlp.log_record(
        time_unix_nano=1,
        observed_unix_nano=2,
        levelno=logging.WARNING,
        body="b",
        attributes=values,
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
    )
    body = _otlp.export_request([record], {"service.name": "s"}, "posthog-errors", "1")
    parsed = parse_otlp(body)
    [log] = parsed.resource_logs[0].scope_logs[0].log_records
    assert (log.severity_number, log.severity_text) == (13, "WARN")
    assert log.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    sent = {kv.key: kv.value for kv in log.attributes}
    assert "none" not in sent
    assert sent["n"].int_value == -7 and sent["yes"].bool_value is True
    assert sent["huge"].string_value == str(1 << 80)
    assert sent["nan"].string_value == "NaN" and sent["inf"].string_value == "-Infinity"
    assert [v.WhichOneof("value") for v in sent["list"].array_value.values] == [
        "int_value",
        "string_value",
        None,
        "array_value",
    ]
    assert {kv.key for kv in sent["map"].kvlist_value.values} == {"inner", "2"}
    assert sent["object"].string_value == "<Opaque>"
    assert "('tuple', 'key')" in sent


@pytest.mark.parametrize(
    ("levelno", "expected"),
    [
        (5, (1, "TRACE")),
        (logging.DEBUG, (5, "DEBUG")),
        (logging.INFO, (9, "INFO")),
        (25, (12, "INFO")),
        (logging.WARNING, (13, "WARN")),
        (logging.ERROR, (17, "ERROR")),
        (logging.CRITICAL, (21, "FATAL")),
        (99, (21, "FATAL")),
    ],
)
def test_severity_follows_the_logs_spec(levelno: int, expected: tuple[int, str]) -> None:
    assert _otlp.severity(levelno) == expected


# -- install(send_logs=...) ----------------------------------------------------------------


def test_logging_records_carry_person_session_trace_and_the_event_uuid(
    logs_server: CaptureServer, installed: posthog_errors.Installation
) -> None:
    log = logging.getLogger("shop.checkout")
    with (
        posthog_errors.bind(distinct_id="user-7", session_id="sess-7"),
        TRACER.start_as_current_span("checkout") as span,
    ):
        log.info("cart has %d items", 3, extra={"cart_id": "c-1", "api_token": "s3cr3t-v4lue"})
        try:
            raise ValueError("card declined")
        except ValueError:
            log.exception("payment failed")
        context = span.get_span_context()
    log.debug("below send_logs")
    logging.getLogger("posthog_errors.internal").warning("the library's own record")
    found = by_body(records(logs_server, 2))
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    for record in found.values():
        assert (record["trace_id"], record["span_id"]) == (trace_id, span_id)
        assert record["attributes"]["posthogDistinctId"] == "user-7"
        assert record["attributes"]["sessionId"] == "sess-7"
        assert record["attributes"]["logger.name"] == "shop.checkout"
        assert record["resource"] == {
            "service.name": "shop",
            "service.version": "2.4.1",
            "deployment.environment": "staging",
            "telemetry.sdk.name": "posthog-errors",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.version": posthog_errors.__version__,
        }
    info = found["cart has 3 items"]
    assert (info["severity_number"], info["severity_text"]) == (9, "INFO")
    assert info["attributes"]["cart_id"] == "c-1"
    assert info["attributes"]["api_token"] == "[Filtered]"  # the one redaction policy
    error = found["payment failed"]
    assert error["severity_text"] == "ERROR"
    assert error["attributes"]["exception.type"] == "ValueError"
    # The $exception event of the same record: the same trace, span, session and person,
    # and its uuid on the log.
    [event] = logs_server.wait_for_events(1)
    props = event["properties"]
    assert error["attributes"]["posthogExceptionUuid"] == event["uuid"]
    assert (props["$trace_id"], props["$span_id"]) == (trace_id, span_id)
    assert (event["distinct_id"], props["$session_id"]) == ("user-7", "sess-7")
    stats = posthog_errors.stats()
    assert (stats["logs_queued"], stats["logs_sent"]) == (2, 2)


def test_records_the_app_turned_off_are_not_sent(
    logs_server: CaptureServer, installed: posthog_errors.Installation
) -> None:
    quiet = logging.getLogger("shop.quiet")
    quiet.setLevel(logging.ERROR)
    quiet.warning("under the logger's level")
    filtered = logging.getLogger("shop.filtered")
    filtered.addFilter(lambda record: False)
    filtered.warning("filtered out")
    off = logging.getLogger("shop.off")
    off.disabled = True
    off.warning("disabled logger")
    logging.disable(logging.WARNING)
    try:
        logging.getLogger("shop").warning("logging.disable")
    finally:
        logging.disable(logging.NOTSET)
    logging.getLogger("shop").warning("sent")
    assert [r["body"] for r in records(logs_server, 1)] == ["sent"]
    assert posthog_errors.stats()["logs_queued"] == 1


def test_send_logs_none_sends_nothing(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    with posthog_errors.install(posthog_client, flush_on_signals=False):
        logging.getLogger("shop").warning("not a log")
        assert posthog_errors.flush(5)
    assert logs_server.log_requests == []
    assert posthog_errors.stats()["logs_queued"] == 0


def test_bad_options_fail_at_configuration_time(posthog_client: posthog.Posthog) -> None:
    with pytest.raises(ValueError, match="unknown level"):
        posthog_errors.install(posthog_client, send_logs="loud")
    with pytest.raises(TypeError):
        posthog_errors.install(posthog_client, send_logs=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before_send_log needs send_logs"):
        posthog_errors.install(posthog_client, before_send_log=lambda r: r)
    with pytest.raises(TypeError, match="before_send_log"):
        posthog_errors.PostHogHandler(client=posthog_client, send_logs="info", before_send_log=3)  # type: ignore[arg-type]


# -- before_send_log, the rate cap, PostHog's answers --------------------------------------


def edit_or_drop(record: dict[str, Any]) -> dict[str, Any] | None:
    if record["body"] == "drop me":
        return None
    if record["body"] == "raise":
        raise RuntimeError("hook bug")
    if record["body"] == "wrong":
        return "not a dict"  # type: ignore[return-value]
    record["attributes"]["edited"] = True
    record["body"] = record["body"].upper()
    return record


def test_before_send_log_edits_drops_and_fails_closed(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    with posthog_errors.install(
        posthog_client, send_logs="warning", before_send_log=edit_or_drop, flush_on_signals=False
    ):
        log = logging.getLogger("shop")
        for body in ("keep", "drop me", "raise", "wrong"):
            log.warning(body)
        [record] = records(logs_server, 1)
    assert record["body"] == "KEEP" and record["attributes"]["edited"] is True
    stats = posthog_errors.stats()
    assert (stats["logs_queued"], stats["logs_sent"]) == (4, 1)
    assert (stats["logs_filtered"], stats["logs_dropped"]) == (1, 2)


def test_the_rate_cap_counts_after_before_send_log(
    logs_server: CaptureServer, posthog_client: posthog.Posthog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_logs_delivery, "RATE_CAP", 5)
    with posthog_errors.install(
        posthog_client, send_logs="info", before_send_log=edit_or_drop, flush_on_signals=False
    ):
        log = logging.getLogger("shop")
        log.warning("drop me")  # filtered: takes none of the window
        for index in range(8):
            log.warning("burst %d", index)
        found = records(logs_server, 5)
    assert [r["body"] for r in found] == [f"BURST {i}" for i in range(5)]
    stats = posthog_errors.stats()
    assert (stats["logs_filtered"], stats["logs_rate_limited"], stats["logs_sent"]) == (1, 3, 5)


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (Fault(status=400), "logs_rejected"),
        (Fault(status=413), "logs_rejected"),  # halved down to single records, then given up
        (Fault(status=503, retry_after=0.01), "logs_undelivered"),
    ],
    ids=["400", "413", "503"],
)
def test_what_postHog_refuses_is_counted_not_sent(
    logs_server: CaptureServer, posthog_client: posthog.Posthog, fault: Fault, outcome: str
) -> None:
    logs_server.set_fault(fault)
    with posthog_errors.install(posthog_client, send_logs="info", flush_on_signals=False):
        for index in range(4):
            logging.getLogger("shop").warning("refused %d", index)
        assert not posthog_errors.flush(10)
    stats = posthog_errors.stats()
    assert (stats["logs_sent"], stats[outcome]) == (0, 4)
    assert logs_server.log_records() == []
    expected = {"logs_rejected": (1, 7), "logs_undelivered": (3, 3)}[outcome]
    if fault.status == 413:  # 4 records, then 2 + 2, then 1 + 1 + 1 + 1
        assert len(logs_server.log_requests) == expected[1]
    elif fault.status == 503:  # retried, then given up
        assert len(logs_server.log_requests) == expected[0]


# -- the other doors -----------------------------------------------------------------------


def test_dictconfig_handler_sends_logs_once_beside_install(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "posthog": {
                    "class": "posthog_errors.PostHogHandler",
                    "api_key": "phc_dictconfig",
                    "host": logs_server.url,
                    "send_logs": "info",
                    "before_send_log": "tests.test_logs.edit_or_drop",
                }
            },
            "loggers": {"billing": {"handlers": ["posthog"], "level": "INFO"}},
        }
    )
    billing = logging.getLogger("billing")
    try:
        billing.info("invoice sent")
        records_now = records(logs_server, 1)
        assert records_now[0]["body"] == "INVOICE SENT"
        # install() as well: its hook sees the record first; the handler does not repeat it.
        logs_server.clear()
        with posthog_errors.install(posthog_client, send_logs="info", flush_on_signals=False):
            billing.info("invoice paid")
            [record] = records(logs_server, 1)
        assert record["body"] == "invoice paid"  # install()'s options: no before_send_log
    finally:
        handler = billing.handlers[0]
        billing.removeHandler(handler)
        handler.close()


def test_structlog_key_values_are_attributes(
    logs_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    import structlog

    from posthog_errors.structlog import PostHogProcessor

    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            PostHogProcessor(posthog_client, send_logs="info"),
            structlog.processors.KeyValueRenderer(),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        with TRACER.start_as_current_span("job") as span:
            structlog.get_logger("jobs").info(
                "job done", job_id=12, tags=["a", "b"], distinct_id="user-9", password="pw-123"
            )
            structlog.get_logger("jobs").debug("below")
            try:
                raise KeyError("job-12")
            except KeyError:
                structlog.get_logger("jobs").exception("job failed", job_id=12)
        found = by_body(records(logs_server, 2))
    finally:
        structlog.reset_defaults()
    failed = found["job failed"]
    [event] = logs_server.wait_for_events(1)
    assert failed["attributes"]["posthogExceptionUuid"] == event["uuid"]
    assert failed["attributes"]["exception.type"] == "KeyError"
    assert failed["severity_text"] == "ERROR"
    record = found["job done"]
    assert record["trace_id"] == format(span.get_span_context().trace_id, "032x")
    attributes = record["attributes"]
    assert attributes["posthogDistinctId"] == "user-9"
    assert attributes["job_id"] == 12
    assert attributes["tags"] == "['a', 'b']"  # a container by its bounded repr
    assert attributes["password"] == "[Filtered]"
    assert "event" not in attributes and "level" not in attributes


# -- a web request through the middleware, all three libraries -----------------------------


def test_a_failing_request_has_its_logs_from_every_library(
    logs_server: CaptureServer, installed: posthog_errors.Installation
) -> None:
    import structlog
    from loguru import logger as loguru_logger

    from posthog_errors.middleware import ASGIMiddleware
    from posthog_errors.structlog import PostHogProcessor

    structlog.configure(
        processors=[structlog.stdlib.add_log_level, PostHogProcessor(send_logs="info")],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    spans: list[Any] = []

    async def checkout(request: Request) -> PlainTextResponse:
        logging.getLogger("web.checkout").info("stdlib: checkout started")
        structlog.get_logger("web.checkout").info("structlog: cart priced", total=42.5)
        loguru_logger.bind(order="o-1").info("loguru: stock reserved")
        raise RuntimeError("payment provider down")

    def traced(app: Any) -> Any:
        """The server span around the app, as OpenTelemetry's ASGI middleware makes it."""

        async def traced_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            with TRACER.start_as_current_span(f"{scope['method']} {scope['path']}") as span:
                spans.append(span.get_span_context())
                await app(scope, receive, send)

        return traced_app

    app = traced(ASGIMiddleware(Starlette(routes=[Route("/checkout", checkout, methods=["POST"])])))
    headers = {"X-POSTHOG-DISTINCT-ID": "buyer-1", "X-POSTHOG-SESSION-ID": "sess-web"}
    try:
        with TestClient(app, raise_server_exceptions=False) as web:
            assert web.post("/checkout", headers=headers).status_code == 500
        # httpx (the test posthog_client) logs the request at INFO too: an app log like any other.
        found = by_body(
            [r for r in records(logs_server, 4) if r["attributes"]["logger.name"] != "httpx"]
        )
    finally:
        structlog.reset_defaults()
    [context] = spans
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    assert set(found) == {
        "stdlib: checkout started",
        "structlog: cart priced",
        "loguru: stock reserved",
    }
    for record in found.values():
        assert (record["trace_id"], record["span_id"]) == (trace_id, span_id)
        assert record["attributes"]["posthogDistinctId"] == "buyer-1"
        assert record["attributes"]["sessionId"] == "sess-web"
    assert found["structlog: cart priced"]["attributes"]["total"] == 42.5
    assert found["loguru: stock reserved"]["attributes"]["order"] == "o-1"
    [event] = logs_server.wait_for_events(1)
    props = event["properties"]
    assert (props["$trace_id"], props["$span_id"]) == (trace_id, span_id)
    assert (event["distinct_id"], props["$session_id"]) == ("buyer-1", "sess-web")
