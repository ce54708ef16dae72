"""Sentry, both ways, at its documented import path (``posthog_errors.sentry``).

The integration lives in :mod:`posthog_errors.integrations.sentry`; importing this module
without sentry-sdk raises an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

from posthog_errors.integrations.sentry import (
    PERSON_URL_TAG,
    POSTHOG_CONTEXT,
    POSTHOG_ID_TAG,
    PostHogIntegration,
    app_host,
    sentry_integration,
)

__all__ = [
    "PERSON_URL_TAG",
    "POSTHOG_CONTEXT",
    "POSTHOG_ID_TAG",
    "PostHogIntegration",
    "app_host",
    "sentry_integration",
]
