"""The names an event gives its capture: ``mechanism.type`` and ``$exception_source``.

PostHog's SDK event spec (PostHog/sdk-specs ``exception-event-metadata``) splits what used
to be one name in two, so that a team's filters, alerts and grouping rules match every
SDK's events alike:

* ``mechanism.type`` of the outermost entry is a *category* of capture boundary
  (:data:`CATEGORIES`): every logging library is ``logger``, every job queue ``task``,
  every web framework ``middleware``;
* ``$exception_source`` names the concrete integration or hook, lowercase
  ``<technology>.<hook>`` (:data:`SOURCES`), with the spec's canonical names where it has
  them (``python.sys_excepthook``, ``django.middleware``, ``celery.task_failure``, ...).
  A manual capture omits it.

Every door names itself here, so that one table (see ``docs/index.md``) says what each
door sends, and the conformance check of the test suite reads the same names.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CATEGORIES",
    "GENERIC",
    "LOGGER",
    "MIDDLEWARE",
    "PROCESSOR_OWNED",
    "RELATIONS",
    "SOURCES",
    "TASK",
    "UNCAUGHT",
    "is_source_name",
    "sentry_category",
    "sentry_relation",
]

# The spec's categories for the outermost entry (it says the list is extensible).
GENERIC: Final = "generic"
LOGGER: Final = "logger"
TASK: Final = "task"
MIDDLEWARE: Final = "middleware"
UNCAUGHT: Final = "onuncaughtexception"
CATEGORIES: Final = frozenset(
    {
        GENERIC,
        LOGGER,
        "onconsole",
        UNCAUGHT,
        "onunhandledrejection",
        MIDDLEWARE,
        TASK,
        "panic",
        "signal",
        "crash_reporter",
    }
)

# What each door sends as $exception_source (manual capture: none).
SOURCES: Final = {
    "logging": "python.logging",
    "structlog": "structlog.processor",
    "loguru": "loguru.sink",
    "sys.excepthook": "python.sys_excepthook",
    "threading.excepthook": "python.threading_excepthook",
    "sys.unraisablehook": "python.sys_unraisablehook",
    "asyncio": "python.asyncio_exception_handler",
    "multiprocessing": "python.multiprocessing_process",
    "sys.exit": "python.sys_exit",
    "celery": "celery.task_failure",
    "rq": "rq.exception_handler",
    "asgi": "asgi.middleware",
    "wsgi": "wsgi.middleware",
    "django": "django.middleware",
    "flask": "flask.got_request_exception",
    "sentry": "sentry.event_processor",
}

# A nested entry's relationship to its parent (the spec's canonical ones); an unknown one
# is omitted, never guessed.
RELATIONS: Final = frozenset({"cause", "context", "unwrap", "member", "suppressed", "inner"})

# Properties PostHog's ingestion derives itself: an SDK never sends them, whatever the user
# passed (the spec's ownership table).
PROCESSOR_OWNED: Final = frozenset({"$exception_fingerprint_version", "$exception_release"})

_SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def is_source_name(value: object) -> bool:
    """Whether ``value`` has the spec's form for ``$exception_source``: stable lowercase
    ``<technology>.<hook>`` identifiers."""
    return isinstance(value, str) and len(value) <= 100 and bool(_SOURCE_NAME.fullmatch(value))


# Sentry's Python mechanism types (what its integrations set), by the spec's category.
_SENTRY_CATEGORIES: Final = {
    "excepthook": UNCAUGHT,
    "threading": UNCAUGHT,
    "asyncio": UNCAUGHT,
    "unraisablehook": UNCAUGHT,
    "sys.excepthook": UNCAUGHT,
    "logging": LOGGER,
    "loguru": LOGGER,
    "celery": TASK,
    "rq": TASK,
    "arq": TASK,
    "huey": TASK,
    "dramatiq": TASK,
    "ray": TASK,
    "spark": TASK,
    "beam": TASK,
}
_SENTRY_WEB: Final = frozenset(
    {
        "django",
        "flask",
        "asgi",
        "wsgi",
        "starlette",
        "fastapi",
        "aiohttp",
        "bottle",
        "falcon",
        "pyramid",
        "sanic",
        "tornado",
        "quart",
        "litestar",
        "starlite",
        "chalice",
        "aws_lambda",
        "gcp",
        "grpc",
        "graphene",
        "strawberry",
        "ariadne",
    }
)


def sentry_category(mechanism_type: object) -> str:
    """The spec's category for the mechanism a Sentry integration set (``generic`` when
    Sentry's event says nothing more specific)."""
    if not isinstance(mechanism_type, str):
        return GENERIC
    if mechanism_type in _SENTRY_WEB:
        return MIDDLEWARE
    return _SENTRY_CATEGORIES.get(mechanism_type, GENERIC)


def sentry_relation(source: object) -> str | None:
    """The relationship a Sentry chained exception's ``mechanism.source`` names, or None
    when it names none the spec knows (the entry then omits ``source``)."""
    if source == "__cause__":
        return "cause"
    if source == "__context__":
        return "context"
    if isinstance(source, str) and source.startswith("exceptions["):
        return "member"
    return None
