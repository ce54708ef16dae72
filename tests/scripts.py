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
    body: str, url: str, *, timeout: float = 60, extra_args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + body as ``python -c``; the server URL is ``sys.argv[1]``."""
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), url, *(extra_args or [])],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
