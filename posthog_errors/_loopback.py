"""A threaded HTTP server on 127.0.0.1 that always stops promptly.

The base of the local capture server (and of the test suite's Sentry envelope server):
bound in ``__init__`` so its port is known before it starts, silent on stderr, and with a
``stop()`` bounded to a few seconds even while handlers hang or idle connections stay open.
Subclasses say which handler class serves requests and record what arrives under
``self._cond``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, TypeVar, cast

__all__ = ["LoopbackServer", "QuietHandler"]

_STOP_BOUND_SECONDS = 3.0
Server = TypeVar("Server", bound="LoopbackServer")


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that prints nothing and lets ``stop()`` wake it."""

    timeout = 10  # an idle connection cannot pin a handler thread forever

    @property
    def owner(self) -> LoopbackServer:
        return cast(_Httpd, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the demo, the CLI and the tests own stderr."""

    def handle(self) -> None:
        self.owner._track(self.connection, alive=True)
        try:
            super().handle()
        finally:
            self.owner._track(self.connection, alive=False)


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # stop() joins handler threads itself, with a time bound

    def __init__(self, owner: LoopbackServer, port: int, handler: type[QuietHandler]) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-answer are expected here; never print tracebacks."""


class LoopbackServer:
    """Serves ``handler_class`` on 127.0.0.1 from a daemon thread; see the module docstring."""

    handler_class: ClassVar[type[QuietHandler]] = QuietHandler

    def __init__(self, port: int = 0) -> None:
        self._cond = threading.Condition()
        self._stopping = threading.Event()  # set by stop(): hanging handlers wait on it
        self._handlers: dict[threading.Thread, socket.socket] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._httpd = _Httpd(self, port, self.handler_class)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self: Server) -> Server:
        """Serve on a daemon thread (idempotent); a stopped server cannot restart."""
        if self._stopped:
            raise RuntimeError(f"{type(self).__name__} was stopped; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                args=(0.05,),
                name=f"{type(self).__name__}:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging handlers, close the socket and join threads (bounded)."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        deadline = time.monotonic() + _STOP_BOUND_SECONDS
        with self._cond:
            handlers = dict(self._handlers)
        for connection in handlers.values():  # wakes handlers blocked reading idle sockets
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in [*handlers, *([self._thread] if self._thread else [])]:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self: Server) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, connection: socket.socket, *, alive: bool) -> None:
        with self._cond:
            if alive:
                self._handlers[threading.current_thread()] = connection
            else:
                self._handlers.pop(threading.current_thread(), None)
