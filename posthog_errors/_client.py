"""Which posthog client an event goes to.

Resolution, in order: the ``client`` argument (a ``posthog.Posthog``, or a zero-argument
callable returning one per event, for multi-tenant apps), then ``api_key``/``host``, then
the client ``install()`` configured (so a handler or processor made without one follows
it), then the environment (``POSTHOG_API_KEY`` or ``POSTHOG_PROJECT_API_KEY``, and
``POSTHOG_HOST``).
With none of them, a single warning, and nothing is captured: never an exception.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from posthog_errors._stats import STATS

__all__ = ["ClientSource", "warm_up_posthog", "warm_up_posthog_soon"]

logger = logging.getLogger("posthog_errors")


class ClientSource:
    """Resolves the client for one event, on the caller's thread.

    A callable is called for every event, on the caller's thread, so it can read the
    request's tenant from the caller's context. A client built from a key is built once.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        api_key: str | None = None,
        host: str | None = None,
        fallback: Callable[[], Any] | None = None,
    ) -> None:
        if client is not None and not _is_client(client) and not callable(client):
            raise TypeError(
                "client must be a posthog.Posthog instance or a zero-argument callable "
                f"returning one, got {client!r}"
            )
        for name, value in (("api_key", api_key), ("host", host)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {value!r}")
        self._client = client
        self._fallback = fallback
        self._api_key = api_key
        self._host = host
        self._built: Any = None
        self._lock = threading.RLock()  # C-level, re-entrant: a signal handler may capture here
        self._warned = False
        self._warned_callable = False

    @property
    def configured(self) -> Any:
        """The ``client`` argument as given (a client, a callable, or None)."""
        return self._client

    def resolve(self) -> Any:
        """The client for this event, or None (after one warning) when there is none."""
        client = self._client
        if client is not None:
            if _is_client(client):
                return client
            try:
                produced = client()
            except Exception as error:
                return self._bad_callable(f"raised {error!r}")
            if produced is None or _is_client(produced):
                return produced
            return self._bad_callable(f"returned {produced!r}, not a posthog client")
        if self._api_key is None and self._fallback is not None:
            installed = self._fallback()
            if installed is not None:
                return installed
        if self._built is None:
            self._build()
        return self._built

    def _bad_callable(self, what: str) -> None:
        """The user's client callable failed for this event: counted, said once, and the
        event is not sent (there is no client to send it to)."""
        STATS.add("invalid_input")
        if not self._warned_callable:
            self._warned_callable = True
            logger.warning(
                "posthog-errors: the client callable %s; events it has no client for are "
                "not sent (counted in stats()['dropped'])",
                what,
            )

    def prepare(self) -> None:
        """Build the client from a key now, or warn now that there is none.

        For ``install()`` at start-up. A client callable is not called: it is called per
        event, on the caller's thread, and may need a request's context that start-up does
        not have.
        """
        if self._client is not None or self._built is not None:
            return
        if self._api_key is None and self._fallback is not None and self._fallback() is not None:
            return
        self._build()

    def _build(self) -> None:
        with self._lock:
            if self._built is not None or self._warned:
                return
            api_key = (
                self._api_key
                or os.environ.get("POSTHOG_API_KEY")
                or os.environ.get("POSTHOG_PROJECT_API_KEY")
            )
            if not api_key:
                self._warned = True
                warnings.warn(
                    "posthog-errors has no PostHog client: pass client= or api_key=, or set "
                    "POSTHOG_API_KEY (and POSTHOG_HOST). Exceptions are not captured.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return
            from posthog import Posthog

            self._built = Posthog(api_key, host=self._host or os.environ.get("POSTHOG_HOST"))


def _is_client(value: Any) -> bool:
    return callable(getattr(value, "capture", None)) and callable(getattr(value, "flush", None))


def warm_up_posthog_soon() -> None:
    """:func:`warm_up_posthog`, on a thread of ours, so that start-up does not wait for it.

    Most of it is waiting for the ``lsb_release`` and ``uname`` subprocesses (about 20 ms,
    and about 100 ms where ``lsb_release`` is a Python script), time in which the
    application's own start-up can run. The hazard of doing it off the calling thread is a
    fork in the middle of it (a pre-forking server right after start-up): a fork waits for
    it to end (:func:`_before_fork`), bounded. Under gevent or eventlet it runs here and
    now, as before (a green thread's subprocess would resume the app in the child).
    """
    if _green_threads():
        warm_up_posthog()
        return
    thread = threading.Thread(target=_warm_up_thread, name="posthog-errors-warm-up", daemon=True)
    _WARMING.append(thread)  # before it starts: a fork from now on waits for it
    try:
        thread.start()
    except RuntimeError:  # no new thread now (interpreter shutdown): here, then
        _WARMING.remove(thread)
        warm_up_posthog()


def _warm_up_thread() -> None:
    # Library code: whatever the client logs meanwhile is not captured. Marked by the
    # context, not by thread id (mark_library_thread), which a later app thread may reuse.
    from posthog_errors._guard import library_code

    try:
        with library_code():
            warm_up_posthog()
    finally:
        with contextlib.suppress(ValueError):
            _WARMING.remove(threading.current_thread())


# Warm-up threads still running; a fork waits for them.
_WARMING: list[threading.Thread] = []
_FORK_WAIT = 10.0  # seconds a fork waits for a warm-up at most


def _before_fork() -> None:
    """Let a running warm-up end before the process forks. A child forked in the middle of
    it would inherit, held by a thread it does not have, the import lock of a module being
    imported or the lock of a ``functools.cached_property`` being computed (``distro``'s),
    and wait for ever the first time it needs either. Bounded: a warm-up that hangs does
    not hang the fork."""
    current = threading.current_thread()
    for thread in list(_WARMING):
        if thread is not current:
            thread.join(_FORK_WAIT)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)


def _green_threads() -> bool:
    """Whether gevent or eventlet replaced threads with green ones."""
    gevent = sys.modules.get("gevent.monkey")
    eventlet = sys.modules.get("eventlet.patcher")
    try:
        if gevent is not None and gevent.is_module_patched("threading"):
            return True
        return bool(eventlet is not None and eventlet.is_monkey_patched("thread"))
    except Exception:
        return True  # cannot tell: the synchronous way, as before


def warm_up_posthog() -> None:
    """Do the posthog client's lazy first-capture work now, on the calling thread.

    The client's first ``capture()`` describes the OS (``distro`` runs ``lsb_release`` and
    ``uname`` in subprocesses, once, and caches the answer). Done on our worker, a fork at
    that moment leaves the child waiting for ever on a lock the worker held, and under
    gevent the subprocess's fork resumes the app's main greenlet in the child, which then
    runs app code twice. ``install()`` calls this at start-up instead, through
    :func:`warm_up_posthog_soon`.

    Also imported now: what ``requests`` imports inside its first request (``netrc``, for
    ``get_netrc_auth``). A first import holds that module's import lock; a fork at that
    moment left the child's consumer waiting for ever on a lock no thread of the child
    holds, and its event unsent (seen with faulthandler in the fork test).
    """
    try:
        from posthog.utils import system_context

        system_context()
    except Exception:  # an older or newer client without it: nothing to warm up
        pass
    for module in ("netrc", "encodings.idna"):
        with contextlib.suppress(Exception):
            importlib.import_module(module)
