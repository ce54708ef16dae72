"""The benchmark scripts still run (quick mode). Figures are not asserted: speed is
measured in benchmarks/ and recorded in docs/performance.md, never timed in tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["bench_capture.py", "bench_logging.py"])
def test_benchmark_runs_in_quick_mode(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "posthog-python" in result.stdout  # the comparison table was printed
