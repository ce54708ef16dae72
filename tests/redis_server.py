"""A real Redis server on 127.0.0.1 for the job-queue tests (Celery, RQ).

Debian's ``redis-server`` (``.ci/run`` installs it on a fresh machine). Each test module that
needs one gets its own server (per pytest-xdist worker too), on a free port, with no
persistence, stopped (bounded) at the end. The server that answers is checked to be ours
(its ``process_id``): two xdist workers that drew the same free port never share one.

Without the binary, the tests that need it skip with a message saying what to install; in
CI (``CI`` set, as the CI runner does) they fail instead: CI must not skip them quietly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["redis_url"]

MISSING = "redis-server is not installed: apt-get install redis-server (.ci/run does)"
START_TIMEOUT = 10.0
ATTEMPTS = 3  # a port taken between the probe and the server's bind: another port


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_pid(port: int) -> int | None:
    """The ``process_id`` of the Redis server answering on ``port``, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _start(binary: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A server of ours answering on a free port, or RuntimeError with its log."""
    problems = []
    for _ in range(ATTEMPTS):
        port = _free_port()
        arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        arguments += ["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        with log.open("ab") as output:
            process = subprocess.Popen(
                [binary, *arguments], stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while _server_pid(port) != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        else:
            return process, port
        _stop(process)
        problems.append(f"port {port}: exit code {process.returncode}")
    raise RuntimeError(f"redis-server did not start ({problems}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a Redis server running for this test module."""
    binary = shutil.which("redis-server")
    if binary is None:
        if _in_ci():
            pytest.fail(f"{MISSING}; CI is set, so this fails instead of skipping")
        pytest.skip(MISSING)
    log = tmp_path_factory.mktemp("redis") / "redis-server.log"
    process, port = _start(binary, log)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)
