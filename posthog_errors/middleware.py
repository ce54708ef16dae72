"""The web middlewares, at their documented import path (``posthog_errors.middleware``).

They live in ``posthog_errors.integrations``, one module per framework: ``asgi``
(Starlette, FastAPI), ``wsgi``, ``django`` and ``flask``.
"""

from __future__ import annotations

from posthog_errors.integrations.asgi import ASGIMiddleware
from posthog_errors.integrations.django import DjangoMiddleware
from posthog_errors.integrations.flask import report_flask_exceptions
from posthog_errors.integrations.wsgi import WSGIMiddleware

__all__ = ["ASGIMiddleware", "DjangoMiddleware", "WSGIMiddleware", "report_flask_exceptions"]
