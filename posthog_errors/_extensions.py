"""Extension points: integrations hook into the core without the core knowing them.

An integration registers a capture hook, called on the caller's thread with the exception
and its snapshot, before the snapshot is queued. The one piece of knowledge the core keeps
is which integration module to load once a library is seen imported (``_AUTOLOAD``): the
Sentry bridge must work when sentry-sdk is initialised even if the user never imported
``posthog_errors.sentry``, and importing it up front would import sentry-sdk.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from posthog_errors._snapshot import EventSnapshot

__all__ = ["CaptureHook", "add_capture_hook", "run_capture_hooks"]

CaptureHook = Callable[["BaseException | None", EventSnapshot], None]

_capture_hooks: list[CaptureHook] = []
# library module -> the integration module that bridges to it
_AUTOLOAD = {"sentry_sdk": "posthog_errors.sentry"}


def add_capture_hook(hook: CaptureHook) -> None:
    if hook not in _capture_hooks:
        _capture_hooks.append(hook)


def run_capture_hooks(exc: BaseException | None, snapshot: EventSnapshot) -> None:
    if _AUTOLOAD:
        for library in [name for name in _AUTOLOAD if name in sys.modules]:
            importlib.import_module(_AUTOLOAD.pop(library))
    for hook in _capture_hooks:
        hook(exc, snapshot)
