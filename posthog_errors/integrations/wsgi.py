"""``WSGIMiddleware``: Flask and any WSGI app (see ``_requests`` for what every middleware
binds and reports), and how Flask's route is read from a WSGI environ. Flask is never
imported here: only used when the app imported it."""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from posthog_errors._context import bind
from posthog_errors.integrations._requests import (
    ROUTE,
    Identify,
    RequestReporter,
    Route,
    add_client_properties,
    request_scope,
)

__all__ = ["WSGIMiddleware", "watch_flask", "wsgi_properties"]

# Where a WSGI environ keeps Flask's route once Flask's request context is gone (PEP 3333:
# middlewares add keys of their own, namespaced).
_FLASK_ROUTE_KEY = "posthog_errors.request_route"
_watching_flask = False


class WSGIMiddleware:
    """``app.wsgi_app = WSGIMiddleware(app.wsgi_app)`` for Flask, or any WSGI app.

    Flask turns a view's exception into a 500 response itself unless
    ``PROPAGATE_EXCEPTIONS`` is on, so with Flask's defaults nothing escapes to this
    middleware: it still binds the IDs for the request, and ``report_flask_exceptions(app)``
    reports what Flask handles (through its ``got_request_exception`` signal).

    ``capture_ip=True`` adds ``$ip``: the first address of ``X-Forwarded-For``, else
    ``REMOTE_ADDR``. ``$request_route`` is Flask's ``request.url_rule.rule``, once Flask has
    matched the URL (other WSGI frameworks: no route). ``environment`` and ``service`` are
    sent with every event of the request (over ``install()``'s).
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        client: Any = None,
        identify: Identify | None = None,
        capture_ip: bool = False,
        environment: str | None = None,
        service: str | None = None,
    ) -> None:
        self.app = app
        self._requests = RequestReporter(
            client,
            identify,
            "wsgi.middleware",
            capture_ip,
            environment=environment,
            service=service,
        )
        watch_flask()  # the app is built, so Flask (if it is one) is imported by now

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def header(name: str) -> str | None:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return value if isinstance(value, str) else None

        distinct_id, session_id = self._requests.ids(environ, header)
        properties = self._requests.details(wsgi_properties(environ, self._requests.capture_ip))
        with request_scope(distinct_id, session_id, properties):
            try:
                result = self.app(environ, start_response)
            except Exception as exc:
                self._requests.report(exc, properties)
                raise
        return _ReportingBody(result, self._requests, properties, distinct_id, session_id)


class _ReportingBody:
    """A WSGI body that reports what a streaming response raises while it is iterated."""

    def __init__(
        self,
        result: Iterable[bytes],
        requests: RequestReporter,
        properties: dict[str, Any],
        distinct_id: Any,
        session_id: Any,
    ) -> None:
        self._result = result
        self._requests = requests
        self._properties = properties
        self._ids = (distinct_id, session_id)
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _ReportingBody:
        return self

    def _bind(self) -> bind:
        return bind(self._ids[0], session_id=self._ids[1], properties=self._properties)

    def __next__(self) -> bytes:
        # A streaming body runs while the server iterates, after __call__ returned: bind
        # the request's IDs and details again for each step, so the body's own logging is
        # attributed.
        with self._bind():
            try:
                if self._iterator is None:
                    self._iterator = iter(self._result)
                return next(self._iterator)
            except StopIteration:
                raise
            except Exception as exc:
                self._requests.report(exc, self._properties)
                raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            with self._bind():
                close()


def wsgi_properties(environ: dict[str, Any], capture_ip: bool) -> dict[str, Any]:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    # PEP 3333: PATH_INFO holds the raw bytes decoded as latin-1.
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        path = urllib.parse.quote(raw.encode("latin-1"))
    except UnicodeEncodeError:
        path = urllib.parse.quote(raw)
    properties: dict[str, Any] = {
        "$current_url": f"{scheme}://{host}{path}",
        "$request_method": environ.get("REQUEST_METHOD", "GET"),
        "$request_path": path,
        ROUTE: Route(lambda: _flask_route(environ)),
    }
    add_client_properties(
        properties,
        environ.get("HTTP_USER_AGENT"),
        environ.get("HTTP_X_FORWARDED_FOR") if capture_ip else None,
        environ.get("REMOTE_ADDR") if capture_ip else None,
    )
    return properties


def _flask_route(environ: Mapping[str, Any]) -> object:
    """Flask's ``request.url_rule.rule`` for this request, once Flask has matched the URL:
    from Flask's request context while it is active, else what ``_remember_flask_route``
    noted in the environ before an exception left it (``PROPAGATE_EXCEPTIONS``: the
    middleware reports after Flask has popped the context)."""
    remembered = environ.get(_FLASK_ROUTE_KEY)
    if remembered is not None:
        return remembered
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_request_context():
        return None
    request = flask.request
    if request.environ is not environ:
        return None  # another request's context: not this binding's route
    return getattr(request.url_rule, "rule", None)


def _remember_flask_route(sender: Any, **extra: Any) -> None:
    """A ``got_request_exception`` receiver: note the route where ``_flask_route`` finds it
    once Flask's request context is gone. Sent while the context is still active."""
    try:
        from flask import request

        rule = getattr(request.url_rule, "rule", None)
        if isinstance(rule, str):
            request.environ[_FLASK_ROUTE_KEY] = rule
    except Exception:
        pass  # never a reason for Flask's own handling to fail


def watch_flask() -> None:
    """Connect ``_remember_flask_route`` once, for every Flask app, if Flask is in use."""
    global _watching_flask
    flask = sys.modules.get("flask")
    if flask is None or _watching_flask:
        return
    _watching_flask = True
    flask.got_request_exception.connect(_remember_flask_route, weak=False)
