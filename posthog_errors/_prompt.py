"""Prompt send: an ``$exception`` handed to a posthog client leaves within about 0.3 s.

The posthog client batches: its consumer uploads when ``flush_at`` events (100) are queued
or ``flush_interval`` (5 s in 7.91) has passed. Failures are rare and worth sending at
once, and a process that is stopped a few seconds after one (a deploy, a scale-down) may
never run an exit handler: an event left waiting for the interval is lost with it.

So after the worker hands an event to a client it *kicks* that client here. One thread of
ours, the flusher, waits ``PROMPT_DELAY`` for the rest of the burst, then calls the client's
own public ``flush()``, once for the whole burst: the client's consumer uploads what is
queued as one batch (the client's own events included). The caller's thread never waits:
only the worker kicks, and only the flusher waits on the network, each flush bounded by
``PROMPT_FLUSH_BOUND``.

The flusher also runs the flush a signal handler asks for (``flush_for_signal``): a
handler runs between two bytecodes of the main thread, which may hold a lock the flush
needs (the client's queue lock, if the app was calling ``posthog.capture``). The handler
only puts a request on a ``queue.SimpleQueue`` and waits for the answer on another, both C
calls that take no lock Python code holds, with a timeout: the flush waits on the
flusher's thread, never on the interrupted one.

No thread is started during interpreter shutdown (Python 3.12+ forbids it), nor in a
signal handler. A forked child starts its own flusher lazily.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

from posthog_errors import _guard

__all__ = ["PROMPT_DELAY", "PROMPT_FLUSH_BOUND", "flush_for_signal", "flusher", "kick"]

PROMPT_DELAY = 0.3  # seconds a burst has to gather before its one flush
PROMPT_FLUSH_BOUND = 10.0  # at most this long per client flush, against a slow PostHog
_IDLE_WAIT = 5.0


class _Wake:
    """Put on the flusher's queue by a kick: a client is pending."""

    __slots__ = ()


class _FlushRequest:
    """Put on the flusher's queue by a signal handler; answered on ``done``."""

    __slots__ = ("done", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.done: queue.SimpleQueue[bool] = queue.SimpleQueue()


_WAKE = _Wake()


class PromptFlusher:
    """The thread that flushes kicked clients shortly after each burst."""

    def __init__(self) -> None:
        self._init_state()

    def _init_state(self) -> None:
        # Made lazily, with the thread: under gevent the queue must be gevent's.
        self._queue: queue.SimpleQueue[_Wake | _FlushRequest] | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._pending: dict[int, Any] = {}

    @property
    def running(self) -> bool:
        """The flusher thread of this process is alive."""
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def kick(self, client: Any) -> None:
        """Flush ``client`` soon. Called by the worker after handing it an event."""
        if self._pid != os.getpid():
            self._init_state()  # a forked child: the parent's thread is not here
        work = self._queue
        if work is None or not self.running:
            if _shutting_down():
                return  # the exit flush sends it; no thread may start now
            work = self._start()
            if work is None:
                return
        key = id(client)
        if key in self._pending:
            # Already pending: the flusher pops it before flushing, and flushes after the
            # pop, so the event just handed over is in the queue that flush drains.
            return
        self._pending[key] = client
        work.put(_WAKE)

    def request_flush(self, timeout: float) -> bool | None:
        """Ask the flusher to run ``worker().flush(timeout)``; wait for it within
        ``timeout`` (plus a little). None when there is no flusher to ask.

        Safe in a signal handler: two ``SimpleQueue`` calls, no lock Python code holds.
        """
        work = self._queue
        if work is None or not self.running:
            return None
        request = _FlushRequest(timeout)
        work.put(request)
        try:
            return request.done.get(timeout=timeout + 0.25)
        except queue.Empty:
            return False

    def _start(self) -> queue.SimpleQueue[_Wake | _FlushRequest] | None:
        work: queue.SimpleQueue[_Wake | _FlushRequest] = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._run, args=(work,), name="posthog-errors-flusher", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            return None  # interpreter shutdown began between the check and the start
        self._queue, self._thread = work, thread
        return work

    def _run(self, work: queue.SimpleQueue[_Wake | _FlushRequest]) -> None:
        _guard.mark_library_thread()
        with _guard.library_code():
            while True:
                try:
                    item = work.get(timeout=_IDLE_WAIT)
                except queue.Empty:
                    continue
                if isinstance(item, _FlushRequest):
                    self._serve(item)
                    continue
                self._gather(work)
                self._flush_pending()

    def _gather(self, work: queue.SimpleQueue[_Wake | _FlushRequest]) -> None:
        """Let the burst finish: ``PROMPT_DELAY`` from its first event. A flush requested
        meanwhile is served at once (it flushes every client anyway)."""
        deadline = time.monotonic() + PROMPT_DELAY
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                item = work.get(timeout=remaining)
            except queue.Empty:
                return
            if isinstance(item, _FlushRequest):
                self._serve(item)
                return

    def _flush_pending(self) -> None:
        pending = self._pending
        for key in list(pending):
            client = pending.pop(key, None)
            if client is None:
                continue
            flush = getattr(client, "flush", None)
            if not callable(flush):
                continue
            try:
                flush(PROMPT_FLUSH_BOUND)
            except Exception as error:
                _guard.internal_error(error, reraise=False)
            del client, flush

    def _serve(self, request: _FlushRequest) -> None:
        from posthog_errors._delivery import worker

        ok = False
        try:
            self._pending.clear()  # the full flush below covers every client
            ok = worker().flush(request.timeout)
        except Exception as error:
            _guard.internal_error(error, reraise=False)
        finally:
            request.done.put(ok)


def _shutting_down() -> bool:
    import sys

    return bool(getattr(threading, "_SHUTTING_DOWN", False)) or sys.is_finalizing()


_FLUSHER = PromptFlusher()


def flusher() -> PromptFlusher:
    return _FLUSHER


def kick(client: Any) -> None:
    """Have ``client`` flushed about ``PROMPT_DELAY`` from now (worker thread only)."""
    try:
        _FLUSHER.kick(client)
    except Exception as error:
        _guard.internal_error(error, reraise=False)


def flush_for_signal(timeout: float) -> bool:
    """Everything captured so far, flushed within ``timeout``, for a signal handler.

    The worker may not have delivered anything yet (so no flusher runs): then it is given
    the time to reach what is queued, through a marker on its own queue (``SimpleQueue``
    calls only); its deliveries kick, which starts the flusher, which then flushes.
    """
    from posthog_errors._delivery import _FlushMarker, worker

    deadline = time.monotonic() + max(0.0, timeout)
    delivery = worker()
    work, thread = delivery._queue, delivery._thread
    if work is None or thread is None or delivery._pid != os.getpid():
        return True  # nothing was ever captured in this process
    if not _FLUSHER.running:
        marker = _FlushMarker()
        delivery._hurry = True
        work.put(marker)
        if not delivery._wait_for(marker, thread, deadline):
            return False
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    answer = _FLUSHER.request_flush(remaining)
    return True if answer is None else answer  # None: nothing was delivered, nothing to send
