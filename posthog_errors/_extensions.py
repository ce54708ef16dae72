"""Extension points: integrations hook into the core without the core knowing them.

An integration registers a capture hook, called on the caller's thread with the exception
and its snapshot, before the snapshot is queued. The one piece of knowledge the core keeps
is which integration module to load once a library is seen imported (``_AUTOLOAD``): the
Sentry bridge must work when sentry-sdk is initialised even if the user never imported
``posthog_errors.sentry``, and importing it up front would import sentry-sdk.

It must also be in place before Sentry's first event, which may be the app's first crash,
before any capture of ours. So :func:`load_integrations` (called by ``install()``) loads
each bridge whose library is already imported, and for the others puts a finder on
``sys.meta_path`` that loads the bridge right after the library's own module has run (the
"post-import hook" of ``wrapt``). The finder steps aside for every other import, and
leaves ``sys.meta_path`` once each library it waits for is loaded.
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
    "load_integrations",
    "run_capture_hooks",
    "stop_watching_imports",
]

CaptureHook = Callable[["BaseException | None", EventSnapshot], None]

_capture_hooks: list[CaptureHook] = []
# library module -> the integration module that bridges to it
_AUTOLOAD = {"sentry_sdk": "posthog_errors.integrations.sentry"}


def add_capture_hook(hook: CaptureHook) -> None:
    if hook not in _capture_hooks:
        _capture_hooks.append(hook)


def run_capture_hooks(exc: BaseException | None, snapshot: EventSnapshot) -> None:
    if _AUTOLOAD:
        _load_imported()
    for hook in _capture_hooks:
        hook(exc, snapshot)


def load_integrations() -> None:
    """Load the bridge of each library already imported; load the others' bridges as soon
    as their library is imported."""
    _load_imported()
    if _AUTOLOAD and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def stop_watching_imports() -> None:
    """Take the import finder off ``sys.meta_path`` (``uninstall()``)."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _load_imported() -> None:
    for library in [name for name in _AUTOLOAD if name in sys.modules]:
        module = _AUTOLOAD.pop(library, None)
        if module is not None:
            importlib.import_module(module)
    if not _AUTOLOAD:
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
                _load_imported()
        except Exception as error:
            _guard.internal_error(error, reraise=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _ImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a library in ``_AUTOLOAD``, it asks the other finders and
    wraps the loader they found in :class:`_LoadAfter`."""

    def __init__(self) -> None:
        self._searching = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _AUTOLOAD or getattr(self._searching, "active", False):
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
