"""A minimal Django project for tests/test_middleware.py: settings, urls and views.

``configure()`` sets Django up once per process (no database, no installed apps).
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from django.urls import path

import posthog_errors
from posthog_errors.middleware import DjangoMiddleware

MIDDLEWARE = "posthog_errors.middleware.DjangoMiddleware"
AUTH_MIDDLEWARE = "tests.django_app.AuthMiddleware"


def configure() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="posthog-errors-tests",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="tests.django_app",
            MIDDLEWARE=[MIDDLEWARE],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,  # Django's "Internal Server Error" logging stays out of it
        )
    django.setup()


class AuthMiddleware(DjangoMiddleware):
    """What an app does to report the authenticated user instead of the browser's claim."""

    def identify(self, request: Any) -> Any:
        user = request.headers.get("X-Auth-User")
        if user is None:
            return None  # anonymous: the tracing headers decide
        session = request.headers.get("X-Auth-Session")
        return (user, session) if session else user


def boom(request: Any) -> Any:
    raise RuntimeError(f"django boom {request.method}")


async def async_boom(request: Any) -> Any:
    raise RuntimeError("django async boom")


def whoami(request: Any) -> Any:
    return JsonResponse(
        {
            "distinct_id": posthog_errors.get_distinct_id(),
            "session_id": posthog_errors.get_session_id(),
        }
    )


async def async_whoami(request: Any) -> Any:
    return whoami(request)


urlpatterns = [
    path("boom/", boom),
    path("async-boom/", async_boom),
    path("whoami/", whoami),
    path("async-whoami/", async_whoami),
]
