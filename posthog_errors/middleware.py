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

They live in ``posthog_errors.integrations``, one module per framework (``asgi`` for
Starlette and FastAPI, ``wsgi``, ``django``, ``flask``), and are imported from here.
"""

from __future__ import annotations

from posthog_errors.integrations.asgi import ASGIMiddleware
from posthog_errors.integrations.django import DjangoMiddleware
from posthog_errors.integrations.flask import report_flask_exceptions
from posthog_errors.integrations.wsgi import WSGIMiddleware

__all__ = ["ASGIMiddleware", "DjangoMiddleware", "WSGIMiddleware", "report_flask_exceptions"]
