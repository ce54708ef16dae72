"""Run a small Python program in a child process, its posthog client aimed at a server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import sys, posthog, posthog_errors
client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01, max_retries=0)
"""


def run_script(
    body: str,
    url: str,
    *,
    timeout: float = 60,
    extra_args: list[str] | None = None,
    hang_after: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + body as ``python -c``; the server URL is ``sys.argv[1]``.

    ``hang_after``: seconds after which the child dumps every thread's stack to stderr and
    exits (status 1), so that a hang fails the test with the place it hung.
    """
    watchdog = ""
    if hang_after is not None:
        watchdog = (
            f"import faulthandler; faulthandler.dump_traceback_later({hang_after}, exit=True)\n"
        )
    return subprocess.run(
        [
            sys.executable,
            "-c",
            watchdog + PRELUDE + textwrap.dedent(body),
            url,
            *(extra_args or []),
        ],
        capture_output=True,
        text=True,
        timeout=timeout if hang_after is None else max(timeout, hang_after + 30),
    )
