"""benchmarks/bench_logs.py still runs (quick mode). Its figures are not asserted: speed is
measured by the benchmark and written into docs/logs.md, never timed in tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_logs_benchmark_runs_in_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_logs.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OpenTelemetry LoggingHandler" in result.stdout  # the comparison table
    assert "records sent to the loopback server" in result.stdout
