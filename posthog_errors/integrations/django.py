"""``DjangoMiddleware``: Django, sync and async (see ``_requests`` for what every middleware
binds and reports). Uses asgiref (which Django ships) only when Django hands it an async
``get_response``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from posthog_errors.integrations._requests import (
    ROUTE,
    RequestReporter,
    Route,
    add_client_properties,
    is_coroutine_function,
    request_scope,
)

__all__ = ["DjangoMiddleware"]


class DjangoMiddleware:
    """Add ``"posthog_errors.middleware.DjangoMiddleware"`` to ``MIDDLEWARE``, near the top.

    Django turns a view's exception into a 500 response before it can escape a middleware,
    so the exception is reported from ``process_exception``. To identify the authenticated
    user, subclass and override :meth:`identify`; to send ``$ip`` (the first address of
    ``X-Forwarded-For``, else ``REMOTE_ADDR``), subclass and set ``capture_ip = True``.
    ``$request_route`` is ``request.resolver_match.route``, once Django has resolved the URL.
    ``environment`` and ``service`` (class attributes, None by default) are sent with every
    event of the request, over ``install()``'s.
    """

    sync_capable = True
    async_capable = True
    capture_ip = False
    environment: str | None = None
    service: str | None = None

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._requests = RequestReporter(
            None,
            self.identify,
            "django.middleware",
            self.capture_ip,
            environment=self.environment,
            service=self.service,
        )
        self._async = False
        if is_coroutine_function(get_response):
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
        properties = self._requests.details(_django_properties(request, self._requests.capture_ip))
        return request_scope(distinct_id, session_id, properties)

    def process_exception(self, request: Any, exception: Exception) -> None:
        properties = self._requests.details(_django_properties(request, self._requests.capture_ip))
        self._requests.report(exception, properties)
        # None: Django goes on with its own handling (500 page, got_request_exception).


def _django_properties(request: Any, capture_ip: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "$request_method": request.method,
        "$request_path": request.path,
        ROUTE: Route(lambda: getattr(request.resolver_match, "route", None)),
    }
    try:
        properties["$current_url"] = request.build_absolute_uri(request.path)
    except Exception:
        # DisallowedHost from a spoofed Host header: never a reason to lose the report.
        properties["$current_url"] = request.path
    headers = request.headers
    add_client_properties(
        properties,
        headers.get("User-Agent"),
        headers.get("X-Forwarded-For") if capture_ip else None,
        request.META.get("REMOTE_ADDR") if capture_ip else None,
    )
    return properties
