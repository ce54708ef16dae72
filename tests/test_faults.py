"""Fault injection against the loopback capture server: whatever PostHog does, the app's
logging calls return at once, flush and exit stay bounded, and stats() accounts for every
capture. Bounds here are liveness bounds (seconds against a client that would wait far
longer), not performance thresholds."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

import posthog_errors
from posthog_errors import PostHogHandler, _rate_limit
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer, Fault
from tests.conftest import make_client
from tests.scripts import run_script

# Their subject is the capture protocol: CI runs them in both capture modes (noxfile.py).
pytestmark = pytest.mark.capture_protocol

CLIENT_TIMEOUT = 20.0  # what a blocking call would wait; every bound below is far shorter


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


FAULTS = {
    "http-500": Fault(status=500),
    "http-429-retry-after": Fault(status=429, retry_after=30),
    "http-413": Fault(status=413),
    "never-answers": Fault(hang=True),
    "drips-bytes": Fault(drip_seconds=0.5),
}


@pytest.fixture(params=[*FAULTS, "connection-refused"])
def failing_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "connection-refused":
        yield closed_port_url()
        return
    with CaptureServer(fault=FAULTS[request.param]) as server:
        yield server.url


def test_logging_never_blocks_and_every_capture_is_accounted_for(
    failing_url: str, request: pytest.FixtureRequest
) -> None:
    client = make_client_for(failing_url)
    logger = logging.getLogger("test.faults")
    logger.handlers = [PostHogHandler(reporter=Reporter(client))]
    logger.propagate = False
    _rate_limit.configure(None)
    slowest = 0.0
    try:
        for i in range(60):
            try:
                raise ConnectionError(f"upstream failure {i}")
            except ConnectionError:
                started = time.perf_counter()
                logger.exception("call failed")
                slowest = max(slowest, time.perf_counter() - started)
        started = time.monotonic()
        flushed = posthog_errors.flush(1.0)
        flush_took = time.monotonic() - started
    finally:
        # No client.shutdown(): posthog's own shutdown waits out a hanging request or a
        # 30 s Retry-After. Its daemon sender is left to the server's teardown and exit.
        logger.handlers = []
    assert slowest < 1.0  # never the client's 20 s wait
    assert flush_took < 5.0
    assert flushed is False  # nothing went out, and flush says so
    counts = posthog_errors.stats()
    outcomes = ("sent", "deduplicated", "rate_limited", "filtered", "dropped", "rejected",
                "undelivered")  # fmt: skip
    assert counts["captured"] == 60 == sum(counts[name] for name in outcomes)
    if request.node.callspec.params["failing_url"] in (
        "http-500",
        "http-413",
        "connection-refused",
    ):
        # Answered at once: the client reported them lost, so they are no longer "sent".
        assert counts["rejected"] + counts["undelivered"] > 0


def make_client_for(url: str):  # type: ignore[no-untyped-def]
    class Target:
        pass

    target = Target()
    target.url = url  # type: ignore[attr-defined]
    # No retries: a 429's Retry-After would keep the client busy for 30 s after the test.
    return make_client(target, timeout=CLIENT_TIMEOUT, max_retries=0)  # type: ignore[arg-type]


SOAK = """
import logging, resource, time
from posthog_errors import _rate_limit
client = posthog.Posthog("phc_test", host=sys.argv[1], timeout=20, max_retries=0,
                         max_queue_size=1000, flush_interval=0.01)
posthog_errors.install(client, rate_limit=None, shutdown_timeout=1.0, excepthooks=False)
log = logging.getLogger("soak")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
for i in range(int(sys.argv[2])):
    try:
        {"a": 1}[f"missing-{i % 5}"]
    except KeyError:
        log.exception("lookup failed")
took = time.monotonic() - started
growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print("growth_kib", growth_kib, "took", took, "stats", posthog_errors.stats(), flush=True)
"""


def test_a_soak_while_posthog_is_down_stays_within_its_memory_budget() -> None:
    count = 10_000
    started = time.monotonic()
    result = run_script(SOAK, closed_port_url(), extra_args=[str(count)], timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    words = result.stdout.split()
    growth_mib = int(words[1]) / 1024
    stats = eval(result.stdout.split("stats", 1)[1])
    assert stats["captured"] == count
    assert growth_mib < 150, growth_mib  # docs/reliability.md states the budget
    assert elapsed < 60  # exit is bounded although nothing could be sent
