"""Capture to arrival: how soon an ``$exception`` reaches PostHog, and what a stop costs.

Three figures, against a loopback capture server and a posthog client at its defaults
(``flush_interval`` 5 s, ``flush_at`` 100):

* **latency**: ``capture_exception()`` to the event's arrival at the server, one failure at
  a time (each after the previous arrived); median and maximum. Without the prompt send
  this is the client's ``flush_interval``.
* **burst**: 50 failures from 50 sites at once: how many requests carried them (the prompt
  send coalesces a burst into one flush).
* **stop**: a script that failed just before ``SIGTERM``, against a PostHog that answers
  at once, and one that never answers: seconds from the signal to the process's end
  (bounded by ``shutdown_timeout``, 2 s).

Run: ``python benchmarks/bench_latency.py [--quick]``. Prints the figures; writes nothing.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import posthog

import posthog_errors
from posthog_errors.capture_server import CaptureServer, Fault

STOP_SCRIPT = """
import logging, sys, time, posthog, posthog_errors
client = posthog.Posthog("phc_bench", host=sys.argv[1], max_retries=0, timeout=30)
posthog_errors.install(client)
logging.getLogger("app").error("failed just before the signal")
print("ready", flush=True)
time.sleep(60)
"""


def latency(count: int) -> list[float]:
    with CaptureServer() as server:
        client = posthog.Posthog("phc_bench", host=server.url, max_retries=0)
        with posthog_errors.install(client, logs=False, rate_limit=None):
            seconds = []
            for n in range(count):
                started = time.monotonic()
                try:
                    raise RuntimeError(f"failure {n}")
                except RuntimeError as error:
                    posthog_errors.capture_exception(error)
                server.wait_for_events(n + 1, timeout=30)
                seconds.append(time.monotonic() - started)
        client.shutdown()
    return seconds


def burst(size: int) -> tuple[int, float]:
    with CaptureServer() as server:
        client = posthog.Posthog("phc_bench", host=server.url, max_retries=0)
        with posthog_errors.install(client, logs=False, rate_limit=None):
            started = time.monotonic()
            for n in range(size):
                try:
                    raise RuntimeError(f"burst {n}")
                except RuntimeError as error:
                    posthog_errors.capture_exception(error, fingerprint=f"site-{n}")
            server.wait_for_events(size, timeout=30)
            elapsed = time.monotonic() - started
            requests = server.request_count
        client.shutdown()
    return requests, elapsed


def stop(fault: Fault | None) -> tuple[float, int]:
    with CaptureServer(fault=fault) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(STOP_SCRIPT), server.url],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        child.stdout.readline()
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        status = child.wait(60)
        return time.monotonic() - started, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke test)")
    quick = parser.parse_args().quick
    seconds = latency(5 if quick else 30)
    print(
        f"capture to arrival ({len(seconds)} failures, one at a time): "
        f"median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s"
    )
    requests, elapsed = burst(50)
    print(f"burst of 50 failures: {requests} request(s), all arrived in {elapsed:.3f} s")
    for name, fault in (("answers", None), ("never answers", Fault(hang=True))):
        took, status = stop(fault)
        print(
            f"SIGTERM just after a failure, PostHog {name}: ended in {took:.2f} s (status {status})"
        )


if __name__ == "__main__":
    main()
