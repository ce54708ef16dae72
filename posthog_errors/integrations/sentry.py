"""Sentry, both ways.

``PostHogIntegration`` (or its function form, :func:`sentry_integration`) is the Python
counterpart of posthog-node's Sentry integration: Sentry error events get the PostHog person
(``posthog_distinct_id`` and ``PostHog Person URL`` tags), and events at an allowed level
are sent to PostHog as ``$exception`` with ``$sentry_event_id``, ``$sentry_url`` and the
Sentry exception data.

Without the integration, when sentry-sdk is initialised, the bridge below still links both
sides for exceptions this library captures, whichever of the two saw the exception first:
Sentry's event gets the person tags, the PostHog event gets ``$sentry_event_id``. Tags go on
the event itself, never on a shared scope, so nothing leaks into later, unrelated events.
``install()`` loads the bridge when sentry-sdk is imported (before or after it), so the
very first failure is linked.

A PostHog event names a Sentry event only if Sentry sent it. Sentry runs event processors
(its dedupe among them), then ``before_send``, then sampling; the event processor here
only tags the person. What Sentry did is read where it is final: the bridge wraps the
client's ``before_send`` and ``error_sampler`` options (calling the user's own), so an
event that a later processor, the user's ``before_send`` or sampling dropped is never
named, whatever the order in which the two SDKs were imported and initialised.

The seed's filter works too: a user's ``before_send`` that deletes the PostHog tag from an
event keeps that failure out of PostHog, and takes the Person URL tag off the event.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

try:
    import sentry_sdk
    from sentry_sdk.integrations import Integration
    from sentry_sdk.scope import add_global_event_processor
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "posthog_errors.sentry needs sentry-sdk: pip install 'posthog-errors[sentry]'"
    ) from error

from posthog_errors import _context, _extensions, _guard
from posthog_errors._delivery import worker
from posthog_errors._levels import severity_names
from posthog_errors._mechanisms import sentry_category
from posthog_errors._payload import LEVELS, MESSAGE_TYPE
from posthog_errors._reporter import DoorReporter, Reporter, default_reporter_if_set
from posthog_errors._snapshot import EventSnapshot
from posthog_errors.integrations._sentry_events import (
    exception_data,
    exception_list,
    message_of,
    sentry_level,
)

__all__ = [
    "PERSON_URL_TAG",
    "POSTHOG_CONTEXT",
    "POSTHOG_ID_TAG",
    "PostHogIntegration",
    "app_host",
    "sentry_integration",
]

POSTHOG_ID_TAG = _context.SENTRY_ID_TAG
POSTHOG_CONTEXT = _context.SENTRY_CONTEXT
PERSON_URL_TAG = "PostHog Person URL"
DEFAULT_PREFIX = "https://sentry.io/organizations/"
# $exception_source of the events this bridge sends (PostHog's SDK event spec form).
SENTRY_SOURCE = "sentry.event_processor"
# How long a PostHog event waits at most for Sentry to see the same exception (a log record
# reaches this library before sentry-sdk's logging integration, for example), when Sentry
# will. The wait ends as soon as Sentry decided (SentryLink.settled), in milliseconds
# usually: the bound is for a loaded machine, where building Sentry's event on the app's
# thread took over 0.3 s (the former bound) under CI's load, and the link was lost.
LINK_GRACE_SECONDS = 1.0
_DECISION_POLL = 0.005

# The options of a Reporter, accepted by the integration as its own PostHog options.
_POSTHOG_OPTIONS = frozenset(
    {
        "before_send",
        "ignore",
        "in_app_include",
        "in_app_exclude",
        "project_root",
        "max_frames",
        "redact_secrets",
        "redact_keys",
        "redact_patterns",
        "capture_code_variables",
        "release",
        "environment",
        "service",
    }
)
# Python level numbers of PostHog's levels, to compare with Sentry's logging event level.
_LEVEL_NUMBERS = {"fatal": 50, "error": 40, "warning": 30, "log": 20, "info": 20, "debug": 10}
# Where sentry-sdk's LoggingIntegration keeps the handler that makes events: 2.x, 3.x.
_EVENT_HANDLER_ATTRIBUTES = ("_handler", "_event_handler")

_LINK_ATTR = "__posthog_errors_sentry_link"
_HINT_KEY = "posthog_errors_pending"
_WRAPPED_ATTR = "_posthog_errors_options_wrapped"


class SentryLink:
    """What Sentry did with the events it made for one exception.

    Written by Sentry's capture (on the app's thread, from the ``before_send`` and
    ``error_sampler`` wrappers), read by the delivery worker, which polls: no lock.
    """

    __slots__ = ("_decisions", "_open", "distinct_id", "event_id", "excluded", "url")

    def __init__(self) -> None:
        self.event_id: str | None = None  # the first Sentry event that was sent
        self.url: str | None = None
        self.distinct_id: str | None = None
        self.excluded = False  # the user's before_send took the PostHog tag off
        self._open: list[object] = []  # events past every processor, not decided yet
        self._decisions = 0  # events Sentry decided on (sent or not)

    def opened(self, token: object) -> None:
        self._open.append(token)

    def decided(self, token: object, *, sent: bool, event_id: Any, url: str | None) -> None:
        if sent and self.event_id is None and isinstance(event_id, str):
            self.url = url
            self.event_id = event_id
        with contextlib.suppress(ValueError):
            self._open.remove(token)
        self._decisions += 1

    def settled(self) -> bool:
        """Whether Sentry has decided on this exception: an event sent, the PostHog tag
        removed, or every event it opened decided."""
        return (
            self.event_id is not None or self.excluded or (self._decisions > 0 and not self._open)
        )

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """``$sentry_*`` properties if Sentry sent an event for this exception, else none;
        None when the user's Sentry ``before_send`` filtered it out of PostHog."""
        deadline = time.monotonic() + timeout
        while self._open and self.event_id is None and time.monotonic() < deadline:
            time.sleep(_DECISION_POLL)
        if self.excluded:
            return None
        event_id = self.event_id
        if event_id is None:
            return {}
        properties: dict[str, Any] = {"$sentry_event_id": event_id}
        if self.url:
            properties["$sentry_url"] = self.url
        return properties


class PostHogIntegration(Integration):
    """``sentry_sdk.init(integrations=[PostHogIntegration(client, organization=..., ...)])``.

    Sentry options, as posthog-node's: ``organization``, ``project_id`` (Sentry's; the
    DSN's by default) and ``prefix`` make ``$sentry_url``; ``severity_allow_list`` takes
    level names in any case (Python's ``critical`` is Sentry's ``fatal``), a comma string
    or ``"*"``; ``send_exceptions_to_posthog`` false keeps only the person tags on Sentry
    events. ``posthog_project_id`` goes into the Person URL (else the client's API key).

    PostHog options: those of ``install()`` (``before_send``, ``ignore``, ``in_app_include``,
    ``in_app_exclude``, ``project_root``, ``max_frames``, ``redact_secrets``,
    ``redact_keys``, ``redact_patterns``, ``capture_code_variables``, ``release``,
    ``environment``, ``service``; without ``environment``, events carry Sentry's own
    ``environment``). Given none, events
    that come through Sentry use the options ``install()`` was given, sent to ``client``;
    given any, the integration uses its own options only.
    """

    identifier = "posthog"
    POSTHOG_ID_TAG = POSTHOG_ID_TAG

    def __init__(
        self,
        client: Any = None,
        *,
        organization: str | None = None,
        project_id: int | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        severity_allow_list: Iterable[str] | str = ("error",),
        send_exceptions_to_posthog: bool = True,
        posthog_project_id: int | str | None = None,
        **posthog_options: Any,
    ) -> None:
        unknown = sorted(set(posthog_options) - _POSTHOG_OPTIONS)
        if unknown:
            raise TypeError(
                f"PostHogIntegration got unknown options {', '.join(unknown)}; PostHog "
                f"options are {', '.join(sorted(_POSTHOG_OPTIONS))}"
            )
        if organization is not None and not isinstance(organization, str):
            raise TypeError(f"organization must be a string, got {organization!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a URL such as {DEFAULT_PREFIX!r}, got {prefix!r}")
        self.client = client
        self.organization = organization
        self.project_id = None if project_id is None else str(project_id)
        self.posthog_project_id = None if posthog_project_id is None else str(posthog_project_id)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.severity_allow_list = severity_names(severity_allow_list, option="severity_allow_list")
        self.send_exceptions_to_posthog = bool(send_exceptions_to_posthog)
        self._reporter = DoorReporter(client, posthog_options, None)

    @staticmethod
    def setup_once() -> None:
        _install_bridge()

    def allows(self, level: str) -> bool:
        return self.severity_allow_list is None or level in self.severity_allow_list

    def sentry_url(self, event_id: str, dsn: str | None) -> str | None:
        project_id = self.project_id or _project_from_dsn(dsn)
        if not self.organization or not project_id:
            return None
        return f"{self.prefix}{self.organization}/issues/?project={project_id}&query={event_id}"

    def posthog_reporter(self) -> Reporter:
        """Where events that come through Sentry go: this integration's own options if it
        was given any, else ``install()``'s, sent to this integration's client."""
        return self._reporter.get()


def sentry_integration(client: Any = None, **options: Any) -> PostHogIntegration:
    """The function form of posthog-node's ``sentryIntegration(client, options)``::

        sentry_sdk.init(dsn=..., integrations=[sentry_integration(client, organization="acme")])

    Takes the same options as :class:`PostHogIntegration`.
    """
    return PostHogIntegration(client, **options)


class _Pending:
    """What the event processor saw, kept in the hint until Sentry decides."""

    __slots__ = ("event", "exception", "excluded", "integration", "link", "tagged", "token")

    def __init__(
        self,
        link: SentryLink,
        integration: PostHogIntegration | None,
        exception: BaseException | None,
        event: dict[str, Any],
        tagged: bool,
    ) -> None:
        self.link = link
        self.integration = integration
        self.exception = exception
        self.event = event
        self.tagged = tagged
        self.excluded = False
        self.token = object()  # what the link holds while Sentry decides: not the event


# -- Sentry's side ----------------------------------------------------------------------


def _process_event(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """A global event processor: tag the person, and prepare the PostHog side."""
    if _guard.inside_library() or event.get("type") in ("transaction", "check_in"):
        return event
    try:
        _prepare(event, hint)
    except Exception as error:
        _guard.internal_error(error, reraise=False)
    return event


def _prepare(event: dict[str, Any], hint: dict[str, Any]) -> None:
    client = sentry_sdk.get_client()
    integration = client.get_integration(PostHogIntegration)
    exception = _hint_exception(hint)
    link = _link_of(exception) if exception is not None else SentryLink()
    tags = event.get("tags")
    if not isinstance(tags, dict):
        tags = event["tags"] = {}
    distinct_id = (
        _context._as_id(tags.get(POSTHOG_ID_TAG))
        or _context._as_id(_posthog_context(event).get(POSTHOG_ID_TAG))
        or link.distinct_id
        or _context.resolve(exception, None, None)[0]
    )
    reporter = integration.posthog_reporter() if integration else default_reporter_if_set()
    tagged = False
    if distinct_id:
        tags[POSTHOG_ID_TAG] = distinct_id
        project = integration.posthog_project_id if integration else None
        url = _person_url(reporter, distinct_id, project)
        if url:
            tags[PERSON_URL_TAG] = url
        link.distinct_id = link.distinct_id or distinct_id
        tagged = True
    pending = hint[_HINT_KEY] = _Pending(link, integration, exception, event, tagged)
    # Open from here: a PostHog event of the same failure waits for Sentry's decision (at
    # most its late-properties bound; an earlier sent event ends the wait at once).
    link.opened(pending.token)
    _wrap_client_options(client)


def _wrap_client_options(client: Any) -> None:
    """Wrap the client's ``before_send`` and ``error_sampler``, calling the user's own.

    Sentry reads both after every event processor, within the same capture, so wrapping
    here applies to the event being processed. Done once per client.
    """
    if getattr(client, _WRAPPED_ATTR, False):
        return
    options = client.options
    user_before_send = options.get("before_send")
    user_sampler = options.get("error_sampler")

    def posthog_errors_before_send(event: Any, hint: Any) -> Any:
        result = user_before_send(event, hint) if user_before_send is not None else event
        try:
            _after_before_send(result, hint)
        except Exception as error:
            _guard.internal_error(error, reraise=False)
        return result

    def posthog_errors_error_sampler(event: Any, hint: Any) -> float:
        sending = getattr(client, "transport", None) is not None
        if callable(user_sampler):
            try:
                rate = user_sampler(event, hint)
            except Exception:
                _decide(hint, sent=sending)  # sentry-sdk keeps an event whose sampler raised
                raise
        else:
            rate = options.get("sample_rate")
        try:
            keep = not (rate < 1.0 and random.random() >= rate)
        except TypeError:
            keep = True  # what sentry-sdk does with a bad rate
        _decide(hint, sent=keep and sending)
        return 1.0 if keep else 0.0

    options["before_send"] = posthog_errors_before_send
    options["error_sampler"] = posthog_errors_error_sampler
    setattr(client, _WRAPPED_ATTR, True)


def _after_before_send(result: Any, hint: Any) -> None:
    """The user's ``before_send`` has run: a dropped event is decided (not sent); one whose
    PostHog tag it deleted stays out of PostHog and loses its Person URL tag too."""
    pending = hint.get(_HINT_KEY) if isinstance(hint, dict) else None
    if not isinstance(pending, _Pending):
        return
    if result is None:
        _decide(hint, sent=False)
        return
    if isinstance(result, dict):
        pending.event = result
        tags = result.get("tags")
        if pending.tagged and not (isinstance(tags, dict) and tags.get(POSTHOG_ID_TAG)):
            pending.excluded = pending.link.excluded = True
            if isinstance(tags, dict):
                tags.pop(PERSON_URL_TAG, None)


def _decide(hint: Any, *, sent: bool) -> None:
    pending = hint.pop(_HINT_KEY, None) if isinstance(hint, dict) else None
    if not isinstance(pending, _Pending):
        return
    integration = pending.integration
    event_id = pending.event.get("event_id")
    url = None
    if integration is not None and isinstance(event_id, str):
        url = integration.sentry_url(event_id, sentry_sdk.get_client().options.get("dsn"))
    pending.link.decided(pending.token, sent=sent, event_id=event_id, url=url)
    if integration is None or not integration.send_exceptions_to_posthog or pending.excluded:
        return
    level = sentry_level(pending.event)
    if not integration.allows(level):
        return
    try:
        _send_to_posthog(integration, pending, level, sent, url)
    except Exception as error:
        _guard.internal_error(error, reraise=False)


def _send_to_posthog(
    integration: PostHogIntegration, pending: _Pending, level: str, sent: bool, url: str | None
) -> None:
    event = pending.event
    reporter = integration.posthog_reporter()
    values = (event.get("exception") or {}).get("values") or []
    outermost = values[-1] if values else {}
    message = outermost.get("value") or message_of(event)
    exception_type = outermost.get("type") or MESSAGE_TYPE  # a message: no exception
    properties: dict[str, Any] = {
        # The seed's properties. Every text here is redacted on the worker, as any property
        # is (see _redact); Sentry's frame locals go only where code variables are on.
        "$exception_message": message,
        "$exception_type": exception_type,
        "$sentry_exception": exception_data(
            event.get("exception"), keep_vars=reporter.options.capture_code_variables
        ),
        "$sentry_exception_message": message,
        "$sentry_exception_type": exception_type,
        "$sentry_tags": dict(event.get("tags") or {}),
    }
    if sent:
        properties["$sentry_event_id"] = event.get("event_id")
        if url:
            properties["$sentry_url"] = url
    environment = event.get("environment")
    if reporter.options.environment is None and isinstance(environment, str) and environment:
        properties["environment"] = environment  # Sentry's own, when PostHog was given none
    sentry_mechanism = outermost.get("mechanism") or {}
    handled = sentry_mechanism.get("handled")
    options: dict[str, Any] = {
        "level": level if level in LEVELS else "error",
        "handled": handled if isinstance(handled, bool) else True,
        # The spec's category for the Sentry integration that caught it; the bridge itself
        # is the source.
        "mechanism": sentry_category(sentry_mechanism.get("type")),
        "source": SENTRY_SOURCE,
        "distinct_id": pending.link.distinct_id,
        "properties": properties,
    }
    if pending.exception is not None:
        reporter.capture(pending.exception, **options)
    else:
        reporter.capture_prebuilt(exception_list(event), **options)


# -- PostHog's side ---------------------------------------------------------------------


def _on_posthog_capture(exception: BaseException | None, snapshot: EventSnapshot) -> None:
    """A capture hook: let the PostHog event carry the Sentry event of the same failure."""
    if exception is None or not _sentry_active():
        return
    link = _link_of(exception)
    link.distinct_id = link.distinct_id or snapshot.distinct_id
    snapshot.late = link
    if link.event_id is None and _sentry_may_report(snapshot):
        # Sentry has not decided yet and may in a moment: wait a little for it.
        snapshot.not_before = time.monotonic() + LINK_GRACE_SECONDS


def _sentry_active() -> bool:
    client = sentry_sdk.get_client()
    return bool(client.is_active() and client.options.get("dsn"))


def _sentry_may_report(snapshot: EventSnapshot) -> bool:
    """Whether Sentry may make an event of its own for this capture, asked of the installed
    sentry-sdk, never assumed: a PostHog event waits only for a Sentry event that can come.

    Only a log record is told apart. sentry-sdk's logging integration makes events from its
    event level up: ``LoggingIntegration(event_level=...)``, ERROR by default and on by
    default in 2.x; in 3.x off by default, and ``LoggingIntegration()`` sends records to
    Sentry Logs and makes no events unless ``event_level`` is given.
    """
    if snapshot.source != "python.logging":
        return True
    try:
        threshold = _logging_event_level()
    except Exception:
        return True  # a sentry-sdk we cannot read: wait, as before
    return threshold is not None and _LEVEL_NUMBERS.get(snapshot.level, 40) >= threshold


def _logging_event_level() -> int | None:
    """The level from which sentry-sdk's logging integration makes Sentry events of log
    records, or None when it makes none (not enabled, or ``event_level=None``).

    Both release lines keep the handler that makes events as an ``EventHandler`` (public in
    ``sentry_sdk.integrations.logging``) on the integration, under a name that changed
    (2.x ``_handler``, 3.x ``_event_handler``, beside 3.x's ``_logs_handler`` and
    ``_breadcrumb_handler``): it is found by its class, not by its name. A layout with no
    such attribute at all is not guessed at: ``LookupError``, and the caller waits.
    """
    from sentry_sdk.integrations.logging import EventHandler, LoggingIntegration

    integration = sentry_sdk.get_client().get_integration(LoggingIntegration)
    if integration is None:
        return None
    attributes = vars(integration)
    handlers = [value for value in attributes.values() if isinstance(value, EventHandler)]
    if handlers:
        return min(int(handler.level) for handler in handlers)
    if any(name in attributes for name in _EVENT_HANDLER_ATTRIBUTES):
        return None  # the handler's slot is there, empty: event_level=None
    from sentry_sdk.consts import VERSION

    raise LookupError(f"no event handler slot on sentry-sdk {VERSION}'s logging integration")


# -- helpers ------------------------------------------------------------------------------


def _link_of(exception: BaseException) -> SentryLink:
    link = getattr(exception, _LINK_ATTR, None)
    if isinstance(link, SentryLink):
        return link
    link = SentryLink()
    # An exception that refuses attributes is linked for this event only.
    with contextlib.suppress(Exception):
        setattr(exception, _LINK_ATTR, link)
    return link


def _hint_exception(hint: dict[str, Any]) -> BaseException | None:
    exc_info = hint.get("exc_info") if isinstance(hint, dict) else None
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    return None


def _posthog_context(event: dict[str, Any]) -> dict[str, Any]:
    contexts = event.get("contexts")
    context = contexts.get(POSTHOG_CONTEXT) if isinstance(contexts, dict) else None
    return context if isinstance(context, dict) else {}


def app_host(host: str) -> str:
    """The PostHog app's address for a client's host: PostHog Cloud's ingestion hosts
    (``us.i.posthog.com``, ``eu.i.posthog.com``) become the app's (``us.posthog.com``,
    ``eu.posthog.com``); any other host (self-hosted, ``app.posthog.com``) is kept."""
    parts = urllib.parse.urlsplit(host.rstrip("/"))
    name = parts.hostname or ""
    if name.endswith(".i.posthog.com"):
        netloc = name[: -len(".i.posthog.com")] + ".posthog.com"
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts)


def _person_url(
    reporter: Reporter | None, distinct_id: str, project_id: str | None = None
) -> str | None:
    """The person's page in the PostHog app: ``{app}/project/{project}/person/{id}``, the
    project being ``posthog_project_id`` when given, else the client's API key (what
    posthog-node puts there)."""
    if reporter is None or worker().redirected:  # posthog_errors.testing: no client needed
        return None
    try:
        client = reporter.client_source.resolve()
    except Exception:
        return None
    host = getattr(client, "host", None)
    api_key = getattr(client, "api_key", None)
    project = project_id or api_key
    if not isinstance(host, str) or not host or not isinstance(project, str):
        return None
    # posthog-python's own app_host option (a client behind a proxy) wins over the derived.
    configured = getattr(client, "app_host", None)
    app = configured.rstrip("/") if isinstance(configured, str) and configured else app_host(host)
    quoted = urllib.parse.quote(distinct_id, safe="")
    return f"{app}/project/{urllib.parse.quote(project, safe='')}/person/{quoted}"


def _project_from_dsn(dsn: object) -> str | None:
    if not isinstance(dsn, str) or not dsn:
        return None
    path = urllib.parse.urlsplit(dsn).path.rstrip("/")
    project = path.rsplit("/", 1)[-1]
    return project or None


_bridge_lock = threading.Lock()
_bridge_installed = False


def _install_bridge() -> None:
    global _bridge_installed
    with _bridge_lock:
        if _bridge_installed:
            return
        _bridge_installed = True
        add_global_event_processor(_process_event)  # type: ignore[arg-type]
        _extensions.add_capture_hook(_on_posthog_capture)


_install_bridge()
