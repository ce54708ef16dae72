"""Web middlewares: bind the person for each request, report what escapes, leave nothing.

posthog-js sends its tracing headers, ``X-POSTHOG-DISTINCT-ID`` and ``X-POSTHOG-SESSION-ID``,
with requests to your backend when ``__add_tracing_headers`` is on. These middlewares bind
those IDs for the request's duration, report the exception that escapes the app (and
re-raise it), and restore the context afterwards, so nothing leaks into the next request.

They also bind the request's details, so every ``$exception`` captured during the request
carries them, whichever way it comes (the middleware's report, a log record, a
``capture_exception`` in a view): ``$current_url`` (scheme, host and path),
``$request_method``, ``$request_path``, ``$request_route`` (the route template, read when
the event is captured, since the framework knows it only once it has routed the request),
``$user_agent`` and ``$raw_user_agent`` (both the ``User-Agent`` header, as posthog-python's
integrations send it), and ``$ip`` only with ``capture_ip=True``. Never the query string
(reset tokens, emails, API keys travel there), cookies, or any other header, as
posthog-python's own integrations do.

The headers come from the browser: a client can claim any ID. When the app knows the
authenticated user, pass ``identify`` (a callable taking the request and returning the
distinct ID, or ``(distinct_id, session_id)``): its answer takes precedence.

No web framework is imported here; Django's middleware uses asgiref (which Django ships)
only when Django hands it an async ``get_response``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from posthog_errors import _extensions, _steps
from posthog_errors._context import bind
from posthog_errors._reporter import Reporter, default_reporter
from posthog_errors._snapshot import EventSnapshot
from posthog_errors._stats import STATS

logger = logging.getLogger("posthog_errors")

__all__ = ["ASGIMiddleware", "DjangoMiddleware", "WSGIMiddleware", "report_flask_exceptions"]

DISTINCT_ID_HEADER = "x-posthog-distinct-id"
SESSION_ID_HEADER = "x-posthog-session-id"
USER_AGENT_HEADER = "user-agent"
FORWARDED_FOR_HEADER = "x-forwarded-for"
ROUTE = "$request_route"

# As posthog-python's ASGI integration cleans a header value: no control characters, no
# surrounding blanks, at most 1,000 characters.
_MAX_HEADER_LENGTH = 1000
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Identify = Callable[[Any], Any]
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class _Route:
    """A request's route template, read when an event is captured.

    The framework knows the route only once it has routed the request, after the middleware
    bound the request's properties; so the binding holds this instead of a value, and the
    capture hook below swaps it for the template (or drops the key: no route matched) on
    the caller's thread, when the event is captured. Bound, it travels like any property:
    into inner ``bind()`` blocks, ``carry_context`` threads, and the binding an escaping
    exception remembers.
    """

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], object]) -> None:
        self._read = read

    def template(self) -> str | None:
        try:
            value = self._read()
        except Exception:
            return None  # the framework's objects are not ours to trust
        return value if isinstance(value, str) and value else None

    def __repr__(self) -> str:
        return f"<request route {self.template()!r}>"


def _resolve_route(exc: BaseException | None, snapshot: EventSnapshot) -> None:
    """A capture hook: the bound ``$request_route`` becomes the template known by now."""
    properties = snapshot.properties  # the event's own copy
    if not properties:
        return
    route = properties.get(ROUTE)
    if isinstance(route, _Route):
        template = route.template()
        if template is None:
            del properties[ROUTE]
        else:
            properties[ROUTE] = template


_extensions.add_capture_hook(_resolve_route)

# Where a WSGI environ keeps Flask's route once Flask's request context is gone (PEP 3333:
# middlewares add keys of their own, namespaced).
_FLASK_ROUTE_KEY = "posthog_errors.request_route"
_watching_flask = False


class _RequestReporter:
    """What the three middlewares share: who is the person, and how to report."""

    def __init__(
        self, client: Any, identify: Identify | None, source: str, capture_ip: bool = False
    ) -> None:
        if identify is not None and not callable(identify):
            raise TypeError(f"identify must be a callable taking the request, got {identify!r}")
        self._reporter = Reporter(client) if client is not None else None
        self._identify = identify
        self._source = source
        self.capture_ip = bool(capture_ip)

    def ids(self, request: Any, headers: Callable[[str], str | None]) -> tuple[Any, Any]:
        distinct_id, session_id = headers(DISTINCT_ID_HEADER), headers(SESSION_ID_HEADER)
        if self._identify is not None:
            try:
                claimed = self._identify(request)
            except Exception:
                # The app's callable failed: the request goes on, identified by its headers.
                STATS.add("invalid_input")
                logger.warning("identify() raised; using the tracing headers", exc_info=True)
                claimed = None
            if isinstance(claimed, tuple):
                claimed_id = claimed[0] if len(claimed) > 0 else None
                claimed_session = claimed[1] if len(claimed) > 1 else None
                distinct_id = claimed_id if claimed_id not in (None, "") else distinct_id
                session_id = claimed_session if claimed_session not in (None, "") else session_id
            elif claimed not in (None, ""):
                distinct_id = claimed
        return distinct_id, session_id

    def report(self, exc: BaseException, properties: dict[str, Any]) -> None:
        reporter = self._reporter or default_reporter()
        reporter.capture(
            exc,
            level="error",
            handled=False,
            mechanism=self._source.removeprefix("python."),
            source=self._source,
            properties=properties,
        )


class ASGIMiddleware:
    """``app = ASGIMiddleware(app)`` for Starlette, FastAPI and any ASGI 3 app.

    ``capture_ip=True`` adds ``$ip``: the first address of ``X-Forwarded-For``, else the
    peer's. ``$request_route`` is the template of ``scope["route"]``, which Starlette's and
    FastAPI's routers set once they have matched the request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Any = None,
        identify: Identify | None = None,
        capture_ip: bool = False,
    ) -> None:
        self.app = app
        self._requests = _RequestReporter(client, identify, "python.asgi", capture_ip)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        distinct_id, session_id = self._requests.ids(scope, headers.get)
        properties = _asgi_properties(scope, headers, self._requests.capture_ip)
        with _request(distinct_id, session_id, properties):
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                self._requests.report(exc, properties)
                raise


class WSGIMiddleware:
    """``app.wsgi_app = WSGIMiddleware(app.wsgi_app)`` for Flask, or any WSGI app.

    Flask turns a view's exception into a 500 response itself unless
    ``PROPAGATE_EXCEPTIONS`` is on, so with Flask's defaults nothing escapes to this
    middleware: it still binds the IDs for the request, and ``report_flask_exceptions(app)``
    reports what Flask handles (through its ``got_request_exception`` signal).

    ``capture_ip=True`` adds ``$ip``: the first address of ``X-Forwarded-For``, else
    ``REMOTE_ADDR``. ``$request_route`` is Flask's ``request.url_rule.rule``, once Flask has
    matched the URL (other WSGI frameworks: no route).
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        client: Any = None,
        identify: Identify | None = None,
        capture_ip: bool = False,
    ) -> None:
        self.app = app
        self._requests = _RequestReporter(client, identify, "python.wsgi", capture_ip)
        _watch_flask()  # the app is built, so Flask (if it is one) is imported by now

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def header(name: str) -> str | None:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return value if isinstance(value, str) else None

        distinct_id, session_id = self._requests.ids(environ, header)
        properties = _wsgi_properties(environ, self._requests.capture_ip)
        with _request(distinct_id, session_id, properties):
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
        requests: _RequestReporter,
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


@contextlib.contextmanager
def _request(distinct_id: Any, session_id: Any, properties: dict[str, Any]) -> Iterator[None]:
    """One request: its IDs and details bound, and an empty trail of exception steps (a
    server thread that served another request before must not lend it its steps)."""
    token = _steps.start_trail()
    try:
        with bind(distinct_id, session_id=session_id, properties=properties):
            yield
    finally:
        _steps.end_trail(token)


def report_flask_exceptions(app: Any, *, client: Any = None, capture_ip: bool = False) -> None:
    """Report the exceptions Flask turns into 500 responses, with the request's IDs.

    Connects to ``flask.got_request_exception``, which Flask sends while the request (and
    so the binding of a ``WSGIMiddleware`` around it) is still active. The report carries
    the request's details (``$ip`` only with ``capture_ip=True``) even without the
    middleware; the IDs and the details of other events come from the middleware.
    """
    from flask import got_request_exception, request

    requests = _RequestReporter(client, None, "python.wsgi", capture_ip)
    _watch_flask()

    def posthog_errors_flask_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
        requests.report(exception, _wsgi_properties(request.environ, requests.capture_ip))

    got_request_exception.connect(posthog_errors_flask_exception, app, weak=False)


class DjangoMiddleware:
    """Add ``"posthog_errors.middleware.DjangoMiddleware"`` to ``MIDDLEWARE``, near the top.

    Django turns a view's exception into a 500 response before it can escape a middleware,
    so the exception is reported from ``process_exception``. To identify the authenticated
    user, subclass and override :meth:`identify`; to send ``$ip`` (the first address of
    ``X-Forwarded-For``, else ``REMOTE_ADDR``), subclass and set ``capture_ip = True``.
    ``$request_route`` is ``request.resolver_match.route``, once Django has resolved the URL.
    """

    sync_capable = True
    async_capable = True
    capture_ip = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._requests = _RequestReporter(None, self.identify, "python.django", self.capture_ip)
        self._async = False
        if _is_coroutine_function(get_response):
            from asgiref.sync import markcoroutinefunction

            self._async = True
            markcoroutinefunction(self)

    def identify(self, request: Any) -> Any:
        """The distinct ID (or ``(distinct_id, session_id)``) for a request; None: headers."""
        return None

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._call_async(request)
        with self._bind(request):
            return self.get_response(request)

    async def _call_async(self, request: Any) -> Any:
        with self._bind(request):
            return await self.get_response(request)

    def _bind(self, request: Any) -> contextlib.AbstractContextManager[None]:
        distinct_id, session_id = self._requests.ids(request, request.headers.get)
        properties = _django_properties(request, self._requests.capture_ip)
        return _request(distinct_id, session_id, properties)

    def process_exception(self, request: Any, exception: Exception) -> None:
        properties = _django_properties(request, self._requests.capture_ip)
        self._requests.report(exception, properties)
        # None: Django goes on with its own handling (500 page, got_request_exception).


def _is_coroutine_function(function: Any) -> bool:
    try:
        from asgiref.sync import iscoroutinefunction
    except ImportError:
        import inspect

        return inspect.iscoroutinefunction(function)
    return bool(iscoroutinefunction(function))


def _asgi_properties(scope: Scope, headers: dict[str, str], capture_ip: bool) -> dict[str, Any]:
    scheme = scope.get("scheme", "http")
    host = headers.get("host") or ""
    raw_path = scope.get("raw_path")
    # The ASGI spec's raw_path is the path alone, but a server that keeps the request
    # target there would bring the query string along: a "?" in the path itself is
    # percent-encoded, so the first one ends the path.
    path = (
        raw_path.decode("latin-1").partition("?")[0]
        if isinstance(raw_path, bytes)
        else urllib.parse.quote(scope.get("path", ""))
    )
    properties = {
        "$current_url": f"{scheme}://{host}{path}",
        "$request_method": scope.get("method", "GET"),
        "$request_path": path,
    }
    root_path = scope.get("root_path", "")
    mounted_under = root_path if isinstance(root_path, str) else ""
    properties[ROUTE] = _Route(lambda: _asgi_route(scope, mounted_under))
    peer = None
    if capture_ip:
        client = scope.get("client")
        if isinstance(client, (list, tuple)) and client and isinstance(client[0], str):
            peer = client[0]
    _add_client_properties(
        properties,
        headers.get(USER_AGENT_HEADER),
        headers.get(FORWARDED_FOR_HEADER) if capture_ip else None,
        peer,
    )
    return properties


def _asgi_route(scope: Scope, mounted_under: str) -> str | None:
    """The template of the route Starlette's (or FastAPI's) router matched, if it has.

    Inside a ``Mount``, the router records the mounted app's own route: the path the mounts
    matched (what they added to ``root_path``) goes in front of it.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str) or not template:
        return None
    root_path = scope.get("root_path", "")
    if (
        isinstance(root_path, str)
        and len(root_path) > len(mounted_under)
        and root_path.startswith(mounted_under)
    ):
        mounted = root_path[len(mounted_under) :]
        # A Mount that routes no further (static files, a WSGI app) is the route itself:
        # its match is already all of what it added.
        return mounted if hasattr(route, "routes") else mounted + template
    return template


def _wsgi_properties(environ: dict[str, Any], capture_ip: bool) -> dict[str, Any]:
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
        ROUTE: _Route(lambda: _flask_route(environ)),
    }
    _add_client_properties(
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


def _watch_flask() -> None:
    """Connect ``_remember_flask_route`` once, for every Flask app, if Flask is in use."""
    global _watching_flask
    flask = sys.modules.get("flask")
    if flask is None or _watching_flask:
        return
    _watching_flask = True
    flask.got_request_exception.connect(_remember_flask_route, weak=False)


def _django_properties(request: Any, capture_ip: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "$request_method": request.method,
        "$request_path": request.path,
        ROUTE: _Route(lambda: getattr(request.resolver_match, "route", None)),
    }
    try:
        properties["$current_url"] = request.build_absolute_uri(request.path)
    except Exception:
        # DisallowedHost from a spoofed Host header: never a reason to lose the report.
        properties["$current_url"] = request.path
    headers = request.headers
    _add_client_properties(
        properties,
        headers.get("User-Agent"),
        headers.get("X-Forwarded-For") if capture_ip else None,
        request.META.get("REMOTE_ADDR") if capture_ip else None,
    )
    return properties


def _add_client_properties(
    properties: dict[str, Any], user_agent: object, forwarded_for: object, peer: object
) -> None:
    """``$user_agent`` and ``$raw_user_agent`` (both the header, as posthog-python's
    integrations send them), and ``$ip`` when the caller passes addresses (the opt-in):
    the first of ``X-Forwarded-For`` (the client, as the proxies saw it), else the peer."""
    agent = _header_value(user_agent)
    if agent is not None:
        properties["$user_agent"] = agent
        properties["$raw_user_agent"] = agent
    forwarded = _header_value(forwarded_for)
    address = _header_value(forwarded.split(",", 1)[0]) if forwarded else None
    address = address or _header_value(peer)
    if address is not None:
        properties["$ip"] = address


def _header_value(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return _CONTROL_CHARS.sub("", value).strip()[:_MAX_HEADER_LENGTH] or None
