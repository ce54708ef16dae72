"""``ASGIMiddleware``: Starlette, FastAPI and any ASGI 3 app (see ``_requests`` for what
every middleware binds and reports). No web framework is imported here."""

from __future__ import annotations

import urllib.parse
from typing import Any

from posthog_errors import _shutdown, _units
from posthog_errors.integrations._requests import (
    FORWARDED_FOR_HEADER,
    ROUTE,
    USER_AGENT_HEADER,
    ASGIApp,
    Identify,
    RequestReporter,
    Route,
    Scope,
    add_client_properties,
    request_scope,
)

__all__ = ["ASGIMiddleware"]


class ASGIMiddleware:
    """``app = ASGIMiddleware(app)`` for Starlette, FastAPI and any ASGI 3 app.

    ``capture_ip=True`` adds ``$ip``: the first address of ``X-Forwarded-For``, else the
    peer's. ``$request_route`` is the template of ``scope["route"]``, which Starlette's and
    FastAPI's routers set once they have matched the request. ``environment`` and
    ``service`` are sent with every event of the request (over ``install()``'s).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Any = None,
        identify: Identify | None = None,
        capture_ip: bool = False,
        environment: str | None = None,
        service: str | None = None,
    ) -> None:
        self.app = app
        # Starlette and FastAPI run ``def`` endpoints in anyio's thread pool: their steps
        # must reach the request's event (see ``_units.follow_thread_pool``).
        _units.follow_thread_pool()
        self._requests = RequestReporter(
            client,
            identify,
            "asgi.middleware",
            capture_ip,
            environment=environment,
            service=service,
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "lifespan":
            # Flush as the app's shutdown completes: uvicorn then re-raises the signal.
            await self.app(scope, receive, _shutdown.lifespan_send(send))
            return
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        distinct_id, session_id = self._requests.ids(scope, headers.get)
        properties = self._requests.details(
            _asgi_properties(scope, headers, self._requests.capture_ip)
        )
        with request_scope(distinct_id, session_id, properties):
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                self._requests.report(exc, properties)
                raise


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
    properties[ROUTE] = Route(lambda: _asgi_route(scope, mounted_under))
    peer = None
    if capture_ip:
        client = scope.get("client")
        if isinstance(client, (list, tuple)) and client and isinstance(client[0], str):
            peer = client[0]
    add_client_properties(
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
