"""The structlog processor, at its documented import path (``posthog_errors.structlog``).

It lives in :mod:`posthog_errors.integrations.structlog`; importing this module without
structlog raises an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

from posthog_errors.integrations.structlog import PostHogProcessor

__all__ = ["PostHogProcessor"]
