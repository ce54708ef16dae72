"""``install()``: one line at startup that wires every door to one reporter.

Explicit, chained and reversible: importing the package changes nothing; ``install()``
hooks what it is asked to, each hook calls the one before it, and ``uninstall()`` puts back
only what is still ours. It adds no handler to any logger: the app's logging, configured
before or after, stays exactly as it was (see ``_hooks.install_logging_hook``).
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from posthog_errors import (
    _extensions,
    _guard,
    _hooks,
    _queue_logging,
    _rate_limit,
    _reporter,
    _shutdown,
    _units,
)
from posthog_errors._client import warm_up_posthog
from posthog_errors._conform import bad_input
from posthog_errors._delivery import worker
from posthog_errors._reporter import BeforeSend, Reporter
from posthog_errors.handler import PostHogHandler

__all__ = ["Installation", "active_installation", "install"]

_lock = threading.Lock()
_active: Installation | None = None


class Installation:
    """What ``install()`` did; ``uninstall()`` (or leaving the ``with`` block) undoes it.

    ``handler`` is the :class:`PostHogHandler` the logging hook hands records to (None with
    ``logs=False``). It is attached to no logger.
    """

    def __init__(
        self, reporter: Reporter, handler: PostHogHandler | None, options: dict[str, Any]
    ) -> None:
        self.reporter = reporter
        self.handler = handler
        self._options = options
        self._restores: list[Callable[[], None]] = []
        self._previous_default: Reporter | None = None

    def uninstall(self) -> None:
        """Undo every hook: put back the previous one if ours is still the installed one,
        else switch ours off where it is (another library chained onto it since, and
        unhooking it would cut theirs out too). Restores the default reporter. Queued
        events are still delivered."""
        global _active
        with _lock:
            for restore in reversed(self._restores):
                restore()
            self._restores.clear()
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
    redact_keys: Iterable[str] = (),
    redact_patterns: Iterable[str | re.Pattern[str]] = (),
    capture_code_variables: bool = False,
    steps: bool = True,
    steps_levels: str | int | Iterable[str | int] = ("info", "warning"),
    release: str | None = None,
    environment: str | None = None,
    service: str | None = None,
    celery: bool = True,
    rq: bool = True,
    loguru: bool = True,
    rate_limit: tuple[int, float] | None = (
        _rate_limit.DEFAULT_BURST,
        _rate_limit.DEFAULT_PER_SECOND,
    ),
    max_queue_size: int = 1000,
    shutdown_timeout: float = 2.0,
    flush_on_signals: bool = True,
) -> Installation:
    """Report every failure of this process to PostHog.

    ``excepthooks`` sets ``sys.excepthook`` and ``threading.excepthook``, ``unraisable``
    sets ``sys.unraisablehook``, ``asyncio`` covers every event loop's exception handler,
    and ``logs`` reports the log records at the ``levels`` allow list from every logger,
    without adding a handler anywhere (it chains ``logging.Logger.callHandlers``).
    ``KeyboardInterrupt`` and ``SystemExit`` are reported only with ``capture_exits``,
    which also reports a failing ``sys.exit()`` of the main thread.
    ``rate_limit`` is ``(burst, refills per second)`` per failure site, or None for off.
    ``redact_secrets`` filters credentials from everything sent; ``redact_keys`` adds key
    names (``["ssn", "iban"]``) and ``redact_patterns`` regexes to the built-in rules.
    ``steps`` keeps the records below the allow list at ``steps_levels`` (INFO and WARNING)
    as the context's exception steps, sent with its next ``$exception`` (``add_step()``
    adds your own). ``release`` is sent as ``$release_id`` (default: the
    ``POSTHOG_RELEASE_ID`` environment variable). ``environment`` and ``service`` are sent
    as the ``environment`` and ``service`` properties of every event, the names PostHog's
    own apps use (defaults: ``POSTHOG_ENVIRONMENT``; ``POSTHOG_SERVICE``, else
    ``OTEL_SERVICE_NAME``); the doors that follow ``install()`` send them too. ``celery``,
    ``rq`` and ``loguru`` turn on those integrations when the app imports the library
    (now, or later): a task's or job's final failure with the person who enqueued it, and
    loguru's records (a sink with the same ``levels`` and steps, only with ``logs``); false
    leaves one off.
    ``flush_on_signals`` flushes, within ``shutdown_timeout``, before ``SIGTERM``,
    ``SIGHUP`` or ``SIGINT`` ends the process at its default disposition (uvicorn's re-raise
    too); the process still ends by that signal, with the same exit status.

    Calling it again while installed returns the existing installation, and warns naming
    the options that differ (they are ignored). Bad options raise ``ValueError``/
    ``TypeError`` here; a missing client only warns (nothing is captured).
    """
    global _active
    options = dict(locals())
    with _lock:
        if _active is not None:
            _warn_ignored(_active._options, options)
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
            redact_keys=redact_keys,
            redact_patterns=redact_patterns,
            capture_code_variables=capture_code_variables,
            release=release,
            environment=environment,
            service=service,
        )
        handler = (
            PostHogHandler(
                levels=levels,
                capture_messages=capture_messages,
                steps=steps,
                steps_levels=steps_levels,
                reporter=reporter,
            )
            if logs
            else None
        )
        _rate_limit.configure(rate_limit)
        delivery = worker()
        delivery.max_queue = max_queue_size
        delivery.shutdown_timeout = float(shutdown_timeout)
        if not delivery.redirected:  # (posthog_errors.testing needs no client)
            reporter.client_source.prepare()  # build the client (or warn) now, not later
            warm_up_posthog()

        installation = Installation(reporter, handler, options)
        installation._previous_default = _reporter.set_default_reporter(reporter)
        restores = installation._restores
        if excepthooks:
            restores.append(_hooks.install_sys_excepthook(reporter, capture_exits=capture_exits))
            restores.append(
                _hooks.install_threading_excepthook(reporter, capture_exits=capture_exits)
            )
            restores.append(_hooks.install_process_hook(reporter, capture_exits=capture_exits))
            if capture_exits:
                restores.append(_hooks.install_exit_hook(reporter))
        # QueueHandler.prepare: a queued record carries its exception, person and steps.
        restores.append(_queue_logging.wrap_queue_handlers())
        # Each job submitted to a ThreadPoolExecutor: a unit of work, its submitter's person.
        restores.append(_units.install_executor_hook())
        if flush_on_signals:
            restores.append(_shutdown.install_signal_hooks(float(shutdown_timeout)))
        if unraisable:
            restores.append(_hooks.install_unraisablehook(reporter))
        if asyncio:
            restores.append(_hooks.install_asyncio_hook(reporter))
        if handler is not None:
            _warn_if_never_made(handler)
            restores.append(_hooks.install_logging_hook(handler))
        # The Sentry bridge, now or as sentry_sdk is imported: before Sentry's first event.
        try:
            _extensions.load_integrations()
        except ImportError as error:
            _unusable("sentry_sdk", error)
        # loguru's sink takes the logging options: records are its doors too.
        logging_options = {
            "levels": levels,
            "capture_messages": capture_messages,
            "steps": steps,
            "steps_levels": steps_levels,
        }
        for name, wanted, settings in (
            ("celery", celery, {}),
            ("rq", rq, {}),
            ("loguru", loguru and logs, logging_options),
        ):
            if wanted:
                starter = _IntegrationStarter(name, reporter, settings)
                _extensions.when_imported(name, starter)
                restores.append(starter.undo)
        _active = installation
        return installation


class _IntegrationStarter:
    """Turns on one integration (``posthog_errors.integrations.<name>``) once its library
    is imported, with the installation's reporter; ``undo`` turns it off again."""

    def __init__(self, name: str, reporter: Reporter, settings: dict[str, Any]) -> None:
        self.name = name
        self.reporter = reporter
        self.settings = settings
        self._undo: Callable[[], None] | None = None

    def __call__(self) -> None:
        try:
            module = importlib.import_module(f"posthog_errors.integrations.{self.name}")
            self._undo = module.install_integration(self.reporter, **self.settings)
        except ImportError as error:  # not the library we know (a test's stub module)
            _unusable(self.name, error)
        except Exception as error:  # the app goes on without this integration
            _guard.internal_error(error)

    def undo(self) -> None:
        _extensions.forget(self.name, self)
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


def _unusable(library: str, error: ImportError) -> None:
    """``sys.modules[library]`` is something the integration cannot use (a test's stub,
    a half-imported module): not our bug and not the app's failure. The integration stays
    off; said once, counted as ``invalid_input``; ``install()`` goes on."""
    bad_input(
        f"unusable {library}",
        "sys.modules[%r] is not a %s posthog-errors can use (%s): its integration stays off",
        library,
        library,
        error,
    )


_warned_never_made = False


def _warn_if_never_made(handler: PostHogHandler) -> None:
    """Once: an allowed level below the root logger's level gives records that are never
    made (a logger checks its level before anything else), unless a logger sets a lower
    level of its own. Read at install time; a later ``setLevel`` is not seen."""
    global _warned_never_made
    levels = handler.levels
    root_level = logging.getLogger().getEffectiveLevel()
    if _warned_never_made or levels.everything or levels.lowest >= root_level:
        return
    _warned_never_made = True
    warnings.warn(
        f"posthog_errors.install(levels=...) allows {logging.getLevelName(levels.lowest)} "
        f"records, but the root logger is at {logging.getLevelName(root_level)}: loggers "
        "make no record below their level, so those are never reported. Lower the level of "
        "the loggers you want reported (logging.getLogger().setLevel(...)).",
        RuntimeWarning,
        stacklevel=3,
    )


def _warn_ignored(installed: dict[str, Any], requested: dict[str, Any]) -> None:
    """A second ``install()`` changes nothing: say which of its options were ignored."""
    ignored = [
        f"{name}={value!r}"
        for name, value in requested.items()
        if not _same_option(installed.get(name), value)
    ]
    if ignored:
        warnings.warn(
            "posthog_errors.install() is already installed; these options differ from the "
            f"installation in place and were ignored: {', '.join(ignored)}. Call "
            "posthog_errors.uninstall() first to change them.",
            RuntimeWarning,
            stacklevel=3,
        )


def _same_option(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = tuple(a), tuple(b)
    try:
        return bool(a == b)
    except Exception:
        return False
