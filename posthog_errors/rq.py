"""RQ, at its documented import path (``posthog_errors.rq``).

The integration lives in :mod:`posthog_errors.integrations.rq`; importing this module
without rq raises an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

from posthog_errors.integrations.rq import (
    META_KEY,
    ExceptionHandler,
    exception_handler,
    install_integration,
    instrument,
    make_exception_handler,
)

__all__ = [
    "META_KEY",
    "ExceptionHandler",
    "exception_handler",
    "install_integration",
    "instrument",
    "make_exception_handler",
]
