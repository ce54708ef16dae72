"""What the web integrations share: who the person is, the request's details, the report.

posthog-js sends its tracing headers, ``X-POSTHOG-DISTINCT-ID`` and ``X-POSTHOG-SESSION-ID``,
with requests to your backend when ``__add_tracing_headers`` is on. The middlewares
(``asgi``, ``wsgi``, ``django``; ``flask`` for what Flask handles itself) bind those IDs for
the request's duration, with an empty trail of exception steps, report the exception that
escapes the app (and re-raise it), and restore the context afterwards, so nothing leaks
into the next request.

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
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from posthog_errors import _extensions, _units
from posthog_errors._context import bind
from posthog_errors._mechanisms import MIDDLEWARE
from posthog_errors._reporter import Reporter, default_reporter
from posthog_errors._snapshot import EventSnapshot
from posthog_errors._stats import STATS
from posthog_errors.integrations._headers import clean_header_value

__all__ = [
    "ROUTE",
    "ASGIApp",
    "Identify",
    "RequestReporter",
    "Route",
    "Scope",
    "add_client_properties",
    "is_coroutine_function",
    "request_scope",
]

logger = logging.getLogger("posthog_errors")

DISTINCT_ID_HEADER = "x-posthog-distinct-id"
SESSION_ID_HEADER = "x-posthog-session-id"
USER_AGENT_HEADER = "user-agent"
FORWARDED_FOR_HEADER = "x-forwarded-for"
ROUTE = "$request_route"


Identify = Callable[[Any], Any]
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class Route:
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
    if isinstance(route, Route):
        template = route.template()
        if template is None:
            del properties[ROUTE]
        else:
            properties[ROUTE] = template


_extensions.add_capture_hook(_resolve_route)


class RequestReporter:
    """What the three middlewares share: who is the person, and how to report."""

    def __init__(
        self,
        client: Any,
        identify: Identify | None,
        source: str,
        capture_ip: bool = False,
        *,
        environment: str | None = None,
        service: str | None = None,
    ) -> None:
        if identify is not None and not callable(identify):
            raise TypeError(f"identify must be a callable taking the request, got {identify!r}")
        self._reporter = Reporter(client) if client is not None else None
        self._identify = identify
        self._source = source  # $exception_source; mechanism.type is "middleware"
        self.capture_ip = bool(capture_ip)
        # Given to the middleware: bound with the request's details, so that every event of
        # the request carries them (over install()'s; see ``PayloadOptions``).
        self._labels: dict[str, str] = {}
        for name, value in (("environment", environment), ("service", service)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {value!r}")
            if value and value.strip():
                self._labels[name] = value.strip()

    def details(self, properties: dict[str, Any]) -> dict[str, Any]:
        """A request's details, with the middleware's ``environment`` and ``service``."""
        if self._labels:
            properties.update(self._labels)
        return properties

    def ids(self, request: Any, headers: Callable[[str], str | None]) -> tuple[Any, Any]:
        # Cleaned as posthog-python's integrations clean them: "   " is no person (the
        # event is personless), "user-1\n" is user-1, a padded session ID matches its replay.
        distinct_id = clean_header_value(headers(DISTINCT_ID_HEADER))
        session_id = clean_header_value(headers(SESSION_ID_HEADER))
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
            mechanism=MIDDLEWARE,
            source=self._source,
            properties=properties,
        )


@contextlib.contextmanager
def request_scope(distinct_id: Any, session_id: Any, properties: dict[str, Any]) -> Iterator[None]:
    """One request: its IDs and details bound, and an empty trail of exception steps (a
    server thread that served another request before must not lend it its steps). A unit
    of work: a thread-pool run of its code (a ``def`` endpoint) adds to its trail."""
    tokens = _units.unit_scope()
    try:
        with bind(distinct_id, session_id=session_id, properties=properties):
            yield
    finally:
        _units.end_unit(tokens, None)


def is_coroutine_function(function: Any) -> bool:
    try:
        from asgiref.sync import iscoroutinefunction
    except ImportError:
        import inspect

        return inspect.iscoroutinefunction(function)
    return bool(iscoroutinefunction(function))


def add_client_properties(
    properties: dict[str, Any], user_agent: object, forwarded_for: object, peer: object
) -> None:
    """``$user_agent`` and ``$raw_user_agent`` (both the header, as posthog-python's
    integrations send them), and ``$ip`` when the caller passes addresses (the opt-in):
    the first of ``X-Forwarded-For`` (the client, as the proxies saw it), else the peer."""
    agent = clean_header_value(user_agent)
    if agent is not None:
        properties["$user_agent"] = agent
        properties["$raw_user_agent"] = agent
    forwarded = clean_header_value(forwarded_for)
    address = clean_header_value(forwarded.split(",", 1)[0]) if forwarded else None
    address = address or clean_header_value(peer)
    if address is not None:
        properties["$ip"] = address
