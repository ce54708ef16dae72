"""Extension points: integrations hook into the core without the core knowing them.

An integration registers a capture hook, called on the caller's thread with the exception
and its snapshot, before the snapshot is queued.

The other extension point is :func:`when_imported`: run something once a library is
imported, now if it already is. The Sentry bridge must work when sentry-sdk is initialised
even if the user never imported ``posthog_errors.sentry`` (importing it up front would
import sentry-sdk), and be in place before Sentry's first event, which may be the app's
first crash; ``install()`` turns on the Celery, RQ and loguru integrations the same way,
so an app that never imports them pays nothing. A library not imported yet gets a finder
on ``sys.meta_path`` that runs the callbacks right after the library's own module has run
(the "post-import hook" of ``wrapt``). The finder steps aside for every other import, and
leaves ``sys.meta_path`` once nothing is waiting.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

from posthog_errors import _guard
from posthog_errors._snapshot import EventSnapshot

__all__ = [
    "CaptureHook",
    "add_capture_hook",
    "forget",
    "load_integrations",
    "run_capture_hooks",
    "stop_watching_imports",
    "when_imported",
]

CaptureHook = Callable[["BaseException | None", EventSnapshot], None]

_capture_hooks: list[CaptureHook] = []
# library module -> the integration module that bridges to it
# library module -> what to run once it is imported (the Sentry bridge, install()'s
# integrations). Callbacks run once each, then leave.
_WAITING: dict[str, list[Callable[[], None]]] = {}


def add_capture_hook(hook: CaptureHook) -> None:
    if hook not in _capture_hooks:
        _capture_hooks.append(hook)


def run_capture_hooks(exc: BaseException | None, snapshot: EventSnapshot) -> None:
    if _WAITING:
        _run_imported()
    for hook in _capture_hooks:
        hook(exc, snapshot)


def when_imported(library: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` now if ``library`` is imported, else right after it is."""
    waiting = _WAITING.setdefault(library, [])
    if callback not in waiting:  # install() after uninstall() asks for the bridge again
        waiting.append(callback)
    _run_imported()
    if _WAITING and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def forget(library: str, callback: Callable[[], None]) -> None:
    """Do not run ``callback`` after all (``uninstall()`` before the library came)."""
    waiting = _WAITING.get(library)
    if waiting and callback in waiting:
        waiting.remove(callback)
        if not waiting:
            _WAITING.pop(library, None)
    if not _WAITING:
        stop_watching_imports()


def load_integrations() -> None:
    """The Sentry bridge: loaded now if sentry-sdk is imported, else as soon as it is."""
    when_imported("sentry_sdk", _load_sentry_bridge)


def _load_sentry_bridge() -> None:
    importlib.import_module("posthog_errors.integrations.sentry")


def stop_watching_imports() -> None:
    """Take the import finder off ``sys.meta_path``."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _run_imported() -> None:
    for library in [name for name in _WAITING if name in sys.modules]:
        for callback in _WAITING.pop(library, ()):
            callback()
    if not _WAITING:
        stop_watching_imports()


class _LoadAfter(importlib.abc.Loader):
    """The library's own loader, then its bridge. Everything else goes to that loader."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        loader = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = loader  # as if we had never been there
        module.__loader__ = loader
        loader.exec_module(module)
        try:
            with _guard.library_code():
                _run_imported()
        except Exception as error:
            _guard.internal_error(error, reraise=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _ImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a library in ``_WAITING``, it asks the other finders and
    wraps the loader they found in :class:`_LoadAfter`."""

    def __init__(self) -> None:
        self._searching = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _WAITING or getattr(self._searching, "active", False):
            return None
        self._searching.active = True
        try:
            spec = importlib.util.find_spec(fullname)
        except Exception:
            return None
        finally:
            self._searching.active = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _LoadAfter(spec.loader)
        return spec


_FINDER = _ImportFinder()
