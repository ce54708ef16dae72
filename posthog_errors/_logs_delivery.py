"""PostHog Logs, the worker's side: a queue bounded in bytes, batches, one request at a time.

**The caller's thread** only counts a snapshot's bytes and puts it on a
:class:`queue.SimpleQueue` (C calls: safe in a signal handler, no lock Python code holds).
The bytes are counted on an :func:`itertools.count` (one C call per ``UNIT`` of 1 KiB, one
for most records, estimated from the lengths of what the record holds; never a lost
update between threads) against what the worker has taken, so the queue holds at most
``MAX_QUEUE_BYTES`` (give or take one record per thread logging at that instant); a record
over it is dropped and counted (``logs_dropped_queue_full``): a PostHog that is slow or down
costs the app the logs it cannot take, nothing else.

**The worker** gathers a batch (``BATCH_WINDOW`` after its first record, asleep meanwhile so
as not to compete with the app for the GIL, then what is queued, until it holds
``MAX_BATCH_BYTES`` of JSON, half of PostHog's 2 MB request cap), renders each record
(``_logs.render``: redacted), runs ``before_send_log`` (fails closed: an exception or a
wrong return drops the record), applies the rate cap (``RATE_CAP`` records per
``RATE_WINDOW`` seconds, tumbling windows, after ``before_send_log`` as PostHog's logs spec
says), encodes OTLP JSON (``_otlp``), gzips it and POSTs it to ``{host}/i/v1/logs`` with
``requests`` (the posthog client's own dependency), one request in flight. A 413 halves the
batch; 408/429/5xx and network errors are retried ``MAX_ATTEMPTS`` times (honouring
``Retry-After``, capped); other answers reject the batch. Every record queued ends under
exactly one outcome in ``stats()``::

    logs_queued == logs_sent + logs_filtered + logs_rate_limited + logs_dropped
                   + logs_rejected + logs_undelivered        (after a flush)

**Flush** (``posthog_errors.flush()``, the exit flush, the signal and server-shutdown
flushes) puts a marker on the same queue and waits, bounded, for the worker to answer it;
sends in progress are cut to the flush's deadline. **Fork**: the child starts empty, with
its own worker and HTTP session, as ``_delivery`` does. Everything the worker (and
``requests``/``urllib3`` under it) logs is library code (``_guard``): never sent again.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import logging
import os
import queue
import threading
import time
from typing import Any

from posthog_errors import _guard, _otlp
from posthog_errors._conform import bad_input, warn_once
from posthog_errors._stats import STATS
from posthog_errors._steps import PID as _PID

__all__ = [
    "LOGS",
    "LOGS_PATH",
    "MAX_BATCH_BYTES",
    "MAX_QUEUE_BYTES",
    "RATE_CAP",
    "RATE_WINDOW",
    "SNAPSHOT_STEP",
    "UNIT",
    "LogSnapshot",
    "LogsWorker",
    "flush_logs",
]

# (options, units, distinct id, session id, trace id, span id, event uuid, *step): what
# ``_logs`` queues, the step's fields inline (one tuple a record, not two: fewer objects
# for the app's garbage collector); ``units`` the bytes it is counted for in the queue's
# budget, in UNITs.
LogSnapshot = tuple[Any, ...]
SNAPSHOT_STEP = 7  # where a snapshot's step starts: ``snapshot[SNAPSHOT_STEP:]``
UNIT = 1024
LOGS_PATH = "/i/v1/logs"
MAX_QUEUE_BYTES = 8 * 1024 * 1024
MAX_BATCH_BYTES = 1024 * 1024  # of JSON before gzip: half PostHog's 2 MB request cap
MAX_BATCH_RECORDS = 5_000
BATCH_WINDOW = 0.5  # seconds a batch gathers after its first record
RATE_CAP = 10_000  # records per window, after before_send_log
RATE_WINDOW = 10.0
MAX_ATTEMPTS = 3
MAX_RETRY_WAIT = 30.0
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
_IDLE_WAIT = 1.0
_HURRY_POLL = 0.02
_SCOPE = "posthog-errors"
_RETRIABLE = frozenset({408, 429})

logger = logging.getLogger("posthog_errors")


class _Marker:
    """A flush: answered on ``done`` once everything queued before it left the worker."""

    __slots__ = ("deadline", "done")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.done: queue.SimpleQueue[bool] = queue.SimpleQueue()


class _Stop(Exception):
    """A send gave up at a flush's deadline."""


class LogsWorker:
    """The logs' queue and the thread that sends them; one per process."""

    def __init__(self) -> None:
        self.max_queue_units = MAX_QUEUE_BYTES // UNIT
        self.shutdown_timeout = 2.0
        self._start_lock = threading.RLock()
        self._exit_registered = False
        self._init_state()

    def _init_state(self) -> None:
        self._queue: queue.SimpleQueue[LogSnapshot | _Marker] | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._admitted = itertools.count()  # units admitted, ever (next() is atomic)
        self._admitted_hint = 0  # the last value seen: a hint, the count is the truth
        self._taken = 0  # units the worker took off the queue (the worker alone writes it)
        self._session: Any = None
        self._window_start = 0.0
        self._window_count = 0
        self._ok = True  # no send failed since the last flush answered
        self._hurry = False  # set by flush(): skip the rest of the batch window

    # -- caller's thread ---------------------------------------------------------------

    def submit(self, snapshot: LogSnapshot, units: int) -> bool:
        """Queue ``snapshot``, counted as ``units`` of the byte budget; False (counted)
        when the budget is spent."""
        work = self._queue
        if work is None or self._pid != _PID[0]:  # (PID: kept current at fork, no syscall)
            try:
                work = self._start()
            except RuntimeError:
                STATS.add("logs_dropped_queue_full")  # no new thread at interpreter exit
                return False
        if self._admitted_hint - self._taken + units > self.max_queue_units:
            STATS.add("logs_dropped_queue_full")
            return False
        admitted = self._admitted
        total = next(admitted)
        if units > 1:  # (most records are one unit: no loop)
            for _ in range(units - 1):
                total = next(admitted)
        self._admitted_hint = total + 1
        next(STATS._counters["logs_queued"])  # STATS.add's one C call, without its loop
        work.put(snapshot)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far was sent (or given up), at most
        ``timeout`` seconds; True when all went out and no send failed since the last
        flush."""
        work, thread = self._queue, self._thread
        if work is None or thread is None or self._pid != os.getpid():
            return True
        if thread is threading.current_thread():
            return False  # a before_send_log that flushes
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        marker = _Marker(deadline)
        self._hurry = True  # a plain flag: flush() may run in a signal handler
        work.put(marker)
        from posthog_errors._delivery import wait_for_answer

        return wait_for_answer(marker.done, thread, deadline)

    # -- the worker --------------------------------------------------------------------

    def _start(self) -> queue.SimpleQueue[LogSnapshot | _Marker]:
        with self._start_lock:
            if self._pid != os.getpid():
                self._init_state()
            work = self._queue
            if work is not None and self._thread is not None:
                return work
            work = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._run, args=(work,), name="posthog-errors-logs", daemon=True
            )
            thread.start()
            self._queue, self._thread = work, thread
            if not self._exit_registered:
                self._exit_registered = True
                from posthog_errors._delivery import _register_exit

                _register_exit(self._flush_at_exit)
            return work

    def _run(self, work: queue.SimpleQueue[LogSnapshot | _Marker]) -> None:
        _guard.mark_library_thread()
        with _guard.library_code():
            while True:
                try:
                    item = work.get(timeout=_IDLE_WAIT)
                except queue.Empty:
                    self._session_idle()
                    continue
                try:
                    self._batch(work, item)
                except Exception as error:  # never let the worker die
                    _guard.internal_error(error, reraise=False)
                del item

    def _batch(self, work: queue.SimpleQueue[LogSnapshot | _Marker], first: Any) -> None:
        """Let the burst that ``first`` began finish (``BATCH_WINDOW``, unless a flush is
        waiting), then take what is queued up to the bounds (or a flush), send it, answer the
        flush. Sleeping through the burst rather than rendering each record as it comes: the
        app's thread logs without this one competing for the GIL meanwhile."""
        if not isinstance(first, _Marker):
            window_end = time.monotonic() + BATCH_WINDOW
            while not self._hurry and time.monotonic() < window_end:
                time.sleep(_HURRY_POLL)
        batches: dict[int, tuple[Any, list[str]]] = {}
        marker = None
        size = 0
        count = 0
        item = first
        while True:
            if isinstance(item, _Marker):
                marker = item
                break
            size_of = self._take(item, batches)
            size += size_of
            count += 1 if size_of else 0
            if size >= MAX_BATCH_BYTES or count >= MAX_BATCH_RECORDS:
                break
            try:
                item = work.get_nowait()
            except queue.Empty:
                break
        deadline = None if marker is None else marker.deadline
        for options, records in batches.values():
            self._send(options, records, deadline)
        if marker is not None:
            ok, self._ok = self._ok, True
            if work.empty():
                self._hurry = False
            marker.done.put(ok)

    def _take(self, snapshot: LogSnapshot, batches: dict[int, tuple[Any, list[str]]]) -> int:
        """Render one record into its door's batch; its JSON size, or 0 when not kept."""
        self._taken += snapshot[1]
        options = snapshot[0]
        try:
            record: dict[str, Any] | None = _render(snapshot)
        except Exception as error:
            STATS.add("logs_dropped")
            _guard.internal_error(error, reraise=False)
            return 0
        hook = options.before_send_log
        if hook is not None:
            record = _run_hook(hook, record)  # type: ignore[arg-type]
            if record is None:
                return 0
        if not self._within_rate():
            STATS.add("logs_rate_limited")
            return 0
        try:
            assert record is not None
            # Encoded once: the request body joins these texts (``_otlp.export_request_json``).
            encoded = json.dumps(_encode(record), separators=(",", ":"), allow_nan=False)
            size = len(encoded) + 1
        except Exception as error:
            STATS.add("logs_dropped")
            _guard.internal_error(error, reraise=False)
            return 0
        if size > MAX_BATCH_BYTES:
            STATS.add("logs_dropped")  # cannot happen with the bounds above; stay safe
            return 0
        entry = batches.get(id(options))
        if entry is None:
            entry = batches[id(options)] = (options, [])
        entry[1].append(encoded)
        return size

    def _within_rate(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= RATE_WINDOW or now < self._window_start:
            self._window_start, self._window_count = now, 0
        if self._window_count >= RATE_CAP:
            if self._window_count == RATE_CAP:
                warn_once(
                    "logs rate cap",
                    "posthog-errors: more than %d logs in %g s; the rest of each such window "
                    "is dropped (counted in stats()['logs_rate_limited'])",
                    RATE_CAP,
                    RATE_WINDOW,
                )
                self._window_count += 1
            return False
        self._window_count += 1
        return True

    def _send(self, options: Any, records: list[str], deadline: float | None) -> None:
        """POST ``records`` (one request at a time), halving on 413; each record ends
        counted as sent, rejected or undelivered."""
        if not records:
            return
        client = None
        try:
            client = options.current_reporter().client_source.resolve()
        except Exception as error:
            _guard.internal_error(error, reraise=False)
        api_key = getattr(client, "api_key", None)
        host = getattr(client, "host", None)
        if not isinstance(api_key, str) or not api_key or not isinstance(host, str):
            STATS.add("logs_dropped", len(records))
            self._ok = False
            return
        url = host.rstrip("/") + LOGS_PATH
        resource = _resource(options)
        pending = [records]
        while pending:
            chunk = pending.pop()
            body = _otlp.export_request_json(chunk, resource, _SCOPE, _version())
            status = self._post(url, api_key, body, deadline)
            if 200 <= status < 300:
                STATS.add("logs_sent", len(chunk))
            elif status == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                pending += [chunk[half:], chunk[:half]]
            else:
                self._ok = False
                STATS.add(
                    "logs_rejected" if 400 <= status < 500 else "logs_undelivered", len(chunk)
                )
                if 400 <= status < 500:
                    warn_once(
                        f"logs rejected {status}",
                        "posthog-errors: PostHog answered %d to a logs request; its records "
                        "are dropped (counted in stats()['logs_rejected'])",
                        status,
                    )

    def _post(self, url: str, api_key: str, body: str, deadline: float | None) -> int:
        """The answer's status; 0 when it never came (network, timeouts, the deadline)."""
        try:
            data = gzip.compress(body.encode(), compresslevel=5)
        except Exception as error:
            _guard.internal_error(error, reraise=False)
            return 0
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": f"posthog-errors/{_version()}",
        }
        for attempt in range(MAX_ATTEMPTS):
            timeout = _bounded_timeout(deadline)
            if timeout is None:
                return 0
            status, retry_after = 0, None
            try:
                answer = self._http().post(
                    url, params={"token": api_key}, data=data, headers=headers, timeout=timeout
                )
                status = answer.status_code
                retry_after = answer.headers.get("Retry-After")
                answer.close()
            except Exception:
                status = 0  # network error, timeout: retriable
            if status and status not in _RETRIABLE and status < 500:
                return status
            if attempt + 1 == MAX_ATTEMPTS:
                return status
            wait = min(MAX_RETRY_WAIT, _seconds(retry_after, 0.5 * 2**attempt))
            if deadline is not None and time.monotonic() + wait >= deadline:
                return status
            time.sleep(wait)
        return 0  # pragma: no cover

    def _http(self) -> Any:
        session = self._session
        if session is None:
            import requests

            session = self._session = requests.Session()
        return session

    def _session_idle(self) -> None:
        """Nothing to send: no kept-alive connection is held for ever."""
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()

    def _flush_at_exit(self) -> None:
        if self._pid != os.getpid() or self._thread is None:
            return
        try:
            self.flush(self.shutdown_timeout)
        except Exception as error:
            _guard.internal_error(error, reraise=False)

    def _after_fork_in_child(self) -> None:
        """The parent sends what it queued; the child starts empty (its session too: the
        parent's sockets are not the child's)."""
        self._start_lock = threading.RLock()
        self._init_state()


def _render(snapshot: LogSnapshot) -> dict[str, Any]:
    """``_logs.render``: imported here, as ``_logs`` imports this module (the queue)."""
    from posthog_errors._logs import render

    return render(snapshot)


def _run_hook(hook: Any, record: dict[str, Any]) -> dict[str, Any] | None:
    """``before_send_log``: its dict, checked, or None (counted). Fails closed, as
    ``before_send`` does: a hook that raises or returns something else drops the record."""
    try:
        result = hook(record)
    except Exception:
        STATS.add("logs_dropped")
        STATS.add("invalid_input")
        warn_once(
            "before_send_log raised",
            "before_send_log raised: the log is dropped (logged for the first failure only)",
            exc_info=True,
        )
        return None
    if result is None:
        STATS.add("logs_filtered")
        return None
    if (
        not isinstance(result, dict)
        or not isinstance(result.get("body"), str)
        or not isinstance(result.get("attributes", {}), dict)
    ):
        STATS.add("logs_dropped")
        bad_input(
            "before_send_log returned",
            "before_send_log returned %s, not a dict with a str body (or None): the log is dropped",
            type(result).__name__,
        )
        return None
    if not result["body"].strip():
        STATS.add("logs_filtered")  # the logs spec: a blanked body drops the record
        return None
    return result


def _encode(record: dict[str, Any]) -> dict[str, Any]:
    """A rendered (and maybe hooked) record as an OTLP ``LogRecord``."""
    stamp = record.get("timestamp")
    seconds = (
        float(stamp)
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool)
        else time.time()
    )
    levelno = _levelno(record)
    trace_id = _hex(record.get("trace_id"), 32)
    span_id = _hex(record.get("span_id"), 16)
    return _otlp.log_record(
        time_unix_nano=int(seconds * 1e9),
        observed_unix_nano=time.time_ns(),
        levelno=levelno,
        body=record["body"],
        attributes=record.get("attributes") or {},
        trace_id=trace_id,
        span_id=span_id,
    )


_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "fatal": 50}


def _levelno(record: dict[str, Any]) -> int:
    """The record's level: its ``level`` name (a hook may change it), else its number."""
    level = record.get("level")
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    number = record.get("severity_number")
    if isinstance(number, int) and not isinstance(number, bool) and number > 0:
        return 10 * ((number - 1) // 4)  # back onto Python's bands
    return logging.INFO


def _hex(value: Any, digits: int) -> int:
    if not isinstance(value, str) or len(value) != digits:
        return 0
    try:
        return int(value, 16)
    except ValueError:
        return 0


def _resource(options: Any) -> dict[str, Any]:
    """The producing service (the logs spec's resource attributes): ``service.name`` (the
    ``service`` option; OpenTelemetry's ``unknown_service`` when unset), ``service.version``
    (the release), ``deployment.environment``, and this SDK."""
    payload = options.current_reporter().options
    resource: dict[str, Any] = {"service.name": payload.service or "unknown_service:python"}
    if payload.release:
        resource["service.version"] = payload.release
    if payload.environment:
        resource["deployment.environment"] = payload.environment
    resource["telemetry.sdk.name"] = _SCOPE
    resource["telemetry.sdk.language"] = "python"
    resource["telemetry.sdk.version"] = _version()
    return resource


def _version() -> str:
    from posthog_errors import __version__

    return __version__


def _bounded_timeout(deadline: float | None) -> tuple[float, float] | None:
    """(connect, read) timeouts, cut to the deadline; None when it passed."""
    if deadline is None:
        return CONNECT_TIMEOUT, READ_TIMEOUT
    remaining = deadline - time.monotonic()
    if remaining <= 0.01:
        return None
    return min(CONNECT_TIMEOUT, remaining), min(READ_TIMEOUT, remaining)


def _seconds(value: Any, default: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if seconds >= 0 else default


def flush_logs(timeout: float | None) -> bool:
    """Flush the logs within ``timeout`` (True when there were none)."""
    return LOGS.flush(timeout)


LOGS = LogsWorker()


def _after_fork_in_child() -> None:
    LOGS._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
