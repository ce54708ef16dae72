"""posthog-errors' integrations, one thin module each, together where a reader finds them.

Each imports its framework or library only when it is itself imported, and raises a clear
``ImportError`` naming the extra to install when that is missing. The core
(``posthog_errors``) knows none of them: they hook in through ``_extensions`` and the
``Reporter``. The documented import paths (``posthog_errors.sentry``,
``posthog_errors.structlog``, ``posthog_errors.middleware``, ``posthog_errors.celery``,
``posthog_errors.rq``, ``posthog_errors.loguru``) re-export these modules.

- web frameworks: ``asgi`` (Starlette, FastAPI), ``wsgi``, ``django``, ``flask``;
- error trackers: ``sentry``;
- logging libraries: ``structlog``, ``loguru``;
- job queues: ``celery``, ``rq``.
"""
