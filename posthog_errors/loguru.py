"""``posthog_errors.loguru``: the loguru sink, :class:`PostHogSink`.

The documented import path; the implementation is ``posthog_errors.integrations.loguru``.
Importing it without loguru installed raises ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

from posthog_errors.integrations.loguru import PostHogSink, install_integration

__all__ = ["PostHogSink", "install_integration"]
