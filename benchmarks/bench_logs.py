"""What sending a log record to PostHog Logs costs the code that logs it, side by side.

    python benchmarks/bench_logs.py              # print the table
    python benchmarks/bench_logs.py --quick      # a smoke run (the test suite's)
    python benchmarks/bench_logs.py --write-doc  # also rewrite docs/logs.md's cost section

One process, one logger, one record (``logger.info("order %s placed for %d", "a1b2", 42)``),
four ways, measured in interleaved rounds so that drift is shared:

- **NullHandler**: the logger's only handler is a ``logging.NullHandler`` (the baseline);
- **install() without send_logs**: what ``install()`` costs such a record already (it
  becomes an exception step), for the share of the next line that is PostHog Logs';
- **install()**: ``posthog_errors.install(client, send_logs="info")`` on top of it;
- **PostHogHandler**: ``PostHogHandler(send_logs="info")`` added to the logger instead;
- **OpenTelemetry**: opentelemetry-sdk's ``LoggingHandler`` with a ``LoggerProvider`` and a
  ``BatchLogRecordProcessor`` (PostHog's own Python docs' setup), added to the logger
  instead. Its exporter does nothing (opentelemetry-exporter-otlp is not a dependency
  here): the figure is the caller's side only, as ours is.

The figure is the **CPU time of the calling thread** per call (``time.thread_time_ns``),
median of the rounds: what the app's own thread pays, whatever the workers do meanwhile.
Our records really are sent, to a capture server in a child process (the rate cap is
lifted for the run, the queue is drained between rounds, outside the timing), so the
worker's GIL use is part of the wall-clock figure, printed too.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DOC_PATH = REPO_ROOT / "docs" / "logs.md"
DOC_START = "<!-- bench-logs:start -->"
DOC_END = "<!-- bench-logs:end -->"
MU = "\u00b5"

SERVER = """
import sys
from posthog_errors.capture_server import CaptureServer
server = CaptureServer().start()
print(server.url, flush=True)
for line in sys.stdin:
    server.clear()  # any line: forget what arrived (memory stays flat over the run)
    print(len(server.log_requests), flush=True)
server.stop()
"""


class ServerProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""},
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def clear(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("clear\n")
        self.process.stdin.flush()
        self.process.stdout.readline()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


Setup = Callable[[logging.Logger], Callable[[], None]]


def null_handler(logger: logging.Logger) -> Callable[[], None]:
    return lambda: None


def with_install(client: object, send_logs: str | None = "info") -> Setup:
    def setup(logger: logging.Logger) -> Callable[[], None]:
        import posthog_errors

        installation = posthog_errors.install(client, send_logs=send_logs, flush_on_signals=False)
        return installation.uninstall

    return setup


def with_handler(client: object) -> Setup:
    def setup(logger: logging.Logger) -> Callable[[], None]:
        from posthog_errors import PostHogHandler

        handler = PostHogHandler(client=client, send_logs="info")
        logger.addHandler(handler)
        return lambda: logger.removeHandler(handler)

    return setup


def with_opentelemetry(logger: logging.Logger) -> Callable[[], None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LoggingHandler is deprecated since sdk 1.40
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            LogRecordExporter,
            LogRecordExportResult,
        )

        class Discard(LogRecordExporter):  # type: ignore[misc]
            def export(self, batch: object) -> LogRecordExportResult:
                return LogRecordExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return True

        provider = LoggerProvider()
        provider.add_log_record_processor(BatchLogRecordProcessor(Discard()))
        handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)

    def undo() -> None:
        logger.removeHandler(handler)
        provider.shutdown()

    return undo


def measure(logger: logging.Logger, calls: int, drain: Callable[[], object]) -> tuple[float, ...]:
    """(caller CPU ns, wall ns, the other threads' CPU ns) per call over ``calls`` calls; the
    last includes sending them (``drain``, after the timed loop: the workers' share)."""
    info = logger.info
    gc.collect()
    process, cpu, wall = time.process_time_ns(), time.thread_time_ns(), time.perf_counter_ns()
    for index in range(calls):
        info("order %s placed for %d", "a1b2", index)
    caller, elapsed = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    before_drain = time.thread_time_ns()
    drain()
    drain_self = time.thread_time_ns() - before_drain  # this thread waiting: not the workers'
    others = time.process_time_ns() - process - caller - drain_self
    return caller / calls, elapsed / calls, max(0, others) / calls


def run(rounds: int, calls: int, write: bool) -> int:
    import posthog

    import posthog_errors
    from posthog_errors import _logs_delivery

    _logs_delivery.RATE_CAP = 1 << 40  # every record is really sent during the run
    server = ServerProcess()
    client = posthog.Posthog("phc_bench", host=server.url, max_retries=0)
    logger = logging.getLogger("bench.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.NullHandler())
    contenders: list[tuple[str, Setup]] = [
        ("NullHandler only", null_handler),
        ("install() without send_logs (its exception steps)", with_install(client, None)),
        ('install(send_logs="info")', with_install(client)),
        ('PostHogHandler(send_logs="info")', with_handler(client)),
        ("OpenTelemetry LoggingHandler + BatchLogRecordProcessor", with_opentelemetry),
    ]
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name, _ in contenders}

    def drain() -> None:
        posthog_errors.flush(30)
        for handler in logger.handlers:
            handler.flush()
        provider = getattr(logger.handlers[-1], "_logger_provider", None)
        if provider is not None:
            provider.force_flush()

    try:
        for _ in range(rounds):
            for name, setup in contenders:
                undo = setup(logger)
                measure(logger, calls // 10, drain)  # warm up
                results[name].append(measure(logger, calls, drain))
                undo()
                server.clear()
        sent = posthog_errors.stats()["logs_sent"]
        dropped = posthog_errors.stats()["logs_dropped_queue_full"]
    finally:
        client.shutdown()
        server.close()
    baseline = statistics.median(r[0] for r in results["NullHandler only"])
    otel = statistics.median(r[0] for r in results[contenders[-1][0]])
    lines = [
        f"| Contender ({calls:,} calls x {rounds} rounds) | caller CPU per call "
        f"| vs NullHandler | vs OpenTelemetry | wall per call | other threads' CPU per call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, _ in contenders:
        cpu = statistics.median(r[0] for r in results[name])
        wall = statistics.median(r[1] for r in results[name])
        others = statistics.median(r[2] for r in results[name])
        lines.append(
            f"| {name} | {cpu / 1000:.2f} {MU}s | {cpu / baseline:.2f}x | {cpu / otel:.2f}x "
            f"| {wall / 1000:.2f} {MU}s | {others / 1000:.2f} {MU}s |"
        )
    table = "\n".join(lines)
    footer = (
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}; "
        f"{sent:,} records sent to the loopback server, {dropped:,} dropped by the queue bound."
    )
    print(table)
    print()
    print(footer)
    if write:
        text = DOC_PATH.read_text(encoding="utf-8")
        head, _, rest = text.partition(DOC_START)
        _, _, tail = rest.partition(DOC_END)
        if not rest:
            raise SystemExit(f"{DOC_PATH} has no {DOC_START} marker")
        DOC_PATH.write_text(
            f"{head}{DOC_START}\n{table}\n\n{footer}\n{DOC_END}{tail}", encoding="utf-8"
        )
        print(f"wrote {DOC_PATH.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls")
    parser.add_argument("--write-doc", action="store_true", help="rewrite docs/logs.md")
    args = parser.parse_args()
    if args.quick:
        return run(rounds=1, calls=500, write=False)
    return run(rounds=9, calls=5_000, write=args.write_doc)


if __name__ == "__main__":
    sys.exit(main())
