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
import threading
import warnings
from collections.abc import Callable
from typing import Any

from posthog_errors._stats import STATS

__all__ = ["ClientSource", "warm_up_posthog"]

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


def warm_up_posthog() -> None:
    """Do the posthog client's lazy first-capture work now, on the calling thread.

    The client's first ``capture()`` describes the OS (``distro`` runs ``lsb_release`` and
    ``uname`` in subprocesses, once, and caches the answer). Done on our worker, a fork at
    that moment leaves the child waiting for ever on a lock the worker held, and under
    gevent the subprocess's fork resumes the app's main greenlet in the child, which then
    runs app code twice. ``install()`` calls this at start-up instead.

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
