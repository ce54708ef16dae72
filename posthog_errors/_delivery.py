"""Delivery: one bounded queue, one background worker, bounded flushes.

The caller's thread only puts a snapshot on a :class:`queue.SimpleQueue`. That is one C
call, documented as safe to make from a signal handler or a ``__del__``, and it takes no
lock that Python code holds: a signal handler that captures in the middle of a capture, or
an exception it raises there, can never leave the caller's path locked. The worker builds
the payload and hands it to the posthog client, whose own consumer threads do the HTTP. So
nothing here ever waits on the network for the app (but see ``flush()`` and pool workers).

``flush()`` puts a marker in the same queue and waits for the worker to reach it, on a
queue of its own: every snapshot submitted before the flush was delivered by then.

Also here: the flush at interpreter exit (registered with ``threading._register_atexit``
so it runs before ``atexit`` handlers, while the posthog client's consumers still accept
work, and without starting a thread, which Python 3.12+ forbids at shutdown); captures
made after it (by ``atexit`` handlers, or ``__del__`` methods at exit) are each flushed
right away, within what is left of ``shutdown_timeout``. Fork safety: the child starts with
an empty queue and, lazily, its own worker. ``multiprocessing`` pool workers flush each
capture before the task goes on, since ``Pool.terminate()`` kills them without an exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from posthog_errors import _guard, _prompt, _receipts
from posthog_errors._bounded import MAX_QUEUED_TEXT, freeze_properties
from posthog_errors._snapshot import EventSnapshot
from posthog_errors._stats import STATS

__all__ = ["DEFAULT_QUEUE_SIZE", "DeliveryWorker", "wait_for_answer", "worker"]

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_SHUTDOWN_TIMEOUT = 2.0
_IDLE_WAIT = 1.0
_BATCH_DELAY = 0.02
_GRACE_POLL = 0.005  # how often a held-back event checks whether a flush is waiting
_FLUSH_POLL = 0.1  # how often a waiting flush checks that the worker is still alive


class UploadFailureWatch(logging.Filter):
    """Counts the posthog client's failed uploads, from its own "error uploading" records.

    A client the user built gives no other signal of a failed upload (its ``on_error`` is
    the user's), and ``flush()`` must not claim events went out when they did not. The
    filter only counts: every record goes on as before.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def filter(self, record: logging.LogRecord) -> bool:
        # posthog's own filter may already have prefixed the message ("[PostHog] ...").
        try:
            if record.levelno >= logging.ERROR and "error uploading" in record.getMessage():
                self.failures += 1
        except Exception:
            pass  # a record that cannot be formatted is not ours to judge
        return True


_UPLOADS = UploadFailureWatch()


def upload_failures() -> int:
    """Failed uploads so far: those the posthog clients logged, and events of ours their
    ``on_error`` reported lost (see :mod:`posthog_errors._receipts`)."""
    return _UPLOADS.failures + _receipts.failures()


class _FlushMarker:
    """Put in the queue by ``flush()``; the worker answers on ``done`` when it gets there."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done: queue.SimpleQueue[bool] = queue.SimpleQueue()


class DeliveryWorker:
    """A bounded queue of snapshots and the thread that delivers them."""

    def __init__(self, max_queue: int = DEFAULT_QUEUE_SIZE) -> None:
        self.max_queue = max_queue
        self.shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT
        self._redirect: Callable[[EventSnapshot], None] | None = None
        self._start_lock = threading.RLock()  # C-level and re-entrant: see _start()
        self._init_state()
        self._exit_registered = False

    def _init_state(self) -> None:
        # The queue is made with the worker, lazily: under gevent, ``queue.SimpleQueue`` is
        # gevent's only once monkey-patching ran, which may be after this module's import.
        self._queue: queue.SimpleQueue[EventSnapshot | _FlushMarker] | None = None
        self._hurry = False  # set by flush(): skip the grace of not_before and batching
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._clients: dict[int, Any] = {}
        self._exited = False  # the exit flush ran: flush each later capture at once
        self._late_deadline: float | None = None  # ...until this time.monotonic()
        self._pool_worker = False
        self._failures_seen = upload_failures()

    # -- caller's thread -------------------------------------------------------------

    @property
    def redirected(self) -> bool:
        return self._redirect is not None

    def redirect(
        self, sink: Callable[[EventSnapshot], None] | None
    ) -> Callable[[EventSnapshot], None] | None:
        """Hand snapshots to ``sink`` on the caller's thread instead of queueing them (for
        ``posthog_errors.testing``); None restores the queue. Returns the previous sink."""
        previous, self._redirect = self._redirect, sink
        return previous

    def submit(self, snapshot: EventSnapshot) -> bool:
        """Queue a snapshot; False (and counted as dropped) when the queue is full.

        Its properties are copied first, bounded (``_bounded.freeze_properties``): a queued
        event holds at most ``QUEUED_BUDGET`` characters of the app's values, whatever they
        referenced, and the app's ``__repr__`` of an odd value runs here, on its thread."""
        _bound(snapshot)
        sink = self._redirect
        if sink is not None:
            sink(snapshot)
            return True
        work = self._queue
        if work is None or self._thread is None or self._pid != os.getpid():
            try:
                work = self._start()
            except RuntimeError:
                # No new thread at interpreter shutdown (Python 3.12+): the first capture
                # of the process came from an atexit handler. Deliver it here, bounded.
                self._deliver_now(snapshot)
                return True
        if work.qsize() >= self.max_queue:
            STATS.add("dropped")
            return False
        work.put(snapshot)
        if self._exited or _shutting_down():
            self._flush_late()
        elif self._pool_worker:
            # Pool.__exit__ terminates its workers with no exit flush: deliver before the
            # task goes on (bounded), or the event dies with the worker.
            self.flush(self.shutdown_timeout)
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every snapshot submitted so far, then flush the clients they used.

        Returns True when both drained within ``timeout`` seconds (None waits for ever) and
        no upload failed since the last flush: none that a client logged, and no event of
        ours that a client's ``on_error`` reported lost (capture v1 also reports events
        PostHog answered ``drop`` for).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        work, thread = self._queue, self._thread
        if (
            work is not None
            and thread is not None
            and self._pid == os.getpid()
            and thread is not threading.current_thread()  # a before_send that flushes
        ):
            marker = _FlushMarker()
            self._hurry = True
            work.put(marker)
            if not self._wait_for(marker, thread, deadline):
                return False
        drained = self._flush_clients(deadline)
        failures = upload_failures()
        no_new_failures = failures == self._failures_seen
        self._failures_seen = failures
        return drained and no_new_failures

    def _wait_for(
        self, marker: _FlushMarker, thread: threading.Thread, deadline: float | None
    ) -> bool:
        """Until the worker reached ``marker``; False at the deadline or if it died."""
        return wait_for_answer(marker.done, thread, deadline)

    # -- the worker --------------------------------------------------------------------

    def _start(self) -> queue.SimpleQueue[EventSnapshot | _FlushMarker]:
        # A re-entrant C lock, taken with no Python code between acquire and release that
        # an asynchronous exception could interrupt; a signal handler that captures while
        # the first capture of the process starts the worker just re-enters it.
        with self._start_lock:
            if self._pid != os.getpid():
                self._init_state()  # a forked child that no at-fork hook re-initialised
            work = self._queue
            if work is not None and self._thread is not None:
                return work
            work = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._run, args=(work,), name="posthog-errors-worker", daemon=True
            )
            thread.start()
            self._pool_worker = _in_pool_worker()
            self._queue, self._thread = work, thread
            if not self._exit_registered:
                self._exit_registered = True
                _register_exit(self._flush_at_exit)
                logging.getLogger("posthog").addFilter(_UPLOADS)
            return work

    def _run(self, work: queue.SimpleQueue[EventSnapshot | _FlushMarker]) -> None:
        _guard.mark_library_thread()
        with _guard.library_code():
            idle = True
            while True:
                try:
                    item = work.get(timeout=_IDLE_WAIT)
                except queue.Empty:
                    idle = True
                    continue
                if isinstance(item, _FlushMarker):
                    item.done.put(True)
                    del item
                    if work.empty():
                        self._hurry = False
                        idle = True
                    continue
                if idle and not self._hurry:
                    # Let a burst finish first: while the app is still capturing, building
                    # payloads here would only compete with it for the GIL.
                    time.sleep(_BATCH_DELAY)
                idle = False
                self._wait_until(item)
                self._deliver(item)
                del item  # hold no delivered event (its properties, its client) while idle
                if work.empty():
                    self._hurry = False
                    idle = True

    def _wait_until(self, snapshot: EventSnapshot) -> None:
        """Hold an event back until its ``not_before`` (a grace for late properties),
        unless a flush is waiting for it or the late properties are settled already (the
        grace is a bound for a loaded machine; the common case ends in milliseconds)."""
        not_before, late = snapshot.not_before, snapshot.late
        while not self._hurry:
            remaining = not_before - time.monotonic()
            if remaining <= 0 or (late is not None and late.settled()):
                return
            time.sleep(min(remaining, _GRACE_POLL))

    def _deliver(self, snapshot: EventSnapshot) -> None:
        try:
            reporter = snapshot.reporter
            client = reporter.deliver(snapshot)
            if client is not None:
                self._clients[id(client)] = client
                _prompt.kick(client)  # sent within about PROMPT_DELAY, once per burst
        except Exception as error:
            STATS.add("dropped")
            _guard.internal_error(error, reraise=False)
        except BaseException:
            # Signals reach only the main thread, so a KeyboardInterrupt or SystemExit here
            # came from hostile user code (a ``__str__``, a ``before_send``). It ends this
            # event, not the worker that every later event depends on.
            STATS.add("dropped")

    def _deliver_now(self, snapshot: EventSnapshot) -> None:
        with _guard.library_code():
            self._deliver(snapshot)
            self._flush_clients(time.monotonic() + self.shutdown_timeout)

    def _flush_clients(self, deadline: float | None) -> bool:
        """Flush every client events were handed to since it last drained.

        A drained client is forgotten (so a process that used many clients, one per tenant,
        holds none of them here for long); one still holding events stays, and makes the
        flush report False until it drains. One whose ``flush()`` raised is forgotten too:
        this flush reports False, later ones do not inherit its failure.
        """
        ok = True
        for key, client in list(self._clients.items()):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                with _guard.library_code():
                    client.flush(remaining)
                lanes = getattr(client, "_lanes", None) or ()
                if any(getattr(lane.queue, "unfinished_tasks", 0) for lane in lanes):
                    ok = False
                else:
                    self._clients.pop(key, None)
            except Exception as error:
                self._clients.pop(key, None)
                _guard.internal_error(error, reraise=False)
                ok = False
        return ok

    def _flush_at_exit(self) -> None:
        if self._pid != os.getpid() or self._thread is None:
            return
        try:
            self.flush(self.shutdown_timeout)
        except Exception as error:
            _guard.internal_error(error, reraise=False)
        finally:
            # Later captures (atexit handlers, ``__del__`` at exit) are flushed one by one,
            # all of them within one more shutdown_timeout.
            self._late_deadline = time.monotonic() + self.shutdown_timeout
            self._exited = True

    def _flush_late(self) -> None:
        deadline = self._late_deadline
        if deadline is None:  # shutting down, and no exit flush ran: the budget starts now
            deadline = self._late_deadline = time.monotonic() + self.shutdown_timeout
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self.flush(remaining)

    def _after_fork_in_child(self) -> None:
        # The parent delivers what it queued; the child starts empty and, lazily, with its
        # own thread. Nothing here can be held by a thread that the fork left behind.
        dropped_clients = self._clients
        self._start_lock = threading.RLock()
        self._init_state()
        del dropped_clients


def wait_for_answer(
    done: queue.SimpleQueue[bool], thread: threading.Thread, deadline: float | None
) -> bool:
    """A worker's answer to a flush marker (on ``done``); False at the deadline (None: no
    deadline) or once ``thread`` died. Polled, so a dead worker is noticed."""
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        step = _FLUSH_POLL if remaining is None else min(_FLUSH_POLL, remaining)
        try:
            return done.get(timeout=step)
        except queue.Empty:
            if not thread.is_alive():
                return False


def _bound(snapshot: EventSnapshot) -> None:
    """Bound what a snapshot keeps of the app's values, on the caller's thread."""
    properties = snapshot.properties
    if properties:
        snapshot.properties = freeze_properties(properties)
    fingerprint = snapshot.fingerprint
    if type(fingerprint) is str and len(fingerprint) > MAX_QUEUED_TEXT:
        snapshot.fingerprint = fingerprint[:MAX_QUEUED_TEXT]  # sent cut to 512 anyway


def _shutting_down() -> bool:
    """The interpreter is exiting: ``threading._shutdown`` has begun (so no exit flush can
    be registered any more), or finalisation has."""
    return bool(getattr(threading, "_SHUTTING_DOWN", False)) or sys.is_finalizing()


def _in_pool_worker() -> bool:
    """Whether this process is a ``multiprocessing.Pool`` worker (ForkPoolWorker-1, ...)."""
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return False
    try:
        return "PoolWorker-" in multiprocessing.current_process().name
    except Exception:
        return False


def _register_exit(callback: Callable[[], None]) -> None:
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(callback)
            return
    except RuntimeError:
        pass  # already shutting down
    atexit.register(callback)


_WORKER = DeliveryWorker()


def worker() -> DeliveryWorker:
    return _WORKER


def _forget_posthog_http_sessions() -> None:
    """Let posthog-python's own at-fork hook build fresh HTTP sessions without closing the
    inherited ones.

    posthog-python replaces its module-level ``requests`` sessions in a forked child
    (``posthog.request.reset_sessions``), closing the old ones first. Closing takes a
    urllib3 lock that the parent's consumer thread may have held at fork time (forked
    mid-upload): the child then hangs for ever inside ``os.fork()``. Our hook is registered
    when posthog_errors is imported, before any client registers its own, so it runs
    first: it puts fresh sessions in place of the inherited ones (dropped, not closed), and
    posthog's hook closes those instead. A posthog version without these attributes is
    left alone.
    """
    request = sys.modules.get("posthog.request")
    if request is None:
        return
    options = getattr(request, "_socket_options", None)
    for name, build in (("_session", "_build_session"), ("_flags_session", "_build_flags_session")):
        builder = getattr(request, build, None)
        if getattr(request, name, None) is not None and callable(builder):
            with contextlib.suppress(Exception):  # posthog's own hook still replaces it
                setattr(request, name, builder(options))


def _after_fork_in_child() -> None:
    _forget_posthog_http_sessions()
    from posthog_errors import _dedupe
    from posthog_errors._snapshot import UUIDS

    UUIDS._after_fork_in_child()
    STATS._after_fork_in_child()
    _guard._after_fork_in_child()
    _dedupe._after_fork_in_child()
    _WORKER._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
