"""Sentry, both ways.

``PostHogIntegration`` is the Python counterpart of posthog-node's ``sentryIntegration``:
Sentry error events get the PostHog person (``posthog_distinct_id`` and ``PostHog Person
URL`` tags), and events at an allowed level are sent to PostHog as ``$exception`` with
``$sentry_event_id``, ``$sentry_url`` and the Sentry exception data.

Without the integration, when sentry-sdk is initialised, the bridge below still links both
sides for exceptions this library captures, whichever of the two saw the exception first:
Sentry's event gets the person tags, the PostHog event gets ``$sentry_event_id``. Tags go on
the event itself, never on a shared scope, so nothing leaks into later, unrelated events.

A PostHog event never points at a Sentry event that was not sent: Sentry runs event
processors before ``before_send`` and sampling, so the link is confirmed only once those
have decided (the bridge wraps the client's ``before_send`` and ``error_sampler`` options,
calling the user's own).
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
from posthog_errors._payload import LEVELS, MESSAGE_TYPE
from posthog_errors._reporter import Reporter, default_reporter, default_reporter_if_set
from posthog_errors._snapshot import EventSnapshot

__all__ = ["PERSON_URL_TAG", "POSTHOG_ID_TAG", "PostHogIntegration"]

POSTHOG_ID_TAG = _context.SENTRY_ID_TAG
PERSON_URL_TAG = "PostHog Person URL"
DEFAULT_PREFIX = "https://sentry.io/organizations/"
# How long a PostHog event waits for Sentry to see the same exception (a log record reaches
# this library's handler before sentry-sdk's logging integration, for example).
LINK_GRACE_SECONDS = 0.3

_LINK_ATTR = "__posthog_errors_sentry_link"
_HINT_KEY = "posthog_errors_pending"
_WRAPPED_ATTR = "_posthog_errors_options_wrapped"


class SentryLink:
    """The Sentry event that saw an exception, once Sentry has decided to send it."""

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.url: str | None = None
        self.sent = False
        self.distinct_id: str | None = None
        self._decided = threading.Event()

    def decide(self, sent: bool) -> None:
        self.sent = sent
        self._decided.set()

    def wait(self, timeout: float) -> dict[str, Any]:
        """``$sentry_*`` properties if Sentry sent an event for this exception, else none."""
        if self.event_id is None or not self._decided.wait(timeout) or not self.sent:
            return {}
        properties: dict[str, Any] = {"$sentry_event_id": self.event_id}
        if self.url:
            properties["$sentry_url"] = self.url
        return properties


class PostHogIntegration(Integration):
    """``sentry_sdk.init(integrations=[PostHogIntegration(client, organization=..., ...)])``.

    ``severity_allow_list`` takes Sentry levels (``fatal, error, warning, log, info,
    debug``) or ``"*"``. ``project_id`` defaults to the DSN's. ``send_exceptions_to_posthog``
    false keeps only the person tags on Sentry events.
    """

    identifier = "posthog"

    def __init__(
        self,
        client: Any = None,
        *,
        organization: str | None = None,
        project_id: int | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        severity_allow_list: Iterable[str] | str = ("error",),
        send_exceptions_to_posthog: bool = True,
    ) -> None:
        self.reporter = Reporter(client) if client is not None else None
        if organization is not None and not isinstance(organization, str):
            raise TypeError(f"organization must be a string, got {organization!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a URL such as {DEFAULT_PREFIX!r}, got {prefix!r}")
        self.organization = organization
        self.project_id = None if project_id is None else str(project_id)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.severity_allow_list = _severities(severity_allow_list)
        self.send_exceptions_to_posthog = bool(send_exceptions_to_posthog)

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
        return self.reporter or default_reporter()


class _Pending:
    """What the event processor saw, kept in the hint until Sentry decides."""

    __slots__ = ("event", "exception", "integration", "link")

    def __init__(
        self,
        link: SentryLink,
        integration: PostHogIntegration | None,
        exception: BaseException | None,
        event: dict[str, Any],
    ) -> None:
        self.link = link
        self.integration = integration
        self.exception = exception
        self.event = event


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
    event_id = event.get("event_id")
    link.event_id = event_id if isinstance(event_id, str) else None
    tags = event.get("tags")
    if not isinstance(tags, dict):
        tags = event["tags"] = {}
    distinct_id = (
        _context._as_id(tags.get(POSTHOG_ID_TAG))
        or link.distinct_id
        or _context.resolve(exception, None, None)[0]
    )
    reporter = integration.posthog_reporter() if integration else default_reporter_if_set()
    if distinct_id:
        tags[POSTHOG_ID_TAG] = distinct_id
        url = _person_url(reporter, distinct_id)
        if url:
            tags[PERSON_URL_TAG] = url
        link.distinct_id = link.distinct_id or distinct_id
    if integration is not None and link.event_id:
        link.url = integration.sentry_url(link.event_id, client.options.get("dsn"))
    hint[_HINT_KEY] = _Pending(link, integration, exception, event)
    _wrap_client_options(client)


def _wrap_client_options(client: Any) -> None:
    """Wrap the client's ``before_send`` and ``error_sampler``, calling the user's own.

    Sentry reads both after event processors, within the same capture, so wrapping here
    applies to the event being processed. Done once per client.
    """
    if getattr(client, _WRAPPED_ATTR, False):
        return
    options = client.options
    user_before_send = options.get("before_send")
    user_sampler = options.get("error_sampler")

    def posthog_errors_before_send(event: Any, hint: Any) -> Any:
        result = user_before_send(event, hint) if user_before_send is not None else event
        if result is None:
            _decide(hint, sent=False)
        return result

    def posthog_errors_error_sampler(event: Any, hint: Any) -> float:
        rate = user_sampler(event, hint) if callable(user_sampler) else options.get("sample_rate")
        try:
            keep = not (rate < 1.0 and random.random() >= rate)
        except TypeError:
            keep = True  # what sentry-sdk does with a bad rate
        _decide(hint, sent=keep and getattr(client, "transport", None) is not None)
        return 1.0 if keep else 0.0

    options["before_send"] = posthog_errors_before_send
    options["error_sampler"] = posthog_errors_error_sampler
    setattr(client, _WRAPPED_ATTR, True)


def _decide(hint: Any, *, sent: bool) -> None:
    pending = hint.pop(_HINT_KEY, None) if isinstance(hint, dict) else None
    if not isinstance(pending, _Pending):
        return
    pending.link.decide(sent)
    integration = pending.integration
    if integration is None or not integration.send_exceptions_to_posthog:
        return
    level = _sentry_level(pending.event)
    if not integration.allows(level):
        return
    try:
        _send_to_posthog(integration, pending, level, sent)
    except Exception as error:
        _guard.internal_error(error, reraise=False)


def _send_to_posthog(
    integration: PostHogIntegration, pending: _Pending, level: str, sent: bool
) -> None:
    event = pending.event
    reporter = integration.posthog_reporter()
    values = (event.get("exception") or {}).get("values") or []
    outermost = values[-1] if values else {}
    properties: dict[str, Any] = {
        # Every text here is redacted on the worker, as any property is (see _redact);
        # Sentry's frame locals go only where code variables are on.
        "$sentry_exception": _exception_data(
            event.get("exception"), keep_vars=reporter.options.capture_code_variables
        ),
        "$sentry_exception_message": outermost.get("value") or _message_of(event),
        "$sentry_exception_type": outermost.get("type"),
        "$sentry_tags": dict(event.get("tags") or {}),
    }
    if sent:
        properties["$sentry_event_id"] = pending.link.event_id
        if pending.link.url:
            properties["$sentry_url"] = pending.link.url
    handled = (outermost.get("mechanism") or {}).get("handled")
    options: dict[str, Any] = {
        "level": level if level in LEVELS else "error",
        "handled": handled if isinstance(handled, bool) else True,
        "mechanism": "sentry",
        "source": "sentry",
        "distinct_id": pending.link.distinct_id,
        "properties": properties,
    }
    if pending.exception is not None:
        reporter.capture(pending.exception, **options)
    else:
        reporter.capture_prebuilt(_exception_list(event), **options)


# -- PostHog's side ---------------------------------------------------------------------


def _on_posthog_capture(exception: BaseException | None, snapshot: EventSnapshot) -> None:
    """A capture hook: let the PostHog event carry the Sentry event of the same failure."""
    if exception is None or not _sentry_active():
        return
    link = _link_of(exception)
    link.distinct_id = link.distinct_id or snapshot.distinct_id
    snapshot.late = link
    if link.event_id is None:
        # Sentry has not seen it yet and may in a moment: wait a little for it.
        snapshot.not_before = time.monotonic() + LINK_GRACE_SECONDS


def _sentry_active() -> bool:
    client = sentry_sdk.get_client()
    return bool(client.is_active() and client.options.get("dsn"))


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


def _person_url(reporter: Reporter | None, distinct_id: str) -> str | None:
    if reporter is None:
        return None
    try:
        client = reporter.client_source.resolve()
    except Exception:
        return None
    host = getattr(client, "host", None)
    api_key = getattr(client, "api_key", None)
    if not isinstance(host, str) or not isinstance(api_key, str):
        return None
    quoted = urllib.parse.quote(distinct_id, safe="")
    return f"{host.rstrip('/')}/project/{api_key}/person/{quoted}"


def _project_from_dsn(dsn: object) -> str | None:
    if not isinstance(dsn, str) or not dsn:
        return None
    path = urllib.parse.urlsplit(dsn).path.rstrip("/")
    project = path.rsplit("/", 1)[-1]
    return project or None


def _sentry_level(event: dict[str, Any]) -> str:
    level = event.get("level") or "error"
    level = str(level).lower()
    return {"critical": "fatal", "warn": "warning"}.get(level, level)


def _message_of(event: dict[str, Any]) -> str:
    message = event.get("message")
    if isinstance(message, str):
        return message
    logentry = event.get("logentry") or {}
    formatted = logentry.get("formatted") or logentry.get("message")
    return formatted if isinstance(formatted, str) else ""


def _exception_data(data: Any, *, keep_vars: bool) -> Any:
    """Sentry's ``exception`` data for ``$sentry_exception``: a copy without the frames'
    ``vars`` (sentry-sdk's locals) unless code variables are on. Only the dicts on the way
    to the frames are copied; the event Sentry sends is left as it is."""
    if keep_vars or not isinstance(data, dict) or not isinstance(data.get("values"), list):
        return data
    values = []
    for value in data["values"]:
        stacktrace = value.get("stacktrace") if isinstance(value, dict) else None
        if isinstance(stacktrace, dict) and isinstance(stacktrace.get("frames"), list):
            frames = [
                {k: v for k, v in frame.items() if k != "vars"}
                if isinstance(frame, dict)
                else frame
                for frame in stacktrace["frames"]
            ]
            value = {**value, "stacktrace": {**stacktrace, "frames": frames}}
        values.append(value)
    return {**data, "values": values}


def _exception_list(event: dict[str, Any]) -> list[dict[str, Any]]:
    """PostHog's ``$exception_list`` from Sentry's data: outermost first (Sentry lists the
    root cause first), with frames, code context and ``in_app`` kept."""
    values = list(reversed((event.get("exception") or {}).get("values") or []))
    entries: list[dict[str, Any]] = []
    for index, value in enumerate(values[:50]):
        mechanism: dict[str, Any] = {"synthetic": False, "exception_id": index}
        if index == 0:
            handled = (value.get("mechanism") or {}).get("handled")
            mechanism.update(type="sentry", handled=handled if isinstance(handled, bool) else True)
        else:
            mechanism.update(type="chained", parent_id=index - 1, source="cause")
        entry: dict[str, Any] = {
            "type": str(value.get("type") or "Error"),
            "value": str(value.get("value") or ""),
            "module": value.get("module") if isinstance(value.get("module"), str) else None,
            "mechanism": mechanism,
        }
        frames = [_frame(f) for f in ((value.get("stacktrace") or {}).get("frames") or [])]
        if frames:
            entry["stacktrace"] = {"type": "raw", "frames": frames[-100:]}
        entries.append(entry)
    if not entries:
        entries.append(
            {
                "type": MESSAGE_TYPE,
                "value": _message_of(event),
                "module": None,
                "mechanism": {
                    "type": "sentry",
                    "handled": True,
                    "synthetic": True,
                    "exception_id": 0,
                },
            }
        )
    return entries


def _frame(frame: dict[str, Any]) -> dict[str, Any]:
    def text(key: str) -> str | None:
        value = frame.get(key)
        return value if isinstance(value, str) else None

    def lines(key: str) -> list[str]:
        value = frame.get(key)
        return [line for line in value if isinstance(line, str)] if isinstance(value, list) else []

    lineno = frame.get("lineno")
    return {
        "platform": "python",
        "filename": text("filename") or text("abs_path") or "<unknown>",
        "abs_path": text("abs_path"),
        "function": text("function") or "<unknown>",
        "module": text("module"),
        "lineno": lineno if isinstance(lineno, int) and lineno >= 0 else None,
        "pre_context": lines("pre_context"),
        "context_line": text("context_line"),
        "post_context": lines("post_context"),
        "in_app": frame.get("in_app") is True,
    }


def _severities(value: Iterable[str] | str) -> frozenset[str] | None:
    if value == "*":
        return None
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if item not in LEVELS:
            raise ValueError(
                f"severity_allow_list takes Sentry levels ({', '.join(LEVELS)}) or '*', "
                f"got {item!r}"
            )
    return frozenset(items)


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
