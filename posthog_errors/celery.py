"""Celery task failures, reported once, to the person who enqueued the task.

``posthog_errors.install()`` turns this on by itself when celery is importable; apps that
do not call it use :func:`instrument`. The implementation, and why it works as it does, is
in ``posthog_errors.integrations.celery``; this module is the documented import path.
"""

from __future__ import annotations

from posthog_errors.integrations.celery import Instrumentation, install_integration, instrument

__all__ = ["Instrumentation", "install_integration", "instrument"]
