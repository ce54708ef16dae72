"""Fork safety: parent and child each deliver their own events, once, without deadlock."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from posthog_errors.capture_server import CaptureServer

FORKS = 25

SCRIPT = """
import os, sys, threading
import posthog, posthog_errors
from posthog_errors import _rate_limit, _reporter
_rate_limit.configure(None)  # one failure site, many events: only fork behaviour is tested

release = threading.Event()
def hold(props):
    release.wait(10)   # keeps the parent's events queued while it forks
    return props

client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01, max_retries=0)
_reporter.set_default_reporter(_reporter.Reporter(client, before_send=hold))
children = []
for n in range(int(sys.argv[2])):
    posthog_errors.capture_exception(ValueError(f"parent-{n}"))
    pid = os.fork()
    if pid == 0:
        release.set()  # the child's own worker must not wait for the parent's event
        posthog_errors.capture_exception(ValueError(f"child-{n}"))
        ok = posthog_errors.flush(10)
        os._exit(0 if ok else 3)
    children.append(pid)
release.set()
codes = [os.waitpid(pid, 0)[1] for pid in children]
print("children", codes, "flushed", posthog_errors.flush(10), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_parent_and_child_each_deliver_their_own_events_once() -> None:
    with CaptureServer() as server:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, server.url, str(FORKS)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert f"children {[0] * FORKS} flushed True" in result.stdout
        events = server.wait_for_events(2 * FORKS, timeout=10)
    values = collections.Counter(e["properties"]["$exception_list"][0]["value"] for e in events)
    expected = {f"parent-{n}" for n in range(FORKS)} | {f"child-{n}" for n in range(FORKS)}
    assert set(values) == expected
    assert all(count == 1 for count in values.values()), values
    assert len({e["uuid"] for e in events}) == 2 * FORKS
