"""``install()``: one line at startup that wires every door to one reporter.

Explicit, chained and reversible: importing the package changes nothing; ``install()``
hooks what it is asked to, each hook calls the one before it, and ``uninstall()`` puts back
only what is still ours.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from posthog_errors import _hooks, _rate_limit, _reporter
from posthog_errors._delivery import worker
from posthog_errors._reporter import BeforeSend, Reporter
from posthog_errors.handler import PostHogHandler

__all__ = ["Installation", "active_installation", "install"]

_lock = threading.Lock()
_active: Installation | None = None


class Installation:
    """What ``install()`` did; ``uninstall()`` (or leaving the ``with`` block) undoes it."""

    def __init__(self, reporter: Reporter, handler: PostHogHandler | None) -> None:
        self.reporter = reporter
        self.handler = handler
        self._restores: list[Callable[[], None]] = []
        self._previous_default: Reporter | None = None

    def uninstall(self) -> None:
        """Put back each hook only if ours is still the installed one, remove the root
        handler, and restore the default reporter. Queued events are still delivered."""
        global _active
        with _lock:
            for restore in reversed(self._restores):
                restore()
            self._restores.clear()
            if self.handler is not None:
                logging.getLogger().removeHandler(self.handler)
            if _reporter.default_reporter_if_set() is self.reporter:
                _reporter.set_default_reporter(self._previous_default)
            if _active is self:
                _active = None

    def __enter__(self) -> Installation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()


def active_installation() -> Installation | None:
    return _active


def install(
    client: Any = None,
    *,
    api_key: str | None = None,
    host: str | None = None,
    levels: str | int | Iterable[str | int] = ("error", "fatal"),
    logs: bool = True,
    excepthooks: bool = True,
    asyncio: bool = True,
    unraisable: bool = True,
    capture_messages: bool = True,
    capture_exits: bool = False,
    before_send: BeforeSend | None = None,
    ignore: Iterable[type[BaseException]] = (),
    in_app_include: Iterable[str] = (),
    in_app_exclude: Iterable[str] = (),
    project_root: str | None = None,
    redact_secrets: bool = True,
    capture_code_variables: bool = False,
    rate_limit: tuple[int, float] | None = (
        _rate_limit.DEFAULT_BURST,
        _rate_limit.DEFAULT_PER_SECOND,
    ),
    max_queue_size: int = 1000,
    shutdown_timeout: float = 2.0,
) -> Installation:
    """Report every failure of this process to PostHog.

    ``excepthooks`` sets ``sys.excepthook`` and ``threading.excepthook``, ``unraisable``
    sets ``sys.unraisablehook``, ``asyncio`` covers every event loop's exception handler,
    and ``logs`` attaches a :class:`PostHogHandler` with ``levels`` to the root logger.
    ``KeyboardInterrupt`` and ``SystemExit`` are reported only with ``capture_exits``.
    ``rate_limit`` is ``(burst, refills per second)`` per failure site, or None for off.

    Calling it again while installed returns the existing installation. Bad options raise
    ``ValueError``/``TypeError`` here; a missing client only warns (nothing is captured).
    """
    global _active
    with _lock:
        if _active is not None:
            return _active
        if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, int):
            raise TypeError(f"max_queue_size must be an int >= 1, got {max_queue_size!r}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be an int >= 1, got {max_queue_size!r}")
        if not isinstance(shutdown_timeout, (int, float)) or shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be seconds >= 0, got {shutdown_timeout!r}")
        reporter = Reporter(
            client,
            api_key=api_key,
            host=host,
            before_send=before_send,
            ignore=ignore,
            in_app_include=in_app_include,
            in_app_exclude=in_app_exclude,
            project_root=project_root,
            redact_secrets=redact_secrets,
            capture_code_variables=capture_code_variables,
        )
        handler = (
            PostHogHandler(levels=levels, capture_messages=capture_messages, reporter=reporter)
            if logs
            else None
        )
        _rate_limit.configure(rate_limit)
        delivery = worker()
        delivery.max_queue = max_queue_size
        delivery.shutdown_timeout = float(shutdown_timeout)
        if not delivery.redirected:  # (posthog_errors.testing needs no client)
            reporter.client_source.resolve()  # build the client (or warn) now, not later

        installation = Installation(reporter, handler)
        installation._previous_default = _reporter.set_default_reporter(reporter)
        restores = installation._restores
        if excepthooks:
            restores.append(_hooks.install_sys_excepthook(reporter, capture_exits=capture_exits))
            restores.append(
                _hooks.install_threading_excepthook(reporter, capture_exits=capture_exits)
            )
        if unraisable:
            restores.append(_hooks.install_unraisablehook(reporter))
        if asyncio:
            restores.append(_hooks.install_asyncio_hook(reporter))
        if handler is not None:
            logging.getLogger().addHandler(handler)
        _active = installation
        return installation
