"""posthog-errors: every Python failure in PostHog as a proper ``$exception`` event.

Importing this package has no side effects: it installs no hook, starts no thread and
imports neither sentry-sdk nor structlog. See ``install()``, ``PostHogHandler``,
``posthog_errors.structlog`` and ``posthog_errors.sentry``.
"""

from __future__ import annotations

from posthog_errors._capture import capture_exception, flush, stats
from posthog_errors._context import (
    bind,
    carry_context,
    get_distinct_id,
    get_session_id,
    reset,
    set_distinct_id,
    set_session_id,
)
from posthog_errors._install import Installation, install
from posthog_errors._payload import exception_properties
from posthog_errors._shutdown import serverless
from posthog_errors._steps import add_step
from posthog_errors._units import job
from posthog_errors.handler import PostHogHandler

__version__ = "0.1.0"

POSTHOG_ID_TAG = "posthog_distinct_id"
"""The Sentry tag that carries the PostHog distinct ID (as in posthog-node)."""

__all__ = [
    "POSTHOG_ID_TAG",
    "Installation",
    "PostHogHandler",
    "__version__",
    "add_step",
    "bind",
    "capture_exception",
    "carry_context",
    "exception_properties",
    "flush",
    "get_distinct_id",
    "get_session_id",
    "install",
    "job",
    "reset",
    "serverless",
    "set_distinct_id",
    "set_session_id",
    "stats",
    "uninstall",
]


def uninstall() -> None:
    """Undo ``install()`` (a no-op when nothing is installed)."""
    from posthog_errors._install import active_installation

    installation = active_installation()
    if installation is not None:
        installation.uninstall()
