"""The core that every entry point stays thin over.

A :class:`Reporter` is one destination with its options. Its :meth:`Reporter.capture` runs
on the caller's thread and does only the cheap part: guard, dedupe, snapshot, enqueue.
Everything that reads the exception object (dedupe mark, context, capture hooks, the
snapshot's type, module and value text) happens there; the queued snapshot keeps no
reference to the exception. :meth:`Reporter.deliver` runs on the worker: payload,
``before_send``, size check, ``client.capture``.
Data flows one way, entry point -> snapshot -> worker -> payload -> client.

**before_send fails closed.** The hook gets a copy of the properties (every dict and list
copied: nothing it changes reaches a cached frame or a later event). When it raises, or
returns something other than a dict or None, the event is dropped and counted as
``dropped`` (and ``invalid_input``); the first failure of each kind is logged, with its
traceback, on the ``posthog_errors`` logger. What it returns is checked against the
server's types (``_conform``): a broken ``$exception_list`` drops the event the same way.

**The captured mark.** An event that is not sent after all (``before_send``, rate limiting,
a full queue, a worker-side drop) releases the exception's mark, so that a later door (the
crash's ``sys.excepthook``) still reports it. The worker reaches the exception through a
weak reference kept in the snapshot for that purpose only. An unhandled-exception hook
that finds the exception marked by an event still waiting for ``before_send``'s verdict
waits (bounded) for the worker to decide first.

**Bad run-time input** (a bogus level, non-mapping properties, a non-string fingerprint)
is given a fallback and the event still goes: counted in ``invalid_input``, logged once
per kind. It is never an internal error.

The posthog client's ``capture()`` returns the event uuid once the event is queued; an
event over its size limit (900 KiB of JSON) is dropped later by its consumer thread, with
only an error log record to show for it. So the size is checked here, before the client
gets the event: one over the limit is dropped and counted as ``dropped``, never ``sent``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from posthog_errors import (
    _context,
    _dedupe,
    _extensions,
    _guard,
    _rate_limit,
    _receipts,
    _steps,
)
from posthog_errors._client import ClientSource
from posthog_errors._conform import (
    bad_input,
    conform_after_hook,
    conform_exception_list,
    copy_for_hook,
    warn_once,
)
from posthog_errors._delivery import worker
from posthog_errors._frames import FrameBuilder, site_key
from posthog_errors._options import PayloadOptions, as_names
from posthog_errors._payload import LEVELS, MESSAGE_TYPE, build_properties_sized, json_size
from posthog_errors._redact import compile_patterns, key_words
from posthog_errors._snapshot import (
    LOCALS_PERMITS,
    UUIDS,
    EventSnapshot,
    ExceptionSnapshot,
    FrameRef,
    LocalsPermit,
    cut_text,
    exception_reference,
    holds_locals,
    release_locals,
    walk_exceptions,
)
from posthog_errors._stats import STATS

__all__ = [
    "BeforeSend",
    "DoorReporter",
    "Reporter",
    "default_reporter",
    "default_reporter_if_set",
    "set_default_reporter",
]

logger = logging.getLogger("posthog_errors")

# How long the worker waits for late properties (a Sentry event decided on the caller's
# thread within microseconds; this bound only matters if that thread dies mid-decision).
_LATE_PROPERTIES_TIMEOUT = 1.0

# The posthog client drops an event whose JSON is over this (posthog.consumer.MAX_MSG_SIZE,
# read from the client's lane when it has one).
_CLIENT_EVENT_LIMIT = 900 * 1024
# What the client adds to an event's JSON besides our properties: $lib, $lib_version,
# $geoip_disable, $is_server, $release_id, $process_person_profile, and the envelope
# (event, uuid, timestamp, distinct_id). Generous: the distinct_id is measured separately.
_CLIENT_ADDITIONS = 1024

# The uuids of queued events whose exception is marked and that a ``before_send`` may still
# drop. An unhandled-exception hook that finds its exception marked by one of them waits,
# at most this long, for the worker's verdict (the mark is released on a drop).
_UNDECIDED: set[str] = set()
_UNDECIDED_LIMIT = 4096
_VERDICT_WAIT = 2.0
# The uuids of events dropped on the worker whose exception could not be reached to release
# its mark (built-in exception types refuse weak references): insertion-ordered, bounded.
_DROPPED: dict[str, None] = {}
_DROPPED_LIMIT = 1024

BeforeSend = Callable[[dict[str, Any]], "dict[str, Any] | None"]


@dataclasses.dataclass(slots=True)
class EventFields:
    """What an entry point says about an event, besides the exception itself."""

    level: str
    handled: bool
    mechanism: str
    source: str | None
    distinct_id: Any
    session_id: Any
    properties: dict[str, Any] | None
    fingerprint: str | None


class Reporter:
    """One destination (a client source) with its payload options and filters.

    ``before_send`` receives the finished properties on the worker thread and returns them
    (changed or not) or ``None`` to drop the event. ``ignore`` lists exception types that
    are never reported (checked on the caller's thread, so it costs nothing later).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        api_key: str | None = None,
        host: str | None = None,
        before_send: BeforeSend | None = None,
        ignore: Iterable[type[BaseException]] = (),
        in_app_include: Iterable[str] = (),
        in_app_exclude: Iterable[str] = (),
        project_root: str | None = None,
        max_frames: int = 100,
        redact_secrets: bool = True,
        redact_keys: Iterable[str] = (),
        redact_patterns: Iterable[str | re.Pattern[str]] = (),
        capture_code_variables: bool = False,
        release: str | None = None,
        environment: str | None = None,
        service: str | None = None,
    ) -> None:
        self.client_source = ClientSource(
            client, api_key=api_key, host=host, fallback=self._installed_client
        )
        self.options = PayloadOptions(
            in_app_include=as_names(in_app_include),
            in_app_exclude=as_names(in_app_exclude),
            project_root=project_root,
            max_frames=max_frames,
            redact_secrets=bool(redact_secrets),
            redact_keys=key_words(redact_keys),
            redact_patterns=compile_patterns(redact_patterns),
            capture_code_variables=bool(capture_code_variables),
            release=release,
            environment=environment,
            service=service,
        )
        self.frames = FrameBuilder(self.options)
        # A message is kept longer than it is sent: redacted on the worker, then cut.
        self._value_limit = self.options.snapshot_value_length
        if before_send is not None and not callable(before_send):
            raise TypeError(f"before_send must be a callable or None, got {before_send!r}")
        self.before_send = before_send
        self.ignore = _exception_types(ignore)

    def sending_to(self, client: Any) -> Reporter:
        """A reporter with this one's options (payload, redaction, ``before_send``,
        ``ignore``) that sends to ``client`` instead: one set of options for every door."""
        twin = copy.copy(self)
        twin.client_source = ClientSource(client, fallback=twin._installed_client)
        return twin

    def _installed_client(self) -> Any:
        """The client of the reporter ``install()`` set, when it is not this one."""
        installed = _default
        if installed is None or installed is self:
            return None
        return installed.client_source.resolve()

    # -- caller's thread -------------------------------------------------------------

    def capture(
        self,
        exc: BaseException,
        *,
        level: str = "error",
        handled: bool = True,
        mechanism: str = "generic",
        source: str | None = None,
        distinct_id: Any = None,
        session_id: Any = None,
        properties: dict[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> str | None:
        """Snapshot ``exc`` and queue it; the event uuid, or None when nothing will be sent."""
        fields = EventFields(
            level,
            handled,
            mechanism,
            source,
            distinct_id,
            session_id,
            properties,
            _fingerprint_text(fingerprint),
        )
        return self._guarded(self._capture, exc, fields)

    def capture_message(
        self,
        message: str,
        *,
        fingerprint: str,
        frames: tuple[FrameRef, ...],
        frames_omitted: int = 0,
        level: str = "error",
        mechanism: str = "logger",
        source: str | None = "python.logging",
        distinct_id: Any = None,
        session_id: Any = None,
        properties: dict[str, Any] | None = None,
        rate_key: Hashable | None = None,
    ) -> str | None:
        """Queue a message-only event: one synthetic entry with the call site's stack.

        It is rate limited by ``rate_key`` when given (the logging doors pass the call
        site), else by ``fingerprint``."""
        entry = ExceptionSnapshot(
            type_name=MESSAGE_TYPE,
            # Cut now: the queue never holds more of a huge message than the payload sends.
            value=cut_text(message if isinstance(message, str) else "", self._value_limit),
            module=None,
            frames=frames,
            frames_omitted=frames_omitted,
            stack_is_synthetic=True,
            is_message=True,
        )
        fields = EventFields(
            level, True, mechanism, source, distinct_id, session_id, properties, fingerprint
        )
        key = fingerprint if rate_key is None else rate_key
        return self._guarded(self._capture_entries, [entry], fields, key)

    def capture_prebuilt(
        self,
        exception_list: list[dict[str, Any]],
        *,
        level: str = "error",
        handled: bool = True,
        mechanism: str = "generic",
        source: str | None = None,
        distinct_id: Any = None,
        session_id: Any = None,
        properties: dict[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> str | None:
        """Queue an event whose ``$exception_list`` was built elsewhere (from a Sentry event
        that carries no live exception)."""
        if not exception_list:
            return None
        root = exception_list[0]
        fields = EventFields(
            level, handled, mechanism, source, distinct_id, session_id, properties, fingerprint
        )
        rate_key = fingerprint or (root.get("type"), root.get("value"))
        return self._guarded(self._capture_entries, [], fields, rate_key, exception_list)

    def _guarded(self, capture: Callable[..., str | None], *args: Any) -> str | None:
        """Run a capture path: never from library code, and never raising into the app."""
        if _guard.inside_library():
            return None
        try:
            return capture(*args)
        except Exception as error:
            if _guard.raised_by_signal_handler(error):
                # The app's (an alarm-based timeout): it abandons this capture, which may
                # then have no outcome in stats(), and goes on to the app.
                raise
            STATS.add("dropped")
            _guard.internal_error(error)
            return None

    def _capture(self, exc: BaseException, fields: EventFields) -> str | None:
        if not isinstance(exc, BaseException):
            bad_input(
                "capture of a non-exception",
                "capture_exception() takes an exception, got %s: nothing is sent",
                type(exc).__name__,
            )
            return None
        STATS.add("captured")
        if self.ignore and isinstance(exc, self.ignore):
            STATS.add("filtered")
            return None
        event_uuid = UUIDS.new()
        if not _claim(exc, event_uuid, fields.handled):
            STATS.add("deduplicated")
            return None
        queued = None
        permit: LocalsPermit | None = None
        try:
            if _rate_limited(lambda: fields.fingerprint or _failure_site(exc)):
                STATS.add("rate_limited")
                return None
            options = self.options
            locals_for = None
            if options.capture_code_variables:
                # Bounded: at most MAX_PENDING_LOCALS queued events pin frames' locals.
                permit = LOCALS_PERMITS.take()
                if permit is None:
                    STATS.add("invalid_input")  # sent, without code variables
                else:
                    locals_for = self.frames.in_app_code
            exceptions = walk_exceptions(
                exc,
                max_exceptions=options.max_exceptions,
                max_frames=options.max_frames,
                max_value_length=options.snapshot_value_length,
                locals_for=locals_for,
            )
            if permit is not None and not holds_locals(exceptions):
                permit.release()
                permit = None
            queued = self._submit(event_uuid, exc, exceptions, fields, locals_permit=permit)
            return queued
        finally:
            if queued is None:
                # Not sent after all: the mark must not name an event that does not exist.
                _dedupe.release(exc, event_uuid)
                if permit is not None:
                    permit.release()  # a no-op if the event was built meanwhile

    def _capture_entries(
        self,
        exceptions: list[ExceptionSnapshot],
        fields: EventFields,
        rate_key: Hashable,
        prebuilt: list[dict[str, Any]] | None = None,
    ) -> str | None:
        # Message-only and prebuilt events: no exception object, so no dedupe.
        STATS.add("captured")
        if _rate_limited(lambda: rate_key):
            STATS.add("rate_limited")
            return None
        return self._submit(UUIDS.new(), None, exceptions, fields, prebuilt)

    def _submit(
        self,
        event_uuid: str,
        exc: BaseException | None,
        exceptions: list[ExceptionSnapshot],
        fields: EventFields,
        prebuilt: list[dict[str, Any]] | None = None,
        *,
        locals_permit: LocalsPermit | None = None,
    ) -> str | None:
        level = fields.level
        if not isinstance(level, str) or level not in LEVELS:
            bad_input(
                "level",
                "level must be one of %s, got %r: sent as 'error'",
                ", ".join(LEVELS),
                level[:100] if isinstance(level, str) else type(level).__name__,
            )
            level = "error"
        properties = _user_properties(fields.properties)
        delivery = worker()
        # Redirected (posthog_errors.testing): events go to a list, no client needed.
        client = None if delivery.redirected else self.client_source.resolve()
        if client is None and not delivery.redirected:
            STATS.add("dropped")
            return None
        distinct_id, session_id, bound = _context.resolve(
            exc, fields.distinct_id, fields.session_id
        )
        if bound:
            properties = {**bound, **properties} if properties else dict(bound)
        # What only the caller's thread knows: posthog-python's context tags, the active
        # OpenTelemetry span. Below bound and explicit properties.
        caller = _context.caller_properties()
        if caller:
            properties = {**caller, **properties} if properties else caller
        snapshot = EventSnapshot(
            uuid=event_uuid,
            timestamp=time.time(),
            exceptions=exceptions,
            level=level,
            handled=fields.handled,
            mechanism=fields.mechanism,
            source=fields.source,
            distinct_id=distinct_id,
            session_id=session_id,
            properties=dict(properties) if properties else None,
            fingerprint=fields.fingerprint,
            client=client,
            reporter=self,
            prebuilt_exceptions=prebuilt,
            locals_permit=locals_permit,
            exception_ref=None if exc is None else exception_reference(exc),
            steps=_steps.current(),
        )
        _extensions.run_capture_hooks(exc, snapshot)
        undecided = exc is not None and self.before_send is not None and not delivery.redirected
        if undecided:
            if len(_UNDECIDED) >= _UNDECIDED_LIMIT:
                _UNDECIDED.clear()  # stale (a worker that died): only the waits are lost
            _UNDECIDED.add(event_uuid)
        if delivery.submit(snapshot):
            return event_uuid
        _UNDECIDED.discard(event_uuid)
        return None

    # -- worker thread ---------------------------------------------------------------

    def build_event(
        self, snapshot: EventSnapshot, *, for_client: bool = False
    ) -> dict[str, Any] | None:
        """The event as it is handed to the client; None when ``before_send`` dropped it.

        ``for_client``: the event goes straight to the posthog client, which copies it
        while cleaning, so cached frames can be shared (``before_send`` gets a copy).
        """
        built = self._build_event(snapshot, for_client=for_client)
        return None if built is None else built[0]

    def _build_event(
        self, snapshot: EventSnapshot, *, for_client: bool
    ) -> tuple[dict[str, Any], int | None] | None:
        """The event, and a bound of its properties' JSON size in bytes (None when
        ``before_send`` may have changed them: unknown). The snapshot's frame locals are
        released once the payload is built, whatever happens."""
        # With a before_send, the hook gets a deep copy: sharing cached frames is safe.
        share = for_client or self.before_send is not None
        try:
            properties, size = build_properties_sized(snapshot, self.frames, share_frames=share)
        finally:
            release_locals(snapshot)
        if snapshot.late is not None:
            late = snapshot.late.wait(_LATE_PROPERTIES_TIMEOUT)
            if late is None:  # the other side filtered this failure out (Sentry's before_send)
                STATS.add("filtered")
                _release_mark(snapshot)
                return None
            if late:
                properties.update(late)
                size += json_size(late)
        bound: int | None = size
        if snapshot.prebuilt_exceptions:
            # Built from a Sentry event: its values and line numbers are checked here.
            entries = conform_exception_list(properties["$exception_list"])
            if entries is None:
                STATS.add("dropped")
                return None
            properties["$exception_list"] = entries
        if self.before_send is not None:
            kept, outcome = self._run_before_send(properties)
            if kept is None:
                STATS.add(outcome)
                _release_mark(snapshot)
                return None
            properties = kept
            bound = None
        distinct_id = snapshot.distinct_id
        if not distinct_id:
            distinct_id = UUIDS.new()
            properties["$process_person_profile"] = False
        timestamp = datetime.datetime.fromtimestamp(snapshot.timestamp, datetime.timezone.utc)
        event = {
            "event": "$exception",
            "distinct_id": distinct_id,
            "uuid": snapshot.uuid,
            "timestamp": timestamp,
            "properties": properties,
        }
        return event, bound

    def deliver(self, snapshot: EventSnapshot) -> Any:
        """Build the event and hand it to the client. Returns the client used, or None
        when nothing was handed over."""
        sent = False
        try:
            client, sent = self._deliver(snapshot)
            return client
        finally:
            if not sent:
                _release_mark(snapshot)  # not sent after all, whatever stopped it
            snapshot.exception_ref = None
            _UNDECIDED.discard(snapshot.uuid)

    def _deliver(self, snapshot: EventSnapshot) -> tuple[Any, bool]:
        """(the client used or None, whether it took the event)."""
        built = self._build_event(snapshot, for_client=True)
        snapshot.properties = None  # the app's objects: not kept while the worker idles
        if built is None:
            return None, False
        event, bound = built
        client = snapshot.client
        if not _fits_client(event, bound, client):
            STATS.add("dropped")
            warn_once(
                "event over the client's limit",
                "dropped an $exception event over the posthog client's size limit (%d bytes); "
                "later ones are counted in stats()['dropped'] without a word",
                _client_limit(client),
            )
            return None, False
        ledger = _receipts.watch(client)  # what becomes of it after capture() returns
        if ledger is not None:
            ledger.add(event["uuid"])
        try:
            accepted = client.capture(
                "$exception",
                distinct_id=event["distinct_id"],
                properties=event["properties"],
                timestamp=event["timestamp"],
                uuid=event["uuid"],
            )
        except Exception:
            logger.warning("the posthog client raised while capturing an event", exc_info=True)
            accepted = None
        # capture() returns the uuid once queued, None when it refused the event.
        if ledger is not None and accepted != event["uuid"]:
            ledger.pending.pop(event["uuid"], None)  # refused, or renamed by its before_send
            if isinstance(accepted, str):
                ledger.add(accepted)
        STATS.add("sent" if accepted is not None else "dropped")
        return client, accepted is not None

    def _run_before_send(self, properties: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The properties ``before_send`` keeps, checked; or None and the outcome to count:
        ``filtered`` when it returned None, ``dropped`` when it failed (fails closed)."""
        hook = self.before_send
        assert hook is not None
        try:
            result = hook(copy_for_hook(properties))
        except Exception:
            STATS.add("invalid_input")
            warn_once(
                "before_send raised",
                "before_send raised: the event is dropped (logged for the first failure only)",
                exc_info=True,
            )
            return None, "dropped"
        if result is None:
            return None, "filtered"
        if not isinstance(result, dict):
            bad_input(
                "before_send returned",
                "before_send returned %s, not a dict or None: the event is dropped",
                type(result).__name__,
            )
            return None, "dropped"
        checked = conform_after_hook(result, properties)
        if checked is None:
            bad_input(
                "before_send $exception_list",
                "before_send returned no valid $exception_list (a non-empty list of objects "
                "with a string type): the event is dropped",
            )
            return None, "dropped"
        return checked, "sent"


def _client_limit(client: Any) -> int:
    """The client's per-event limit: its analytics lane's, else posthog's 900 KiB."""
    lane = getattr(client, "_analytics_lane", None)
    limit = getattr(lane, "max_msg_size", None)
    return limit if isinstance(limit, int) and limit > 0 else _CLIENT_EVENT_LIMIT


def _fits_client(event: dict[str, Any], bound: int | None, client: Any) -> bool:
    """Whether the client will take the event, measured as its consumer does (the JSON
    of the whole event, with what the client adds). Measured only when the cheap bound
    says it might not fit."""
    limit = _client_limit(client) - _CLIENT_ADDITIONS
    extra = 0
    super_properties = getattr(client, "super_properties", None)
    if isinstance(super_properties, dict) and super_properties:
        extra = json_size(super_properties)
    distinct_id = event["distinct_id"]
    extra += 6 * len(distinct_id) if isinstance(distinct_id, str) else 1024
    if bound is not None and bound + extra <= limit:
        return True
    try:
        size = json_size(event["properties"])
    except (TypeError, ValueError, RecursionError):
        return True  # a before_send made it unmeasurable: the client cleans it as it can
    return size + extra <= limit


def _fingerprint_text(value: object) -> str | None:
    """A fingerprint as PostHog takes it: a string (a list or tuple is joined with "/")."""
    if value is None or isinstance(value, str):
        return value
    bad_input(
        "fingerprint", "fingerprint must be a string, got %s: converted", type(value).__name__
    )
    if isinstance(value, (list, tuple)):
        return "/".join(str(part) for part in value)
    return str(value)


def _user_properties(value: object) -> dict[str, Any] | None:
    """The caller's properties as a dict of its own; None (and said once) when they are
    not a mapping: the event is sent without them."""
    if value is None or type(value) is dict:
        return value
    if isinstance(value, Mapping):
        try:
            return dict(value)
        except Exception:
            pass
    bad_input(
        "properties",
        "properties must be a mapping, got %s: the event is sent without them",
        type(value).__name__,
    )
    return None


def _release_mark(snapshot: EventSnapshot) -> None:
    """The snapshot's event is not sent after all: release its exception's captured mark.

    Through the weak reference when the exception has one (classes defined in Python) and
    is alive; and, for built-in exception types (which refuse weak references), by
    remembering the uuid as dropped: the next door that finds the mark naming it takes
    the exception over (see :func:`_claim`)."""
    reference, snapshot.exception_ref = snapshot.exception_ref, None
    exc = None if reference is None else reference()
    if exc is not None:
        _dedupe.release(exc, snapshot.uuid)
        return
    if reference is None and snapshot.prebuilt_exceptions is None:
        while len(_DROPPED) >= _DROPPED_LIMIT:
            try:
                _DROPPED.pop(next(iter(_DROPPED)))
            except (KeyError, RuntimeError, StopIteration):
                break  # another thread changed the table meanwhile
        _DROPPED[snapshot.uuid] = None


def _claim(exc: BaseException, event_uuid: str, handled: bool) -> bool:
    """Mark ``exc`` as captured by this event; False when another event already did.

    A mark that names an event dropped on the worker (see :func:`_release_mark`) is taken
    over. An unhandled-exception hook (``handled`` False) that finds the mark of an event
    still waiting for ``before_send``'s verdict waits, bounded, for the worker to decide.
    """
    if _dedupe.claim(exc, event_uuid):
        return True
    marked = _marked_uuid(exc)
    if not handled and _UNDECIDED and (marked is None or marked in _UNDECIDED):
        # Unmarkable exceptions have no uuid to read: any undecided event may be theirs.
        worker().flush(_VERDICT_WAIT)
        marked = _marked_uuid(exc)
        if marked is None:
            return _dedupe.claim(exc, event_uuid)  # released through the weak reference
    if marked is not None and marked in _DROPPED:
        _DROPPED.pop(marked, None)
        _dedupe.release(exc, marked)
        return _dedupe.claim(exc, event_uuid)
    return False


def _marked_uuid(exc: BaseException) -> str | None:
    try:
        marked = getattr(exc, _dedupe.UUID_ATTR, None)
    except Exception:
        return None
    return marked if isinstance(marked, str) else None


def _rate_limited(key: Callable[[], Hashable]) -> bool:
    """Whether this failure site is over its rate; the key is computed only when needed.
    Never while ``posthog_errors.testing`` collects events: tests assert on every one."""
    if not _rate_limit.enabled() or worker().redirected:
        return False
    return not _rate_limit.allow(key())


def _failure_site(exc: BaseException) -> tuple[object, ...]:
    """What rate limiting groups by when no fingerprint is given: type and raising line.

    The line as a location (file, function, line: :func:`site_key`), never the code
    object, which compares equal to another file's identical code: two modules failing
    at the same line of the same function would share one budget."""
    tb = exc.__traceback__
    if tb is None:
        return (type(exc),)
    while tb.tb_next is not None:
        tb = tb.tb_next
    return (type(exc), *site_key(tb.tb_frame.f_code, tb.tb_lineno))


def _exception_types(value: Iterable[type[BaseException]]) -> tuple[type[BaseException], ...]:
    items: list[object] = [value] if isinstance(value, type) else list(value)
    result: list[type[BaseException]] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"ignore takes exception classes, got {item!r}")
        result.append(item)
    return tuple(result)


_default: Reporter | None = None
_default_lock = threading.RLock()  # C-level, re-entrant: a signal handler may capture here


class DoorReporter:
    """Where a door's events go (a structlog processor, a loguru sink): the door's own
    options when it was given any (or a ``reporter``); else the options ``install()`` was
    given, sent to the door's own client if it has one, and followed when ``install()``
    changes. One rule for every door, so a user configures redaction, ``before_send`` and
    code variables once."""

    def __init__(self, client: Any, options: dict[str, Any], reporter: Reporter | None) -> None:
        given = {}
        for name, value in options.items():
            value = _read_once(value)
            if value is not None and value != () and value != "":
                given[name] = value
        if reporter is None and given:
            reporter = Reporter(client, **given)
        self._own = reporter
        # Without options of its own: this, while install() has set none.
        self._standalone = reporter or Reporter(client)
        # (install()'s reporter, the one derived from it): remade when install() changes.
        self._derived: tuple[Reporter, Reporter] | None = None

    def get(self) -> Reporter:
        if self._own is not None:
            return self._own
        installed = _default
        if installed is None:
            return self._standalone
        derived = self._derived
        if derived is not None and derived[0] is installed:
            return derived[1]
        client = self._standalone.client_source.configured
        if client is None or installed.client_source.configured is client:
            reporter = installed
        else:
            reporter = installed.sending_to(client)
        self._derived = (installed, reporter)
        return reporter


def _read_once(value: Any) -> Any:
    """An option's value, an iterable read once into a tuple (an empty one: not given)."""
    if value is None or isinstance(value, (str, bytes, type, re.Pattern, bool, int)):
        return value
    if callable(value):
        return value
    try:
        return tuple(value)
    except TypeError:
        return value


def default_reporter() -> Reporter:
    """The reporter ``capture_exception`` uses: the one ``install()`` set, else from the env."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Reporter()
    return _default


def default_reporter_if_set() -> Reporter | None:
    return _default


def set_default_reporter(reporter: Reporter | None) -> Reporter | None:
    """Replace the default reporter; returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, reporter
    return previous
