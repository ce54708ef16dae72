"""A real Redis server on 127.0.0.1 for the job-queue tests (Celery, RQ).

Debian's ``redis-server`` (``.ci/run`` installs it on a fresh machine). Each test module that
needs one gets its own server, on a free port, with no persistence, stopped (bounded) at the
end. Without the binary the tests that need it fail with a message saying what to install:
CI must not skip them quietly.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

__all__ = ["redis_url"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a Redis server running for this test module."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    port = _free_port()
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    arguments += ["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
    process = subprocess.Popen(
        [binary, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {process.stderr!r}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
