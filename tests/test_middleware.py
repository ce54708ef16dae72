"""The ASGI, WSGI and Django middlewares under real frameworks and real requests.

Every test asserts on the JSON that crossed the wire to the loopback capture server: the
middleware binds posthog-js's tracing headers (or what ``identify`` returns) for the request,
reports the exception that escapes the app with its source, re-raises it, and leaves no
context behind.

Flask: Flask turns a view's exception into a 500 itself unless ``PROPAGATE_EXCEPTIONS`` is
on, so most Flask tests set it, which lets the exception reach ``WSGIMiddleware``. With the
default configuration, ``report_flask_exceptions(app)`` reports through Flask's signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from django.test import AsyncClient, Client, override_settings
from django.urls import path as django_path
from fastapi import APIRouter, FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import posthog_errors
from posthog_errors import PostHogHandler, _rate_limit
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.middleware import (
    ASGIMiddleware,
    DjangoMiddleware,
    WSGIMiddleware,
    report_flask_exceptions,
)
from tests import django_app

with warnings.catch_warnings():
    # Starlette 1.x warns that its TestClient will move from httpx to httpx2.
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

django_app.configure()

DISTINCT_HEADER = "X-POSTHOG-DISTINCT-ID"
SESSION_HEADER = "X-POSTHOG-SESSION-ID"
BROWSER = {DISTINCT_HEADER: "browser-user", SESSION_HEADER: "browser-session"}
# What a request carries that must never reach PostHog: a query string with a reset token
# and an email, a session cookie, an Authorization header.
SECRET_QUERY = "reset_token=q9Zr4WkT&email=ann%40example.com"
PRIVATE = {"Cookie": "sessionid=c00k1eV4lue", "Authorization": "Bearer au7hZv4lue"}
LEAKS = ("q9Zr4WkT", "ann", "c00k1eV4lue", "au7hZv4lue", "reset_token")


def assert_no_request_secrets(event: dict[str, Any]) -> None:
    wire = json.dumps(event)
    for leak in LEAKS:
        assert leak not in wire, leak


def sent_events(server: CaptureServer, count: int) -> list[dict[str, Any]]:
    """Flush, then exactly ``count`` ``$exception`` events from the wire."""
    assert posthog_errors.flush(5)
    events = server.wait_for_events(count)
    assert len(events) == count, events
    return events


def only_event(server: CaptureServer) -> dict[str, Any]:
    [event] = sent_events(server, 1)
    return event


def assert_unhandled(event: dict[str, Any], source: str, type_name: str, value: str) -> None:
    props = event["properties"]
    assert props["$exception_source"] == source
    assert props["$exception_handled"] is False
    assert props["$exception_level"] == "error"
    [entry] = props["$exception_list"]
    assert (entry["type"], entry["value"]) == (type_name, value)
    assert entry["mechanism"]["handled"] is False
    assert entry["mechanism"]["type"] == "middleware"  # the spec's category; source: the tech


def assert_person(event: dict[str, Any], distinct_id: str, session_id: str | None) -> None:
    props = event["properties"]
    assert event["distinct_id"] == distinct_id
    assert props.get("$session_id") == session_id
    assert "$process_person_profile" not in props


def assert_personless(event: dict[str, Any]) -> None:
    props = event["properties"]
    assert props["$process_person_profile"] is False
    assert "$session_id" not in props
    assert event["distinct_id"] not in ("browser-user", "None", "")


def ids_now() -> dict[str, str | None]:
    return {
        "distinct_id": posthog_errors.get_distinct_id(),
        "session_id": posthog_errors.get_session_id(),
    }


# -- ASGI: Starlette ---------------------------------------------------------------------


def starlette_app() -> Starlette:
    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError(f"asgi boom {request.method}")

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(ids_now())

    return Starlette(
        routes=[Route("/boom", boom, methods=["GET", "POST"]), Route("/whoami", whoami)]
    )


def test_asgi_reports_the_escaping_exception_with_the_header_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    app = ASGIMiddleware(starlette_app())
    # The context manager runs the lifespan protocol: non-HTTP scopes pass straight through.
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/boom?{SECRET_QUERY}", headers={**BROWSER, **PRIVATE})
    assert response.status_code == 500
    event = only_event(capture_server)
    assert_unhandled(event, "asgi.middleware", "RuntimeError", "asgi boom POST")
    assert_person(event, "browser-user", "browser-session")
    props = event["properties"]
    assert props["$current_url"] == "http://testserver/boom"  # scheme, host, path: no query
    assert_no_request_secrets(event)
    assert props["$request_method"] == "POST"
    assert props["$request_path"] == "/boom"
    assert posthog_errors.get_distinct_id() is None


def test_asgi_binds_the_header_ids_for_the_request_only(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with TestClient(ASGIMiddleware(starlette_app())) as client:
        bound = client.get("/whoami", headers=BROWSER).json()
        after = client.get("/whoami").json()
    assert bound == {"distinct_id": "browser-user", "session_id": "browser-session"}
    assert after == {"distinct_id": None, "session_id": None}
    assert posthog_errors.get_distinct_id() is None
    assert posthog_errors.flush(5)
    assert capture_server.exception_events() == []


def test_asgi_request_without_headers_is_personless(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    client = TestClient(ASGIMiddleware(starlette_app()), raise_server_exceptions=False)
    assert client.get("/boom").status_code == 500
    event = only_event(capture_server)
    assert_unhandled(event, "asgi.middleware", "RuntimeError", "asgi boom GET")
    assert_personless(event)


def test_asgi_identify_takes_precedence_over_the_headers(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    seen: list[str] = []

    def identify(scope: Any) -> str:
        seen.append(scope["path"])
        return "user-from-auth"

    app = ASGIMiddleware(starlette_app(), identify=identify)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/whoami", headers=BROWSER).json() == {
        "distinct_id": "user-from-auth",
        "session_id": "browser-session",  # identify named no session: the header's stays
    }
    assert client.get("/boom", headers=BROWSER).status_code == 500
    assert seen == ["/whoami", "/boom"]
    event = only_event(capture_server)
    assert_unhandled(event, "asgi.middleware", "RuntimeError", "asgi boom GET")
    assert_person(event, "user-from-auth", "browser-session")


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        (("auth-user", "auth-session"), ("auth-user", "auth-session")),
        (("auth-user", None), ("auth-user", "browser-session")),
        ((None, "auth-session"), ("browser-user", "auth-session")),
        (None, ("browser-user", "browser-session")),
    ],
    ids=["tuple", "tuple-without-session", "tuple-without-user", "none-falls-back"],
)
def test_asgi_identify_tuple_and_none(
    capture_server: CaptureServer,
    reporter: Reporter,
    claimed: Any,
    expected: tuple[str, str],
) -> None:
    app = ASGIMiddleware(starlette_app(), identify=lambda scope: claimed)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/boom", headers=BROWSER).status_code == 500
    assert_person(only_event(capture_server), *expected)


def test_asgi_through_httpx_re_raises_and_restores_the_callers_context(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    app = starlette_app()
    app.add_middleware(ASGIMiddleware)  # inside Starlette's own error middleware

    async def main() -> tuple[int, dict[str, Any], str | None]:
        with posthog_errors.bind("outer-task", session_id="outer-session"):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
                with pytest.raises(RuntimeError, match="asgi boom GET"):
                    await c.get("/boom", headers=BROWSER)  # the exception is re-raised
                bound = (await c.get("/whoami", headers=BROWSER)).json()
            # The same task ran the app: the request's binding is gone, ours is back.
            assert ids_now() == {"distinct_id": "outer-task", "session_id": "outer-session"}
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
                status = (await c.get("/boom", headers=BROWSER)).status_code
        return status, bound, posthog_errors.get_distinct_id()

    status, bound, after = asyncio.run(main())
    assert status == 500
    assert bound == {"distinct_id": "browser-user", "session_id": "browser-session"}
    assert after is None
    events = sent_events(capture_server, 2)
    for event in events:
        assert_unhandled(event, "asgi.middleware", "RuntimeError", "asgi boom GET")
        assert_person(event, "browser-user", "browser-session")
        assert event["properties"]["$current_url"] == "http://app.test/boom"


# -- ASGI: FastAPI -----------------------------------------------------------------------


def test_fastapi_add_middleware_and_the_innermost_binding_wins(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def read_item(item_id: int) -> dict[str, Any]:
        with posthog_errors.bind("inner-user"):
            raise LookupError(f"no item {item_id}")

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        return ids_now()

    app.add_middleware(ASGIMiddleware, identify=lambda scope: "auth-user")
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/whoami", headers=BROWSER).json() == {
        "distinct_id": "auth-user",
        "session_id": "browser-session",
    }
    response = client.get("/items/42", headers=BROWSER)
    assert response.status_code == 500
    event = only_event(capture_server)
    assert_unhandled(event, "asgi.middleware", "LookupError", "no item 42")
    # The exception remembers the endpoint's bind(); the session comes from the request's.
    assert_person(event, "inner-user", "browser-session")
    assert event["properties"]["$request_path"] == "/items/42"
    assert event["properties"]["$current_url"] == "http://testserver/items/42"


def test_fastapi_def_endpoint_steps_reach_the_middlewares_event(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    """A ``def`` endpoint runs in anyio's thread pool, in a copy of the request's context:
    what it logs still reaches the middleware's event, as it does for ``async def``, and
    never the next request served by the same pool thread."""
    log = logging.getLogger("tests.fastapi_steps")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = PostHogHandler(reporter=reporter)
    log.addHandler(handler)
    app = FastAPI()

    @app.get("/sync/{customer}")
    def export_sync(customer: str) -> dict[str, Any]:
        log.info("exporting invoices of %s", customer)
        posthog_errors.add_step("sync step", customer=customer)
        raise RuntimeError(f"sync export of {customer} failed")

    @app.get("/async/{customer}")
    async def export_async(customer: str) -> dict[str, Any]:
        log.info("exporting invoices of %s", customer)
        posthog_errors.add_step("async step", customer=customer)
        raise RuntimeError(f"async export of {customer} failed")

    app.add_middleware(ASGIMiddleware)
    try:
        client = TestClient(app, raise_server_exceptions=False)
        for path in ("/sync/acme-corp", "/sync/globex", "/async/initech"):
            assert client.get(path, headers=BROWSER).status_code == 500
        events = sent_events(capture_server, 3)
    finally:
        log.removeHandler(handler)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    for kind, customer in (("sync", "acme-corp"), ("sync", "globex"), ("async", "initech")):
        event = by_value[f"{kind} export of {customer} failed"]
        assert_unhandled(
            event, "asgi.middleware", "RuntimeError", f"{kind} export of {customer} failed"
        )
        assert_person(event, "browser-user", "browser-session")
        steps = event["properties"]["$exception_steps"]
        assert [s["$message"] for s in steps] == [
            f"exporting invoices of {customer}",
            f"{kind} step",
        ]
        assert steps[1]["customer"] == customer
        assert "acme-corp" not in json.dumps(steps) or customer == "acme-corp"


# -- ASGI: concurrency -------------------------------------------------------------------


def test_concurrent_asgi_requests_keep_their_own_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    _rate_limit.configure(None)  # 20 failures from one site

    async def fail(request: Request) -> JSONResponse:
        user = request.headers[DISTINCT_HEADER]
        for _ in range(3):
            await asyncio.sleep(0.001)  # interleave the requests
        assert posthog_errors.get_distinct_id() == user
        raise RuntimeError(f"failure for {user}")

    app = ASGIMiddleware(Starlette(routes=[Route("/fail", fail)]))

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
            responses = await asyncio.gather(
                *(
                    c.get("/fail", headers={DISTINCT_HEADER: f"user-{i}", SESSION_HEADER: f"s-{i}"})
                    for i in range(20)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [500] * 20
    events = sent_events(capture_server, 20)
    users = set()
    for event in events:
        [entry] = event["properties"]["$exception_list"]
        user = entry["value"].removeprefix("failure for ")
        users.add(user)
        assert_person(event, user, user.replace("user-", "s-"))
    assert users == {f"user-{i}" for i in range(20)}


# -- WSGI --------------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(WSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@contextlib.contextmanager
def wsgi_server(app: Callable[..., Any]) -> Iterator[str]:
    """Serve ``app`` with wsgiref on a background thread; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, server_class=QuietServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxies


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def plain_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ["PATH_INFO"]
    if path == "/whoami":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(ids_now()).encode()]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream_body()
    raise RuntimeError(f"wsgi boom {path}")


def stream_body() -> Iterator[bytes]:
    yield b"first chunk;"
    yield f"during iteration: {posthog_errors.get_distinct_id()};".encode()
    raise RuntimeError("stream broke")


def test_wsgi_reports_the_escaping_exception_with_the_header_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with wsgi_server(WSGIMiddleware(plain_wsgi_app)) as base:
        status, _ = http_get(f"{base}/boom?{SECRET_QUERY}", {**BROWSER, **PRIVATE})
    assert status == 500
    event = only_event(capture_server)
    assert_unhandled(event, "wsgi.middleware", "RuntimeError", "wsgi boom /boom")
    assert_person(event, "browser-user", "browser-session")
    props = event["properties"]
    assert props["$current_url"] == base + "/boom"
    assert_no_request_secrets(props)
    assert props["$request_method"] == "GET"
    assert props["$request_path"] == "/boom"


def test_wsgi_streaming_body_failure_is_reported_with_the_request_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with wsgi_server(WSGIMiddleware(plain_wsgi_app)) as base:
        status, body = http_get(base + "/stream", BROWSER)
        # The server thread that streamed is clean for the next request.
        _, after = http_get(base + "/whoami")
    assert status == 200  # the headers went out before the body broke
    assert body.startswith(b"first chunk;")
    assert json.loads(after) == {"distinct_id": None, "session_id": None}
    event = only_event(capture_server)
    assert_unhandled(event, "wsgi.middleware", "RuntimeError", "stream broke")
    assert_person(event, "browser-user", "browser-session")
    assert event["properties"]["$request_path"] == "/stream"
    assert posthog_errors.get_distinct_id() is None


def test_wsgi_streaming_body_runs_with_the_request_ids_bound(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with wsgi_server(WSGIMiddleware(plain_wsgi_app)) as base:
        _, body = http_get(base + "/stream", BROWSER)
    assert b"during iteration: browser-user;" in body


def test_wsgi_binds_the_header_ids_for_the_request_only(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    # wsgiref's server is single-threaded: both requests run on the same thread.
    with wsgi_server(WSGIMiddleware(plain_wsgi_app)) as base:
        _, bound = http_get(base + "/whoami", BROWSER)
        _, after = http_get(base + "/whoami")
    assert json.loads(bound) == {"distinct_id": "browser-user", "session_id": "browser-session"}
    assert json.loads(after) == {"distinct_id": None, "session_id": None}
    assert posthog_errors.get_distinct_id() is None
    assert posthog_errors.flush(5)
    assert capture_server.exception_events() == []


def test_wsgi_identify_takes_precedence_and_none_falls_back(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    def identify(environ: dict[str, Any]) -> str | None:
        return environ.get("HTTP_X_AUTH_USER")  # None: anonymous

    with wsgi_server(WSGIMiddleware(plain_wsgi_app, identify=identify)) as base:
        assert http_get(base + "/authed", {**BROWSER, "X-Auth-User": "user-from-auth"})[0] == 500
        assert http_get(base + "/anonymous", BROWSER)[0] == 500
        assert http_get(base + "/nobody")[0] == 500
    events = sent_events(capture_server, 3)
    by_path = {e["properties"]["$request_path"]: e for e in events}
    assert_person(by_path["/authed"], "user-from-auth", "browser-session")
    assert_person(by_path["/anonymous"], "browser-user", "browser-session")
    assert_personless(by_path["/nobody"])


def test_wsgi_non_ascii_path_keeps_its_url(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with wsgi_server(WSGIMiddleware(plain_wsgi_app)) as base:
        assert http_get(base + "/caf%C3%A9")[0] == 500
    props = only_event(capture_server)["properties"]
    assert props["$current_url"] == base + "/caf%C3%A9"


def flask_app(*, propagate: bool = True, **options: Any) -> Flask:
    app = Flask("flask_test_app")
    if propagate:
        app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.route("/orders/<int:order_id>", methods=["GET", "POST"])
    def order(order_id: int) -> str:
        raise KeyError(f"order {order_id}")

    @app.route("/whoami")
    def whoami() -> dict[str, Any]:
        return ids_now()

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def test_flask_reports_the_view_exception_with_the_header_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with wsgi_server(flask_app()) as base:
        status, _ = http_get(f"{base}/orders/7?{SECRET_QUERY}", {**BROWSER, **PRIVATE})
        _, bound = http_get(base + "/whoami", BROWSER)
        _, after = http_get(base + "/whoami")
    assert status == 500
    assert json.loads(bound) == {"distinct_id": "browser-user", "session_id": "browser-session"}
    assert json.loads(after) == {"distinct_id": None, "session_id": None}
    event = only_event(capture_server)
    assert_unhandled(event, "wsgi.middleware", "KeyError", "'order 7'")
    assert_person(event, "browser-user", "browser-session")
    assert event["properties"]["$current_url"] == base + "/orders/7"
    assert_no_request_secrets(event)
    assert event["properties"]["$request_path"] == "/orders/7"


def test_flask_identify_takes_precedence(capture_server: CaptureServer, reporter: Reporter) -> None:
    app = flask_app(identify=lambda environ: ("flask-auth-user", "flask-auth-session"))
    with wsgi_server(app) as base:
        assert http_get(base + "/orders/8", BROWSER)[0] == 500
    assert_person(only_event(capture_server), "flask-auth-user", "flask-auth-session")


def test_flask_default_config_reports_through_its_signal(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    app = flask_app(propagate=False)
    report_flask_exceptions(app)
    with wsgi_server(app) as base:
        assert http_get(base + "/orders/9", BROWSER)[0] == 500
    event = only_event(capture_server)
    assert_unhandled(event, "flask.got_request_exception", "KeyError", "'order 9'")
    assert_person(event, "browser-user", "browser-session")
    assert event["properties"]["$request_path"] == "/orders/9"


# -- Django ------------------------------------------------------------------------------


def test_django_reports_the_view_exception_with_the_header_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    client = Client(raise_request_exception=False)
    response = client.post(
        f"/boom/?{SECRET_QUERY}",
        HTTP_X_POSTHOG_DISTINCT_ID="browser-user",
        HTTP_X_POSTHOG_SESSION_ID="browser-session",
        HTTP_COOKIE=PRIVATE["Cookie"],
        HTTP_AUTHORIZATION=PRIVATE["Authorization"],
    )
    assert response.status_code == 500
    event = only_event(capture_server)
    assert_unhandled(event, "django.middleware", "RuntimeError", "django boom POST")
    assert_person(event, "browser-user", "browser-session")
    props = event["properties"]
    assert props["$current_url"] == "http://testserver/boom/"
    assert_no_request_secrets(props)
    assert props["$request_method"] == "POST"
    assert props["$request_path"] == "/boom/"


def test_django_binds_the_header_ids_for_the_request_only(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    # Django's test client runs the handler on this very thread.
    client = Client()
    assert client.get("/whoami/", headers=BROWSER).json() == {
        "distinct_id": "browser-user",
        "session_id": "browser-session",
    }
    assert posthog_errors.get_distinct_id() is None
    assert client.get("/whoami/").json() == {"distinct_id": None, "session_id": None}
    assert posthog_errors.flush(5)
    assert capture_server.exception_events() == []


def test_django_request_without_headers_is_personless(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    assert Client(raise_request_exception=False).get("/boom/").status_code == 500
    event = only_event(capture_server)
    assert_unhandled(event, "django.middleware", "RuntimeError", "django boom GET")
    assert_personless(event)


def test_django_identify_override_takes_precedence(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with override_settings(MIDDLEWARE=[django_app.AUTH_MIDDLEWARE]):
        client = Client(raise_request_exception=False)  # loads the overridden MIDDLEWARE
        authed = {**BROWSER, "X-Auth-User": "user-from-auth"}
        assert client.get("/whoami/", headers=authed).json() == {
            "distinct_id": "user-from-auth",
            "session_id": "browser-session",
        }
        assert client.get("/boom/", headers=authed).status_code == 500
        both = {**authed, "X-Auth-Session": "auth-session"}
        assert client.post("/boom/", headers=both).status_code == 500
        assert client.put("/boom/", headers=BROWSER).status_code == 500  # identify: None
    events = sent_events(capture_server, 3)
    by_method = {e["properties"]["$request_method"]: e for e in events}
    assert_person(by_method["GET"], "user-from-auth", "browser-session")
    assert_person(by_method["POST"], "user-from-auth", "auth-session")
    assert_person(by_method["PUT"], "browser-user", "browser-session")
    for event in events:
        assert event["properties"]["$exception_source"] == "django.middleware"


def test_django_async_path(capture_server: CaptureServer, reporter: Reporter) -> None:
    async def main() -> tuple[int, int, dict[str, Any], str | None]:
        client = AsyncClient(raise_request_exception=False)
        sync_view = await client.get("/boom/", headers=BROWSER)
        async_view = await client.get("/async-boom/", headers=BROWSER)
        bound = (await client.get("/async-whoami/", headers=BROWSER)).json()
        return (
            sync_view.status_code,
            async_view.status_code,
            bound,
            posthog_errors.get_distinct_id(),
        )

    sync_status, async_status, bound, after = asyncio.run(main())
    assert (sync_status, async_status) == (500, 500)
    assert bound == {"distinct_id": "browser-user", "session_id": "browser-session"}
    assert after is None
    events = sent_events(capture_server, 2)
    by_path = {e["properties"]["$request_path"]: e for e in events}
    assert_unhandled(by_path["/boom/"], "django.middleware", "RuntimeError", "django boom GET")
    assert_unhandled(
        by_path["/async-boom/"], "django.middleware", "RuntimeError", "django async boom"
    )
    for event in events:
        assert_person(event, "browser-user", "browser-session")
    assert by_path["/async-boom/"]["properties"]["$current_url"] == "http://testserver/async-boom/"


def test_django_disallowed_host_still_reports_the_view_exception(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        response = Client(raise_request_exception=False).get(
            "/boom/", headers={**BROWSER, "Host": "evil.example"}
        )
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1, timeout=1)
    assert response.status_code == 500
    assert_unhandled(event, "django.middleware", "RuntimeError", "django boom GET")
    assert_person(event, "browser-user", "browser-session")


# -- Request details ---------------------------------------------------------------------
#
# Every $exception captured while a request runs carries its details, whichever door it
# comes through: the middleware's own report, a log record, `capture_exception` in a view,
# or the framework's own logging of an exception it handled. Nothing is left afterwards.

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CLIENT_IP = "203.0.113.7"
FORWARDED = {"X-Forwarded-For": f"{CLIENT_IP}, 10.0.0.1"}  # the client, then a proxy
DETAILED = {**BROWSER, **PRIVATE, **FORWARDED, "User-Agent": USER_AGENT}
REQUEST_DETAILS = (
    "$current_url",
    "$request_method",
    "$request_path",
    "$request_route",
    "$user_agent",
    "$raw_user_agent",
    "$ip",
)
VIEW_LOGGER = "tests.request_views"
MESSAGE = "LogMessage"  # the type of a log record without an exception: LogMessage[<hash>]
# LEAKS, for events whose frames hold library code, where "ann" is in many a word.
FRAME_SAFE_LEAKS = (*(leak for leak in LEAKS if leak != "ann"), "ann%40", "ann@")


@pytest.fixture
def view_logs(reporter: Reporter) -> Iterator[None]:
    """The views' log records reach PostHog through the test's reporter."""
    handler = PostHogHandler(reporter=reporter)
    view_logger = logging.getLogger(VIEW_LOGGER)
    view_logger.addHandler(handler)
    yield
    view_logger.removeHandler(handler)


def fail_in_view(order_id: object) -> NoReturn:
    """What a view does: log an error, capture a handled exception, then fail uncaught."""
    logging.getLogger(VIEW_LOGGER).error("payment declined for order %s", order_id)
    try:
        raise LookupError(f"order {order_id} not cached")
    except LookupError as exc:
        posthog_errors.capture_exception(exc)
    raise RuntimeError(f"order {order_id} failed")


def type_of(event: dict[str, Any]) -> str:
    type_name: str = event["properties"]["$exception_list"][0]["type"]
    return MESSAGE if type_name.startswith(MESSAGE + "[") else type_name


def capture_after_the_request() -> None:
    try:
        raise ValueError("after the request")
    except ValueError as exc:
        posthog_errors.capture_exception(exc)


def assert_request_details(
    event: dict[str, Any], *, path: str, route: str | None, ip: str | None, method: str = "GET"
) -> None:
    props = event["properties"]
    assert props["$request_method"] == method
    assert props["$request_path"] == path
    scheme, _, rest = props["$current_url"].partition("://")
    assert scheme in ("http", "https")
    assert rest.partition("/")[1:] == ("/", path.removeprefix("/"))  # the host, the path
    if route is None:
        assert "$request_route" not in props
    else:
        assert props["$request_route"] == route
    assert props["$user_agent"] == USER_AGENT
    assert props["$raw_user_agent"] == USER_AGENT
    if ip is None:
        assert "$ip" not in props
    else:
        assert props["$ip"] == ip
    wire = json.dumps(event)
    for leak in FRAME_SAFE_LEAKS:
        assert leak not in wire, leak


def assert_no_request_details(event: dict[str, Any]) -> None:
    props = event["properties"]
    assert [key for key in REQUEST_DETAILS if key in props] == []


def assert_every_door(
    server: CaptureServer,
    source: str,
    *,
    path: str,
    route: str,
    ip: str | None = None,
    method: str = "GET",
    after: bool = False,
) -> None:
    """The view's log record, its ``capture_exception`` and the exception it let escape
    (reported by ``source``) carry the request's details; ``after``: so does nothing
    captured once the request was over."""
    events = sent_events(server, 4 if after else 3)
    by_type = {type_of(e): e for e in events}
    if after:
        assert_no_request_details(by_type.pop("ValueError"))
    assert by_type[MESSAGE]["properties"]["$exception_source"] == "python.logging"
    assert "$exception_source" not in by_type["LookupError"]["properties"]  # manual capture
    assert by_type["RuntimeError"]["properties"]["$exception_source"] == source
    for event in by_type.values():
        assert_request_details(event, path=path, route=route, ip=ip, method=method)
        assert_person(event, "browser-user", "browser-session")


async def starlette_order(request: Request) -> NoReturn:
    fail_in_view(request.path_params["order_id"])


async def starlette_boom(request: Request) -> NoReturn:
    raise RuntimeError(f"asgi boom {request.method}")


def test_asgi_every_capture_in_the_request_carries_its_details(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    app = ASGIMiddleware(Starlette(routes=[Route("/orders/{order_id}", starlette_order)]))
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get(f"/orders/7?{SECRET_QUERY}", headers=DETAILED).status_code == 500
    assert_every_door(
        capture_server, "asgi.middleware", path="/orders/7", route="/orders/{order_id}"
    )


def test_fastapi_route_template_includes_the_router_prefix(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    router = APIRouter(prefix="/shop")

    @router.get("/orders/{order_id}")
    def order(order_id: int) -> None:  # a sync endpoint: FastAPI's thread pool
        fail_in_view(order_id)

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(ASGIMiddleware)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get(f"/shop/orders/7?{SECRET_QUERY}", headers=DETAILED).status_code == 500
    assert_every_door(
        capture_server, "asgi.middleware", path="/shop/orders/7", route="/shop/orders/{order_id}"
    )


def test_asgi_ip_only_with_the_opt_in(capture_server: CaptureServer, reporter: Reporter) -> None:
    routes = [Route("/boom", starlette_boom, methods=["GET", "POST"])]
    plain = TestClient(ASGIMiddleware(Starlette(routes=routes)), raise_server_exceptions=False)
    opted = TestClient(
        ASGIMiddleware(Starlette(routes=routes), capture_ip=True), raise_server_exceptions=False
    )
    assert plain.put("/boom", headers={"User-Agent": USER_AGENT, **FORWARDED}).status_code == 405
    assert plain.get("/boom", headers={"User-Agent": USER_AGENT, **FORWARDED}).status_code == 500
    assert opted.post("/boom", headers={"User-Agent": USER_AGENT, **FORWARDED}).status_code == 500
    assert opted.patch("/boom", headers={"User-Agent": USER_AGENT}).status_code == 405
    assert opted.delete("/boom", headers={"User-Agent": USER_AGENT}).status_code == 405
    # 405s are responses, not exceptions: two events.
    events = sent_events(capture_server, 2)
    by_method = {e["properties"]["$request_method"]: e for e in events}
    assert_request_details(by_method["GET"], path="/boom", route="/boom", ip=None)
    assert_request_details(
        by_method["POST"], path="/boom", route="/boom", ip=CLIENT_IP, method="POST"
    )


def test_asgi_ip_falls_back_to_the_peer(capture_server: CaptureServer, reporter: Reporter) -> None:
    routes = [Route("/boom", starlette_boom)]
    app = ASGIMiddleware(Starlette(routes=routes), capture_ip=True)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/boom", headers={"User-Agent": USER_AGENT}).status_code == 500
    # Starlette's TestClient names its peer "testclient".
    assert_request_details(only_event(capture_server), path="/boom", route="/boom", ip="testclient")


def test_asgi_route_under_a_mount_and_without_a_router(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    async def no_router(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no router")

    mounted = Starlette(
        routes=[
            Mount("/admin", routes=[Route("/orders/{order_id}", starlette_boom)]),
            Mount("/raw", app=no_router),
        ]
    )
    client = TestClient(ASGIMiddleware(mounted), raise_server_exceptions=False)
    assert client.get("/admin/orders/7", headers={"User-Agent": USER_AGENT}).status_code == 500
    assert client.get("/raw/anything", headers={"User-Agent": USER_AGENT}).status_code == 500
    bare = TestClient(ASGIMiddleware(no_router), raise_server_exceptions=False)
    assert bare.get("/orders/7", headers={"User-Agent": USER_AGENT}).status_code == 500
    events = sent_events(capture_server, 3)
    by_path = {e["properties"]["$request_path"]: e for e in events}
    route = "/admin/orders/{order_id}"
    assert_request_details(by_path["/admin/orders/7"], path="/admin/orders/7", route=route, ip=None)
    # A mounted app that does its own routing: the mount is the route Starlette knows.
    assert_request_details(by_path["/raw/anything"], path="/raw/anything", route="/raw", ip=None)
    # No router ran: no route, the rest of the details all the same.
    assert_request_details(by_path["/orders/7"], path="/orders/7", route=None, ip=None)


def test_asgi_query_string_in_raw_path_is_not_sent(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    async def no_router(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no router")

    # What a server that keeps the whole request target in raw_path hands over.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/boom",
        "raw_path": f"/boom?{SECRET_QUERY}".encode(),
        "query_string": SECRET_QUERY.encode(),
        "root_path": "",
        "headers": [(b"host", b"app.test"), (b"user-agent", USER_AGENT.encode())],
        "client": ("192.0.2.1", 4321),
        "server": ("app.test", 443),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    with pytest.raises(RuntimeError, match="no router"):
        asyncio.run(ASGIMiddleware(no_router)(scope, receive, send))
    event = only_event(capture_server)
    assert_request_details(event, path="/boom", route=None, ip=None)
    assert event["properties"]["$current_url"] == "https://app.test/boom"


def test_concurrent_asgi_requests_keep_their_own_details(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    _rate_limit.configure(None)  # 20 failures from one site

    async def order(request: Request) -> JSONResponse:
        order_id = request.path_params["order_id"]
        for _ in range(3):
            await asyncio.sleep(0.001)  # interleave the requests
        logging.getLogger(VIEW_LOGGER).error("payment declined for order %s", order_id)
        raise RuntimeError(f"order {order_id} failed")

    app = ASGIMiddleware(Starlette(routes=[Route("/orders/{order_id}", order)]), capture_ip=True)

    def headers(i: int) -> dict[str, str]:
        return {
            DISTINCT_HEADER: f"user-{i}",
            "User-Agent": f"agent-{i}",
            "X-Forwarded-For": f"198.51.100.{i}, 10.0.0.1",
        }

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
            responses = await asyncio.gather(
                *(c.get(f"/orders/{i}?{SECRET_QUERY}", headers=headers(i)) for i in range(20))
            )
            # This task itself runs one more request; once it is over, nothing is left.
            responses.append(await c.get(f"/orders/20?{SECRET_QUERY}", headers=headers(20)))
        capture_after_the_request()
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [500] * 21
    events = sent_events(capture_server, 43)
    seen: dict[str, list[str]] = {}
    for event in events:
        props = event["properties"]
        [entry] = props["$exception_list"]
        if entry["type"] == "ValueError":
            assert_no_request_details(event)
            continue
        i = props["$request_path"].removeprefix("/orders/")
        seen.setdefault(i, []).append(type_of(event))
        assert entry["value"].endswith((f"order {i}", f"order {i} failed"))
        assert event["distinct_id"] == f"user-{i}"
        assert props["$current_url"] == f"http://app.test/orders/{i}"
        assert props["$request_route"] == "/orders/{order_id}"
        assert props["$user_agent"] == props["$raw_user_agent"] == f"agent-{i}"
        assert props["$ip"] == f"198.51.100.{i}"
        assert "reset_token" not in json.dumps(event)
    assert {i: sorted(types) for i, types in seen.items()} == {
        str(i): [MESSAGE, "RuntimeError"] for i in range(21)
    }


def test_wsgi_details_without_a_router(capture_server: CaptureServer, reporter: Reporter) -> None:
    with wsgi_server(WSGIMiddleware(plain_wsgi_app, capture_ip=True)) as base:
        status, _ = http_get(f"{base}/boom?{SECRET_QUERY}", {"User-Agent": USER_AGENT, **FORWARDED})
    assert status == 500
    event = only_event(capture_server)
    assert_request_details(event, path="/boom", route=None, ip=CLIENT_IP)
    assert event["properties"]["$current_url"] == base + "/boom"


def flask_orders_app(*, propagate: bool) -> Flask:
    app = Flask("flask_orders_app")
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.route("/orders/<int:order_id>", methods=["GET", "POST"])
    def order(order_id: int) -> NoReturn:
        fail_in_view(order_id)

    return app


def test_flask_every_capture_in_the_request_carries_its_details(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    app = flask_orders_app(propagate=True)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="order 7 failed"):
        # Flask's test client runs the app on this thread.
        app.test_client().post(f"/orders/7?{SECRET_QUERY}", headers=DETAILED)
    capture_after_the_request()
    # The middleware reports after Flask's request context is gone: the route still comes.
    assert_every_door(
        capture_server,
        "wsgi.middleware",
        method="POST",
        path="/orders/7",
        route="/orders/<int:order_id>",
        after=True,
    )


def test_flask_logging_the_exception_itself_carries_the_details(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    app = flask_orders_app(propagate=False)  # Flask's default: a 500, and app.logger.error
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, capture_ip=True)  # type: ignore[method-assign]
    handler = PostHogHandler(reporter=reporter)
    app.logger.addHandler(handler)
    try:
        response = app.test_client().get(f"/orders/7?{SECRET_QUERY}", headers=DETAILED)
    finally:
        app.logger.removeHandler(handler)
    assert response.status_code == 500
    capture_after_the_request()
    assert_every_door(
        capture_server,
        "python.logging",
        path="/orders/7",
        route="/orders/<int:order_id>",
        ip=CLIENT_IP,
        after=True,
    )


def test_flask_report_without_the_middleware_carries_the_details(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    app = flask_orders_app(propagate=False)
    report_flask_exceptions(app, capture_ip=True)
    response = app.test_client().get(
        f"/orders/7?{SECRET_QUERY}", headers={"User-Agent": USER_AGENT}
    )
    assert response.status_code == 500
    events = sent_events(capture_server, 2)
    by_type = {type_of(e): e for e in events}
    # Only the report: nothing bound the request for the view's own capture.
    assert_no_request_details(by_type["LookupError"])
    report = by_type["RuntimeError"]
    assert_unhandled(report, "flask.got_request_exception", "RuntimeError", "order 7 failed")
    # Flask's test client's peer address: no X-Forwarded-For.
    assert_request_details(report, path="/orders/7", route="/orders/<int:order_id>", ip="127.0.0.1")


def django_order(request: Any, order_id: int) -> NoReturn:
    fail_in_view(order_id)


async def async_django_order(request: Any, order_id: int) -> NoReturn:
    fail_in_view(order_id)


class OrderURLs:
    """A URLconf (Django takes any object with ``urlpatterns``) with parameterized routes."""

    urlpatterns: ClassVar = [
        django_path("orders/<int:order_id>", django_order),
        django_path("async-orders/<int:order_id>", async_django_order),
    ]


class IPDjangoMiddleware(DjangoMiddleware):
    capture_ip = True


def test_django_every_capture_in_the_request_carries_its_details(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    with override_settings(ROOT_URLCONF=OrderURLs):
        # Django's test client runs the handler on this very thread.
        response = Client(raise_request_exception=False).get(
            f"/orders/7?{SECRET_QUERY}", headers=DETAILED
        )
    assert response.status_code == 500
    capture_after_the_request()
    assert_every_door(
        capture_server,
        "django.middleware",
        path="/orders/7",
        route="orders/<int:order_id>",
        after=True,
    )


def test_django_async_view_carries_the_details(
    capture_server: CaptureServer, reporter: Reporter, view_logs: None
) -> None:
    async def main() -> int:
        client = AsyncClient(raise_request_exception=False)
        response = await client.get(f"/async-orders/7?{SECRET_QUERY}", headers=DETAILED)
        capture_after_the_request()
        return response.status_code

    with override_settings(ROOT_URLCONF=OrderURLs):
        assert asyncio.run(main()) == 500
    assert_every_door(
        capture_server,
        "django.middleware",
        path="/async-orders/7",
        route="async-orders/<int:order_id>",
        after=True,
    )


def test_django_ip_only_with_the_opt_in(capture_server: CaptureServer, reporter: Reporter) -> None:
    agent = {"User-Agent": USER_AGENT}
    assert Client(raise_request_exception=False).get("/boom/", headers={**agent, **FORWARDED})
    with override_settings(MIDDLEWARE=[f"{__name__}.IPDjangoMiddleware"]):
        client = Client(raise_request_exception=False)
        assert client.post("/boom/", headers={**agent, **FORWARDED}).status_code == 500
        assert client.put("/boom/", headers=agent).status_code == 500
    events = sent_events(capture_server, 3)
    by_method = {e["properties"]["$request_method"]: e for e in events}
    assert_request_details(by_method["GET"], path="/boom/", route="boom/", ip=None)
    assert_request_details(
        by_method["POST"], path="/boom/", route="boom/", ip=CLIENT_IP, method="POST"
    )
    # No X-Forwarded-For: the peer address (REMOTE_ADDR, 127.0.0.1 in Django's test client).
    assert_request_details(
        by_method["PUT"], path="/boom/", route="boom/", ip="127.0.0.1", method="PUT"
    )
