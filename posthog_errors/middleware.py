"""Web middlewares: bind the person for each request, report what escapes, leave nothing.

posthog-js sends its tracing headers, ``X-POSTHOG-DISTINCT-ID`` and ``X-POSTHOG-SESSION-ID``,
with requests to your backend when ``__add_tracing_headers`` is on. These middlewares bind
those IDs for the request's duration, report the exception that escapes the app (and
re-raise it), and restore the context afterwards, so nothing leaks into the next request.

What a report says about the request: ``$current_url`` (scheme, host and path),
``$request_method`` and ``$request_path``. Never the query string (reset tokens, emails,
API keys travel there), cookies, or any header but the two IDs, as posthog-python's own
integrations do.

The headers come from the browser: a client can claim any ID. When the app knows the
authenticated user, pass ``identify`` (a callable taking the request and returning the
distinct ID, or ``(distinct_id, session_id)``): its answer takes precedence.

No web framework is imported here; Django's middleware uses asgiref (which Django ships)
only when Django hands it an async ``get_response``.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from posthog_errors._context import bind
from posthog_errors._reporter import Reporter, default_reporter
from posthog_errors._stats import STATS

logger = logging.getLogger("posthog_errors")

__all__ = ["ASGIMiddleware", "DjangoMiddleware", "WSGIMiddleware", "report_flask_exceptions"]

DISTINCT_ID_HEADER = "x-posthog-distinct-id"
SESSION_ID_HEADER = "x-posthog-session-id"

Identify = Callable[[Any], Any]
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class _RequestReporter:
    """What the three middlewares share: who is the person, and how to report."""

    def __init__(self, client: Any, identify: Identify | None, source: str) -> None:
        if identify is not None and not callable(identify):
            raise TypeError(f"identify must be a callable taking the request, got {identify!r}")
        self._reporter = Reporter(client) if client is not None else None
        self._identify = identify
        self._source = source

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
    """``app = ASGIMiddleware(app)`` for Starlette, FastAPI and any ASGI 3 app."""

    def __init__(
        self, app: ASGIApp, *, client: Any = None, identify: Identify | None = None
    ) -> None:
        self.app = app
        self._requests = _RequestReporter(client, identify, "python.asgi")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        distinct_id, session_id = self._requests.ids(scope, headers.get)
        with bind(distinct_id, session_id=session_id):
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                self._requests.report(exc, _asgi_properties(scope, headers))
                raise


class WSGIMiddleware:
    """``app.wsgi_app = WSGIMiddleware(app.wsgi_app)`` for Flask, or any WSGI app.

    Flask turns a view's exception into a 500 response itself unless
    ``PROPAGATE_EXCEPTIONS`` is on, so with Flask's defaults nothing escapes to this
    middleware: it still binds the IDs for the request, and ``report_flask_exceptions(app)``
    reports what Flask handles (through its ``got_request_exception`` signal).
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        client: Any = None,
        identify: Identify | None = None,
    ) -> None:
        self.app = app
        self._requests = _RequestReporter(client, identify, "python.wsgi")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def header(name: str) -> str | None:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return value if isinstance(value, str) else None

        distinct_id, session_id = self._requests.ids(environ, header)
        with bind(distinct_id, session_id=session_id):
            try:
                result = self.app(environ, start_response)
            except Exception as exc:
                self._requests.report(exc, _wsgi_properties(environ))
                raise
        return _ReportingBody(result, self._requests, environ, distinct_id, session_id)


class _ReportingBody:
    """A WSGI body that reports what a streaming response raises while it is iterated."""

    def __init__(
        self,
        result: Iterable[bytes],
        requests: _RequestReporter,
        environ: dict[str, Any],
        distinct_id: Any,
        session_id: Any,
    ) -> None:
        self._result = result
        self._requests = requests
        self._environ = environ
        self._ids = (distinct_id, session_id)
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _ReportingBody:
        return self

    def __next__(self) -> bytes:
        # A streaming body runs while the server iterates, after __call__ returned: bind
        # the request's IDs again for each step, so the body's own logging is attributed.
        with bind(self._ids[0], session_id=self._ids[1]):
            try:
                if self._iterator is None:
                    self._iterator = iter(self._result)
                return next(self._iterator)
            except StopIteration:
                raise
            except Exception as exc:
                self._requests.report(exc, _wsgi_properties(self._environ))
                raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            with bind(self._ids[0], session_id=self._ids[1]):
                close()


def report_flask_exceptions(app: Any, *, client: Any = None) -> None:
    """Report the exceptions Flask turns into 500 responses, with the request's IDs.

    Connects to ``flask.got_request_exception``, which Flask sends while the request (and
    so the binding of a ``WSGIMiddleware`` around it) is still active.
    """
    from flask import got_request_exception, request

    requests = _RequestReporter(client, None, "python.wsgi")

    def posthog_errors_flask_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
        requests.report(exception, _wsgi_properties(request.environ))

    got_request_exception.connect(posthog_errors_flask_exception, app, weak=False)


class DjangoMiddleware:
    """Add ``"posthog_errors.middleware.DjangoMiddleware"`` to ``MIDDLEWARE``, near the top.

    Django turns a view's exception into a 500 response before it can escape a middleware,
    so the exception is reported from ``process_exception``. To identify the authenticated
    user, subclass and override :meth:`identify`.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._requests = _RequestReporter(None, self.identify, "python.django")
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

    def _bind(self, request: Any) -> bind:
        distinct_id, session_id = self._requests.ids(request, request.headers.get)
        return bind(distinct_id, session_id=session_id)

    def process_exception(self, request: Any, exception: Exception) -> None:
        properties: dict[str, Any] = {
            "$request_method": request.method,
            "$request_path": request.path,
        }
        try:
            properties["$current_url"] = request.build_absolute_uri(request.path)
        except Exception:
            # DisallowedHost from a spoofed Host header: never a reason to lose the report.
            properties["$current_url"] = request.path
        self._requests.report(exception, properties)
        # None: Django goes on with its own handling (500 page, got_request_exception).


def _is_coroutine_function(function: Any) -> bool:
    try:
        from asgiref.sync import iscoroutinefunction
    except ImportError:
        import inspect

        return inspect.iscoroutinefunction(function)
    return bool(iscoroutinefunction(function))


def _asgi_properties(scope: Scope, headers: dict[str, str]) -> dict[str, Any]:
    scheme = scope.get("scheme", "http")
    host = headers.get("host") or ""
    raw_path = scope.get("raw_path")
    path = (
        raw_path.decode("latin-1")
        if isinstance(raw_path, bytes)
        else urllib.parse.quote(scope.get("path", ""))
    )
    return {
        "$current_url": f"{scheme}://{host}{path}",
        "$request_method": scope.get("method", "GET"),
        "$request_path": path,
    }


def _wsgi_properties(environ: dict[str, Any]) -> dict[str, Any]:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    # PEP 3333: PATH_INFO holds the raw bytes decoded as latin-1.
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        path = urllib.parse.quote(raw.encode("latin-1"))
    except UnicodeEncodeError:
        path = urllib.parse.quote(raw)
    return {
        "$current_url": f"{scheme}://{host}{path}",
        "$request_method": environ.get("REQUEST_METHOD", "GET"),
        "$request_path": path,
    }
