"""Delivery: one bounded queue, one background worker, bounded flushes.

The caller's thread only appends a snapshot to a deque and sets an event (about a
microsecond). The worker builds the payload and hands it to the posthog client, whose own
consumer threads do the HTTP. So nothing here ever waits on the network for the app.

Also here: the flush at interpreter exit (registered with ``threading._register_atexit``
so it runs before ``atexit`` handlers, while the posthog client's consumers still accept
work, and without starting a thread, which Python 3.12+ forbids at shutdown), and fork
safety (the child starts with an empty queue, fresh locks and its own worker).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from posthog_errors import _guard
from posthog_errors._snapshot import EventSnapshot
from posthog_errors._stats import STATS

__all__ = ["DEFAULT_QUEUE_SIZE", "DeliveryWorker", "worker"]

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_SHUTDOWN_TIMEOUT = 2.0
_IDLE_WAIT = 1.0
_BATCH_DELAY = 0.02


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


class DeliveryWorker:
    """A bounded queue of snapshots and the thread that delivers them."""

    def __init__(self, max_queue: int = DEFAULT_QUEUE_SIZE) -> None:
        self.max_queue = max_queue
        self.shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT
        self._redirect: Callable[[EventSnapshot], None] | None = None
        self._init_state()
        self._exit_registered = False

    def _init_state(self) -> None:
        self._queue: collections.deque[EventSnapshot] = collections.deque()
        self._wakeup = threading.Event()
        self._hurry = threading.Event()  # set by flush(): skip the grace of not_before
        self._progress = threading.Condition(threading.Lock())
        self._submitted = 0
        self._done = 0
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._clients: dict[int, Any] = {}
        self._stopping = False
        self._failures_seen = _UPLOADS.failures

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
        """Queue a snapshot; False (and counted as dropped) when the queue is full."""
        sink = self._redirect
        if sink is not None:
            sink(snapshot)
            return True
        if len(self._queue) >= self.max_queue or self._stopping:
            STATS.add("dropped")
            return False
        if self._thread is None:
            self._start()
        with self._progress:
            self._submitted += 1
        self._queue.append(snapshot)
        self._wakeup.set()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every snapshot submitted so far, then flush the clients they used.

        Returns True when both drained within ``timeout`` seconds (None waits for ever) and
        no upload failed since the last flush.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._progress:
            target = self._submitted
        self._hurry.set()
        self._wakeup.set()
        with self._progress:
            while self._done < target:
                if self._thread is None or not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(0.05 if remaining is None else min(0.05, remaining))
        drained = self._flush_clients(deadline)
        failures = _UPLOADS.failures
        no_new_failures = failures == self._failures_seen
        self._failures_seen = failures
        return drained and no_new_failures

    # -- the worker --------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="posthog-errors-worker", daemon=True)
            thread.start()
            self._thread = thread
            if not self._exit_registered:
                self._exit_registered = True
                _register_exit(self._flush_at_exit)
                logging.getLogger("posthog").addFilter(_UPLOADS)

    def _run(self) -> None:
        _guard.mark_library_thread()
        with _guard.library_code():
            while True:
                self._wakeup.wait(_IDLE_WAIT)
                self._wakeup.clear()
                if self._queue and not self._hurry.is_set():
                    # Let a burst finish first: while the app is still capturing, building
                    # payloads here would only compete with it for the GIL.
                    self._hurry.wait(_BATCH_DELAY)
                while self._queue:
                    snapshot = self._queue.popleft()
                    self._wait_until(snapshot.not_before)
                    self._deliver(snapshot)
                    with self._progress:
                        self._done += 1
                        self._progress.notify_all()
                if not self._queue:
                    self._hurry.clear()

    def _wait_until(self, not_before: float) -> None:
        """Hold an event back until ``not_before`` (a grace for late properties), unless a
        flush is waiting for it."""
        remaining = not_before - time.monotonic()
        if remaining > 0 and not self._hurry.is_set():
            self._hurry.wait(remaining)

    def _deliver(self, snapshot: EventSnapshot) -> None:
        try:
            reporter = snapshot.reporter
            client = reporter.deliver(snapshot)
            if client is not None:
                self._clients[id(client)] = client
        except Exception as error:
            STATS.add("dropped")
            _guard.internal_error(error, reraise=False)
        except BaseException:
            # Signals reach only the main thread, so a KeyboardInterrupt or SystemExit here
            # came from hostile user code (a ``__str__``, a ``before_send``). It ends this
            # event, not the worker that every later event depends on.
            STATS.add("dropped")

    def _flush_clients(self, deadline: float | None) -> bool:
        """Flush every client events were handed to since it last drained.

        A drained client is forgotten (so a process that used many clients, one per tenant,
        holds none of them here for long); one still holding events stays, and makes the
        flush report False until it drains.
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
            self._stopping = True

    def _after_fork_in_child(self) -> None:
        # The parent delivers what it queued; the child starts empty, with fresh locks
        # (a parent thread may have held one at fork time) and, lazily, its own thread.
        dropped_clients = self._clients
        self._init_state()
        del dropped_clients


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


def _after_fork_in_child() -> None:
    from posthog_errors import _dedupe, _rate_limit
    from posthog_errors._snapshot import UUIDS

    UUIDS._after_fork_in_child()
    STATS._after_fork_in_child()
    _rate_limit._after_fork_in_child()
    _guard._after_fork_in_child()
    _dedupe._after_fork_in_child()
    _WORKER._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
