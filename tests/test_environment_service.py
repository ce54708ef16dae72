"""``environment`` and ``service`` on every event, through every door, and the names of
PostHog's SDK event spec (``mechanism.type`` a category, ``$exception_source`` the hook).

PostHog's own Django app sends ``environment`` and ``service`` as plain event properties
(``posthoganalytics.super_properties`` in PostHog/posthog ``posthog/apps.py``); these tests
read them off the wire JSON, as PostHog receives them.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
from collections.abc import Callable, Iterator
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import PostHogHandler, exception_properties
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.integrations._sentry_events import exception_list
from posthog_errors.middleware import ASGIMiddleware, WSGIMiddleware
from tests.conftest import API_KEY

LABELS = {"environment": "staging", "service": "checkout-api"}


def fail(message: str = "card declined") -> None:
    raise ValueError(message)


def caught(message: str = "card declined") -> ValueError:
    try:
        fail(message)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def events_of(server: CaptureServer, count: int) -> list[dict[str, Any]]:
    assert posthog_errors.flush(5)
    events = server.wait_for_events(count)
    assert len(events) == count, events
    return events


def labels(event: dict[str, Any]) -> dict[str, Any]:
    props = event["properties"]
    return {key: props.get(key) for key in ("environment", "service")}


@pytest.fixture
def no_label_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTHOG_ENVIRONMENT", "POSTHOG_SERVICE", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("tests.environment_service")
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.propagate = True


# -- install() and its doors -------------------------------------------------------------


def test_install_sends_both_on_every_door_it_sets(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    with posthog_errors.install(posthog_client, **LABELS, excepthooks=False, asyncio=False):
        posthog_errors.capture_exception(caught("manual"))
        logging.getLogger("tests.environment_service.install").error("logged")
        posthog_errors.capture_exception(caught("explicit"), properties={"environment": "canary"})
        events = events_of(capture_server, 3)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert labels(by_value["manual"]) == LABELS
    assert labels(by_value["logged"]) == LABELS
    # An explicit property wins, as for $release_id.
    assert labels(by_value["explicit"]) == {"environment": "canary", "service": "checkout-api"}


def test_from_environment_variables_and_explicit_wins(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_ENVIRONMENT", "production")
    monkeypatch.delenv("POSTHOG_SERVICE", raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-worker")  # OpenTelemetry's, as PostHog's
    Reporter(posthog_client).capture(caught("from variables"))
    monkeypatch.setenv("POSTHOG_SERVICE", "billing")  # ours first
    Reporter(posthog_client).capture(caught("posthog variable"))
    Reporter(posthog_client, environment="dev", service="api").capture(caught("explicit"))
    events = events_of(capture_server, 3)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert labels(by_value["from variables"]) == {
        "environment": "production",
        "service": "billing-worker",
    }
    assert labels(by_value["posthog variable"])["service"] == "billing"
    assert labels(by_value["explicit"]) == {"environment": "dev", "service": "api"}


def test_none_set_sends_neither(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    Reporter(posthog_client).capture(caught())
    [event] = events_of(capture_server, 1)
    assert "environment" not in event["properties"]
    assert "service" not in event["properties"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"environment": 3}, TypeError),
        ({"service": ["api"]}, TypeError),
        ({"service": "x" * 201}, ValueError),
    ],
)
def test_bad_values_fail_at_configuration(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(options))):
        Reporter(None, **options)
    with pytest.raises(error, match=next(iter(options))):
        PostHogHandler(**options)


# -- each door's own keywords --------------------------------------------------------------


def test_handler_from_dict_config_strings(
    capture_server: CaptureServer, logger: logging.Logger, no_label_variables: None
) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "posthog": {
                    "class": "posthog_errors.PostHogHandler",
                    "api_key": API_KEY,
                    "host": capture_server.url,
                    "environment": "staging",
                    "service": "checkout-api",
                }
            },
            "loggers": {logger.name: {"handlers": ["posthog"], "propagate": False}},
        }
    )
    try:
        logger.error("order %s failed", 7)
        [event] = events_of(capture_server, 1)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    assert labels(event) == LABELS
    root = event["properties"]["$exception_list"][0]["mechanism"]
    assert (root["type"], event["properties"]["$exception_source"]) == ("logger", "python.logging")


def test_structlog_processor(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    from posthog_errors.structlog import PostHogProcessor

    processor = PostHogProcessor(posthog_client, **LABELS)
    event_dict = {"event": "payment failed", "exc_info": caught(), "level": "error"}
    assert processor(None, "error", dict(event_dict)) == event_dict
    [event] = events_of(capture_server, 1)
    assert labels(event) == LABELS
    props = event["properties"]
    assert (props["$exception_list"][0]["mechanism"]["type"], props["$exception_source"]) == (
        "logger",
        "structlog.processor",
    )


def test_loguru_sink(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    from loguru import logger as loguru_logger

    from posthog_errors.loguru import PostHogSink

    sink = loguru_logger.add(
        PostHogSink(posthog_client, **LABELS), level=0, format="{message}", catch=False
    )
    try:
        try:
            fail()
        except ValueError:
            loguru_logger.exception("payment failed")
        [event] = events_of(capture_server, 1)
    finally:
        loguru_logger.remove(sink)
    assert labels(event) == LABELS
    props = event["properties"]
    assert (props["$exception_list"][0]["mechanism"]["type"], props["$exception_source"]) == (
        "logger",
        "loguru.sink",
    )


def test_sentry_integration_and_sentrys_own_environment(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    import sentry_sdk

    from posthog_errors.sentry import PostHogIntegration
    from tests.sentry_server import SentryServer, sentry_initialised

    with SentryServer(project_id=4242) as sentry_server:
        integration = PostHogIntegration(posthog_client, **LABELS)
        with sentry_initialised(sentry_server.dsn, integrations=[integration]):
            sentry_sdk.capture_exception(caught("own"))
        # Given no environment, the bridge sends Sentry's.
        integration = PostHogIntegration(posthog_client, service="checkout-api")
        with sentry_initialised(
            sentry_server.dsn, integrations=[integration], environment="sentry-env"
        ):
            sentry_sdk.capture_exception(caught("sentry's"))
        events = events_of(capture_server, 2)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert labels(by_value["own"]) == LABELS
    assert labels(by_value["sentry's"]) == {"environment": "sentry-env", "service": "checkout-api"}
    props = by_value["own"]["properties"]
    assert props["$exception_source"] == "sentry.event_processor"
    assert props["$exception_list"][0]["mechanism"]["type"] == "generic"


def test_wsgi_middleware_sends_both_with_every_event_of_the_request(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        posthog_errors.capture_exception(caught("inside"))  # the default reporter
        raise RuntimeError("escaped")

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/orders/7",
        "SERVER_NAME": "shop.example",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    middleware = WSGIMiddleware(app, client=posthog_client, **LABELS)
    with posthog_errors.install(posthog_client, excepthooks=False, asyncio=False, logs=False):
        with pytest.raises(RuntimeError):
            middleware(environ, lambda *args: None)
        events = events_of(capture_server, 2)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert labels(by_value["inside"]) == LABELS  # bound for the request
    assert labels(by_value["escaped"]) == LABELS
    escaped = by_value["escaped"]["properties"]
    assert escaped["$exception_source"] == "wsgi.middleware"
    assert escaped["$exception_list"][0]["mechanism"] == {
        "type": "middleware",
        "handled": False,
        "synthetic": False,
        "exception_id": 0,
    }


def test_asgi_middleware(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, no_label_variables: None
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("asgi escaped")

    middleware = ASGIMiddleware(app, client=posthog_client, environment="staging")
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "http"}
    with pytest.raises(RuntimeError):
        asyncio.run(middleware(scope, None, None))
    [event] = events_of(capture_server, 1)
    assert labels(event) == {"environment": "staging", "service": None}
    assert event["properties"]["$exception_source"] == "asgi.middleware"


def test_middleware_bad_value_fails_at_configuration() -> None:
    with pytest.raises(TypeError, match="environment"):
        WSGIMiddleware(lambda environ, start_response: [], environment=1)  # type: ignore[arg-type]


# -- the spec's names ----------------------------------------------------------------------


def test_manual_capture_sends_no_source_whatever_the_properties_say(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    posthog_errors.capture_exception(
        caught(),
        properties={
            "$exception_source": "django.middleware",  # cannot impersonate an integration
            "$exception_fingerprint_version": 2,
            "$exception_release": {"x": 1},
        },
    )
    [event] = events_of(capture_server, 1)
    props = event["properties"]
    assert "$exception_source" not in props
    assert "$exception_fingerprint_version" not in props
    assert "$exception_release" not in props
    assert props["$exception_list"][0]["mechanism"]["type"] == "generic"
    assert props["$lib"] == "posthog-python"  # as the official client sets it


def test_before_send_cannot_add_processor_keys_or_a_malformed_source(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    def before_send(properties: dict[str, Any]) -> dict[str, Any]:
        return {
            **properties,
            "$exception_fingerprint_version": 1,
            "$exception_release": "v1",
            "$exception_source": "Not A Source Name",
        }

    Reporter(posthog_client, before_send=before_send).capture(
        caught(), mechanism="logger", source="python.logging"
    )
    [event] = events_of(capture_server, 1)
    props = event["properties"]
    assert props["$exception_source"] == "python.logging"  # the built one
    assert "$exception_fingerprint_version" not in props
    assert "$exception_release" not in props


def test_exception_properties_defaults_to_a_manual_capture() -> None:
    try:
        try:
            fail()
        except ValueError as cause:
            raise RuntimeError("wrapped") from cause
    except RuntimeError as exc:
        props = exception_properties(exc)
    assert "$exception_source" not in props
    outer, cause_entry = props["$exception_list"]
    assert outer["mechanism"]["type"] == "generic"
    assert "source" not in outer["mechanism"]
    assert cause_entry["mechanism"]["source"] == "cause"


def test_a_sentry_chain_with_no_known_relationship_omits_it() -> None:
    values = [
        {"type": "KeyError", "value": "inner", "mechanism": {"type": "chained"}},
        {"type": "ValueError", "value": "middle", "mechanism": {"source": "__context__"}},
        {"type": "RuntimeError", "value": "outer", "mechanism": {"type": "celery"}},
    ]
    entries = exception_list({"exception": {"values": values}})
    assert entries[0]["mechanism"]["type"] == "task"  # Sentry's Celery: the spec's category
    assert entries[1]["mechanism"]["source"] == "context"
    assert "source" not in entries[2]["mechanism"]  # unknown: omitted, not guessed


def test_the_librarys_table_of_names_matches_the_spec_check() -> None:
    from posthog_errors import _mechanisms
    from tests import conformance

    # Every door's name is one the check accepts; the check also knows the spec's canonical
    # names of hooks this project has no door for (fastapi.exception_handler).
    assert set(_mechanisms.SOURCES.values()) <= conformance.SOURCES
    assert conformance.CANONICAL_SOURCES - set(_mechanisms.SOURCES.values()) == {
        "fastapi.exception_handler"
    }
    assert _mechanisms.CATEGORIES == conformance.MECHANISM_CATEGORIES
    assert all(_mechanisms.is_source_name(name) for name in conformance.SOURCES)
    assert not _mechanisms.is_source_name("python")  # no hook
    assert not _mechanisms.is_source_name("Python.Logging")
