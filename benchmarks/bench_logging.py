"""What logging through ``PostHogHandler`` costs the calling thread, against the peers.

Usage::

    python benchmarks/bench_logging.py              # full run, about two minutes
    python benchmarks/bench_logging.py --quick      # smoke run, a few seconds
    python benchmarks/bench_logging.py --write-doc  # also rewrite docs/performance.md

Two scenarios, every figure a ratio against a peer measured in the same run:

1. **A ``logger.info`` below the allow list.** ``logger.info("user %s logged in", 42)`` on a
   logger at DEBUG (so the record is made), each variant taking turns with a
   ``logging.NullHandler`` baseline in its own process. ``PostHogHandler(steps=False)``
   (default ``levels=error,fatal``: its level is ERROR, it is never called) and
   ``PostHogHandler()`` with exception steps on, as they come (its level is INFO and the
   record becomes a step of the context's trail); ``PostHogHandler(levels="debug,error",
   steps=False)`` (an allow list with a gap at INFO, so the record reaches ``handle()`` and
   is refused there). ``install()``'s chained ``Logger.callHandlers`` over a
   ``NullHandler``, one process each (install() hooks once per process): with
   ``steps=False`` (one level comparison), and as it comes, steps on (the record becomes a
   step), plus a logger at WARNING whose level filters the record out before it is made.
   sentry-sdk's ``LoggingIntegration`` over a ``NullHandler``, set up as 2.x's default on
   every line (breadcrumbs from INFO, events from ERROR; on 3.x, where it is off by default
   and sends records to Sentry Logs, without Sentry Logs): it makes every INFO record a
   breadcrumb, so it is the row to compare a step with. The steps loops run far
   past the trail's bound, so they include its segment turnover. Targets from the issues: at
   most 1.05x the same call without posthog-errors when the record is not kept, at most
   1.10x when it becomes a step. Then the memory a context's trail holds (tracemalloc, at
   most ``2 * MAX_STEPS`` nodes, one LogRecord each) against sentry-sdk's full buffer of
   breadcrumbs.
2. **The caller-thread cost of ``logger.exception``** for a ``ValueError`` raised 30 frames
   deep, always at the same site: through ``PostHogHandler``, through sentry-sdk's logging
   integration, and ``Posthog.capture_exception`` of posthog-python.

Every library runs in its own child process (sentry-sdk patches ``logging`` for the whole
process), against a PostHog capture server and a Sentry envelope endpoint on 127.0.0.1 that
run in one more child process, so their work is charged to no library. No network is used
beyond 127.0.0.1. The exit status is 1 when the run itself is broken (a child failed, an
event was dropped or not received), never because of the figures: speed is measured here,
not asserted.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import gc
import importlib.metadata
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

# This script's directory is sys.path[0] when it is run as `python benchmarks/bench_logging.py`
# (and so in the children run_child() starts, which run this same file).
from _shared import (
    DOC_PATH,
    MU,
    LoopbackServerProcess,
    Sample,
    Timing,
    argument_parser,
    batch_sizes,
    child_env,
    doc_block,
    exit_status,
    gc_paused,
    import_generated_module,
    info_line,
    machine_info,
    measured_on,
    progress,
    raising_chain,
    render_table,
    rotated,
    traceback_depth,
    use_checkout,
    write_marked_block,
)

use_checkout()  # runnable from a checkout without installing

SCRIPT = Path(__file__).resolve()
DOC_START = "<!-- bench-logging:start -->"
DOC_END = "<!-- bench-logging:end -->"
DOC_HEADING = "## Logging overhead"  # written above the markers only when they are absent
API_KEY = "phc_benchmark_logging"
DEPTH = 30  # frames in every logged exception's traceback
# At most these ratios to the same call with only a NullHandler, from the issues; reported,
# not asserted: a record posthog-errors does not keep, and one that becomes an exception step.
FILTERED_TARGET = 1.05
STEP_TARGET = 1.10
INFO_MESSAGE = "user %s logged in"
ERROR_MESSAGE = "request %s failed"


# -- configuration -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    filtered_reps: int  # timed loops per variant (variants take turns, in rotating order)
    filtered_loop: int  # logger.info calls per timed loop
    exc_reps: int  # repetitions of the logger.exception scenario
    exc_per_rep: int  # timed calls per repetition
    batch: int  # calls between two flushes of the background threads
    warmup: int  # untimed calls before anything is timed


FULL = Config(
    filtered_reps=60,
    filtered_loop=5_000,
    exc_reps=9,
    exc_per_rep=200,
    batch=10,
    warmup=40,
)
QUICK = Config(
    filtered_reps=20,
    filtered_loop=2_000,
    exc_reps=2,
    exc_per_rep=30,
    batch=10,
    warmup=10,
)


# -- the servers, in a child process -------------------------------------------------

_SERVER_CODE = r"""
import gzip, json, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from posthog_errors.capture_server import CaptureServer

sentry_events = 0
sentry_posts = 0
cond = threading.Condition()


def count_events(body, encoding):
    try:
        if encoding == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
    except (OSError, EOFError, zlib.error):
        return 0
    count = 0
    for line in body.split(b"\n"):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("type") == "event":
            count += 1
    return count


class Envelopes(BaseHTTPRequestHandler):
    # Answers every Sentry envelope with 200 and counts the events in it.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive: no 40 ms delayed-ACK stall per answer

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        global sentry_events, sentry_posts
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        events = count_events(body, self.headers.get("Content-Encoding", "").strip().lower())
        with cond:
            sentry_posts += 1
            sentry_events += events
            cond.notify_all()
        data = b'{"id":"0"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Httpd(ThreadingHTTPServer):
    daemon_threads = True


sentry = Httpd(("127.0.0.1", 0), Envelopes)
threading.Thread(target=sentry.serve_forever, args=(0.05,), daemon=True).start()
with CaptureServer() as server:
    print(server.url, f"http://public@127.0.0.1:{sentry.server_address[1]}/1", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        reply = {}
        if command == "wait":
            posthog_n, sentry_n, timeout = int(args[0]), int(args[1]), float(args[2])
            posthog = len(server.wait_for_events(posthog_n, timeout=timeout))
            with cond:
                cond.wait_for(lambda: sentry_events >= sentry_n, timeout)
                reply = {"posthog": posthog, "sentry": sentry_events, "posts": sentry_posts}
        elif command == "clear":
            server.clear()
            with cond:
                sentry_events = sentry_posts = 0
        elif command == "quit":
            break
        print(json.dumps(reply), flush=True)
sentry.shutdown()
"""


class ServerProcess(LoopbackServerProcess):
    """The PostHog capture server and the Sentry endpoint, driven over stdin/stdout."""

    def __init__(self) -> None:
        super().__init__(_SERVER_CODE, "the server process")
        first = self._readline().split()
        if len(first) != 2 or not first[0].startswith("http://127.0.0.1:"):
            raise SystemExit(f"the servers did not start: {first!r}")
        self.posthog_url, self.sentry_dsn = first

    def wait(
        self, posthog_events: int, sentry_events: int, timeout: float = 30.0
    ) -> dict[str, int]:
        """Block until that many events arrived (or the timeout); the counts received."""
        counts: dict[str, int] = self._command("wait", posthog_events, sentry_events, timeout)
        return counts


# -- children: shared helpers ----------------------------------------------------------


def _quiet_library_loggers() -> None:
    # posthog and sentry-sdk log their own retries and warnings; the table owns stdout
    # and nothing here should reach stderr through logging's last resort.
    for name in ("posthog", "sentry_sdk", "sentry_sdk.errors", "backoff", "urllib3"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False


def _bench_logger(name: str, handler: logging.Handler) -> logging.Logger:
    """A logger at DEBUG (every record is made) with exactly one handler, not propagating."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    return logger


# -- scenario 1: a filtered-out record -------------------------------------------------


@dataclasses.dataclass
class Variant:
    name: str
    logger: logging.Logger
    activate: Callable[[], None] = lambda: None  # run before each of its timed loops


def _info_loop(logger: logging.Logger, n: int) -> float:
    """ns per ``logger.info`` call over ``n`` calls, garbage collector paused (as timeit)."""
    info = logger.info
    calls = range(n)
    clock = time.perf_counter_ns
    with gc_paused():
        start = clock()
        for _ in calls:
            info(INFO_MESSAGE, 42)
        elapsed = clock() - start
    return elapsed / n


def measure_filtered(variants: list[Variant], config: Config) -> dict[str, list[float]]:
    """Timed loops of every variant, taking turns in a rotating order: ns/call per loop."""
    for variant in variants:  # warm up: caches of logging and of the handlers
        variant.activate()
        _info_loop(variant.logger, max(200, config.filtered_loop // 5))
    results: dict[str, list[float]] = {v.name: [] for v in variants}
    for rep in range(config.filtered_reps):
        for variant in rotated(variants, rep):
            variant.activate()
            results[variant.name].append(_info_loop(variant.logger, config.filtered_loop))
    return results


def child_filtered(config: Config, posthog_url: str, sentry_dsn: str) -> dict[str, Any]:
    """NullHandler and PostHogHandler with steps off (the INFO record is below its level),
    with steps on (the record becomes a step) and with an allow-list gap, interleaved."""
    import posthog

    from posthog_errors import PostHogHandler, _steps

    _quiet_library_loggers()
    client = posthog.Posthog(API_KEY, host=posthog_url)
    variants = [
        Variant("null", _bench_logger("bench.null", logging.NullHandler())),
        Variant(
            "posthog_off",
            _bench_logger("bench.posthog.off", PostHogHandler(client=client, steps=False)),
        ),
        Variant("posthog_step", _bench_logger("bench.posthog", PostHogHandler(client=client))),
        Variant(
            "posthog_gap",
            _bench_logger(
                "bench.gap", PostHogHandler(client=client, levels="debug,error", steps=False)
            ),
        ),
    ]
    results = measure_filtered(variants, config)
    client.shutdown()
    return {"loops": results, "trail_nodes": _trail_nodes(_steps.current())}


def _trail_nodes(trail: Any) -> int:
    """Nodes of a trail (``_steps.current()``), counted: the steps rows must have made
    steps, the steps-off rows none."""
    from posthog_errors import _steps

    return len(_steps.nodes(trail))


CallHandlers = Callable[[logging.Logger, logging.LogRecord], None]
_T = TypeVar("_T")


def _use_call_handlers(method: CallHandlers) -> Callable[[], None]:
    """A Variant.activate that puts ``method`` in place as ``Logger.callHandlers``: a patch
    of logging (sentry-sdk's, install()'s) and the original take turns in one process."""

    def activate() -> None:
        logging.Logger.callHandlers = method  # type: ignore[method-assign,assignment]

    return activate


def _install(posthog_url: str, steps: bool) -> tuple[Any, CallHandlers, CallHandlers]:
    """install() with only its logging hook: (the posthog client, the original
    ``Logger.callHandlers``, install()'s chained one)."""
    import posthog

    import posthog_errors

    _quiet_library_loggers()
    client = posthog.Posthog(API_KEY, host=posthog_url)
    original = logging.Logger.callHandlers
    posthog_errors.install(client, excepthooks=False, asyncio=False, unraisable=False, steps=steps)
    hooked = logging.Logger.callHandlers
    if hooked is original:
        raise SystemExit("install() did not chain logging.Logger.callHandlers")
    return client, original, hooked


def child_filtered_install(config: Config, posthog_url: str, sentry_dsn: str) -> dict[str, Any]:
    """``install(steps=False)``'s chained ``Logger.callHandlers`` against the original, in
    one process: an INFO record below the allow list (error, fatal), logger at DEBUG. The
    hook's cost is its level comparison. (install() hooks once per process and uninstall()
    only switches the hook off: steps on and off need a process each.)"""
    import posthog_errors
    from posthog_errors import _steps

    client, original, hooked = _install(posthog_url, steps=False)
    logger = _bench_logger("bench.install", logging.NullHandler())
    variants = [
        Variant("null", logger, _use_call_handlers(original)),
        Variant("install_off", logger, _use_call_handlers(hooked)),
    ]
    try:
        results = measure_filtered(variants, config)
    finally:
        logging.Logger.callHandlers = hooked  # type: ignore[method-assign,assignment]
    nodes = _trail_nodes(_steps.current())
    posthog_errors.uninstall()
    client.shutdown()
    return {"loops": results, "trail_nodes": nodes}


def child_filtered_install_steps(
    config: Config, posthog_url: str, sentry_dsn: str
) -> dict[str, Any]:
    """``install()`` as it comes (steps on) against the original ``Logger.callHandlers``, in
    one process: an INFO record that becomes a step of the trail (logger at DEBUG), and a
    record the logger's own level filters out (logger at WARNING: no record is made). The
    steps loops run long past the trail's bound, so their figure includes its segment turnover.
    Then the memory a context's trail holds, with tracemalloc."""
    import posthog_errors
    from posthog_errors import _steps

    client, original, hooked = _install(posthog_url, steps=True)
    below = _bench_logger("bench.install", logging.NullHandler())
    above = _bench_logger("bench.install.warning", logging.NullHandler())
    above.setLevel(logging.WARNING)
    variants = [
        Variant("null", below, _use_call_handlers(original)),
        Variant("install_step", below, _use_call_handlers(hooked)),
        Variant("level_null", above, _use_call_handlers(original)),
        Variant("level_install", above, _use_call_handlers(hooked)),
    ]
    try:
        results = measure_filtered(variants, config)
    finally:
        logging.Logger.callHandlers = hooked  # type: ignore[method-assign,assignment]
    nodes = _trail_nodes(_steps.current())
    memory = measure_trail_memory(below)
    posthog_errors.uninstall()
    client.shutdown()
    return {"loops": results, "trail_nodes": nodes, "memory": memory}


def _held_bytes(run: Callable[[], _T]) -> tuple[int, _T]:
    """Bytes still allocated after ``run()`` (what it keeps alive), by tracemalloc; and
    what ``run()`` returned."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held, result


def measure_trail_memory(logger: logging.Logger) -> dict[str, Any]:
    """What one context's trail holds, through install()'s hook: tracemalloc growth for
    ``2 * MAX_STEPS`` INFO records logged in a fresh context (the most a trail holds), then
    for a long run of records in one context (bounded by its two segments), and the
    ``sys.getsizeof`` parts of one node."""
    from posthog_errors import _steps

    full = 2 * _steps.MAX_STEPS
    long_run = 50 * _steps.MAX_STEPS

    def fill(n: int) -> Any:
        for _ in range(n):
            logger.info(INFO_MESSAGE, 42)
        return _steps.current()

    contextvars.Context().run(fill, full + 1)  # warm up: logging's caches, a segment turnover
    context = contextvars.Context()
    held, head = _held_bytes(lambda: context.run(fill, full))
    nodes = _trail_nodes(head)
    held_long, head_long = _held_bytes(lambda: contextvars.Context().run(fill, long_run))
    parts = {"node": sys.getsizeof(head[0])}  # one flat tuple: the links and the step
    return {
        "max_steps": _steps.MAX_STEPS,
        "records": full,
        "nodes": nodes,
        "bytes": held,
        "per_node": held / nodes,
        "long_records": long_run,
        "long_nodes": _trail_nodes(head_long),
        "long_bytes": held_long,
        "getsizeof": parts,
    }


def sentry_logging_integration() -> Any:
    """sentry-sdk's ``LoggingIntegration`` doing the same work on every release line: 2.x's
    default (breadcrumbs from INFO, events from ERROR). 3.x turns it off by default, and its
    ``LoggingIntegration()`` sends records to Sentry Logs and makes no events; its options
    are asked for by name, so that 3.x gets breadcrumbs and events and no Sentry Logs."""
    import inspect

    from sentry_sdk.integrations.logging import LoggingIntegration

    options = inspect.signature(LoggingIntegration).parameters
    if "breadcrumb_level" in options:  # 3.x: level is Sentry Logs', breadcrumbs their own
        return LoggingIntegration(
            level=None, breadcrumb_level=logging.INFO, event_level=logging.ERROR
        )
    return LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)  # 2.x: breadcrumbs


def child_filtered_sentry(config: Config, posthog_url: str, sentry_dsn: str) -> dict[str, Any]:
    """sentry-sdk's patched ``Logger.callHandlers`` over a NullHandler, against the same
    logger with the original ``callHandlers`` put back, taking turns in one process: each
    INFO record becomes a breadcrumb. Then the memory of a full breadcrumb buffer."""
    import sentry_sdk

    _quiet_library_loggers()
    original = logging.Logger.callHandlers
    sentry_sdk.init(
        dsn=sentry_dsn,
        default_integrations=True,
        integrations=[sentry_logging_integration()],  # patches logging
        sample_rate=1.0,
        release="bench",  # otherwise sentry-sdk runs `git rev-parse` to guess one
    )
    patched = logging.Logger.callHandlers
    if patched is original:
        raise SystemExit("sentry_sdk.init() did not patch logging.Logger.callHandlers")

    logger = _bench_logger("bench.sentry", logging.NullHandler())
    variants = [
        Variant("null", logger, _use_call_handlers(original)),
        Variant("sentry", logger, _use_call_handlers(patched)),
    ]
    try:
        results = measure_filtered(variants, config)
    finally:
        logging.Logger.callHandlers = patched  # type: ignore[method-assign]
    memory = measure_breadcrumb_memory(logger)
    sentry_sdk.flush(timeout=10)
    return {"loops": results, "memory": memory}


def measure_breadcrumb_memory(logger: logging.Logger) -> dict[str, Any]:
    """tracemalloc growth for a full buffer of breadcrumbs (``max_breadcrumbs``, 100 by
    default) from INFO records, in sentry-sdk's isolation scope."""
    import sentry_sdk

    scope = sentry_sdk.Scope.get_isolation_scope()  # sentry-sdk 2.0 has no top-level one
    limit = int(sentry_sdk.get_client().options["max_breadcrumbs"])

    def fill() -> int:
        for _ in range(limit):
            logger.info(INFO_MESSAGE, 42)
        return len(scope._breadcrumbs)

    scope.clear_breadcrumbs()
    held, kept = _held_bytes(fill)
    return {"max": limit, "kept": kept, "bytes": held, "per_breadcrumb": held / max(kept, 1)}


# -- scenario 2: logger.exception on the caller's thread ----------------------------------


def _site_source() -> str:
    """A module whose ``trigger(callback)`` raises a ValueError 30 frames deep and calls
    ``callback(error)`` inside its ``except`` block, where ``logger.exception`` belongs."""
    lines = [
        '"""A failure site, generated by benchmarks/bench_logging.py."""',
        "",
        "",
        "def trigger(callback):",
        "    try:",
        "        f1(0)",
        "    except ValueError as error:",
        "        return callback(error)",
        '    raise AssertionError("f1 did not raise")',
        *raising_chain(DEPTH, "failure at depth %d", typed=False),
    ]
    return "\n".join(lines) + "\n"


Trigger = Callable[[Callable[[BaseException], object]], object]


def _load_site(directory: Path) -> Trigger:
    module = import_generated_module(directory, f"bench_logging_site_{os.getpid()}", _site_source())
    trigger: Trigger = module.trigger
    return trigger


@dataclasses.dataclass
class Contender:
    call: Callable[[BaseException], object]  # runs inside the except block; this is timed
    drain: Callable[[], None]  # wait until background threads delivered everything
    accepted: Callable[[object], bool] = lambda result: True
    rejected: int = 0


def _timed_batch(trigger: Trigger, contender: Contender, n: int) -> list[Sample]:
    """``n`` calls, each in the ``except`` block of a fresh 30-frame ValueError; only the
    call is timed: (wall ns, calling thread's CPU ns). Drained afterwards, untimed."""
    samples: list[Sample] = []
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns
    call = contender.call

    def timed(error: BaseException) -> None:
        cpu = cpu_clock()
        start = clock()
        result = call(error)
        end = clock()
        samples.append((end - start, cpu_clock() - cpu))
        if not contender.accepted(result):
            contender.rejected += 1

    with gc_paused():
        for _ in range(n):
            trigger(timed)
    contender.drain()
    return samples


def measure_exceptions(trigger: Trigger, contender: Contender, config: Config) -> dict[str, Any]:
    depths: list[int] = []
    trigger(lambda error: depths.append(traceback_depth(error)))
    if depths != [DEPTH]:
        raise SystemExit(f"expected a {DEPTH}-frame traceback, got {depths}")
    for size in batch_sizes(config.warmup, config.batch):
        _timed_batch(trigger, contender, size)
    contender.rejected = 0
    timing = Timing()
    for _ in range(config.exc_reps):
        rep: list[Sample] = []
        for size in batch_sizes(config.exc_per_rep, config.batch):
            rep += _timed_batch(trigger, contender, size)
        timing.add_rep(rep)
    return {
        **dataclasses.asdict(timing),  # the parent reads it back with Timing.from_dict()
        "rejected": contender.rejected,
        "events": config.warmup + config.exc_reps * config.exc_per_rep,
    }


def child_exc_ours(config: Config, posthog_url: str, sentry_dsn: str) -> dict[str, Any]:
    import posthog

    import posthog_errors
    from posthog_errors import PostHogHandler, _rate_limit

    _quiet_library_loggers()
    # Every record must become an event, as with the other two libraries: turn off the
    # per-site rate limit (on by default; it would refuse all but a burst of this site).
    _rate_limit.configure(None)
    client = posthog.Posthog(API_KEY, host=posthog_url)
    logger = _bench_logger("bench.errors", PostHogHandler(client=client))

    def call(error: BaseException) -> object:
        logger.exception(ERROR_MESSAGE, 42)
        return None

    def drain() -> None:
        if not posthog_errors.flush(30.0):
            raise SystemExit("posthog_errors.flush() did not finish within 30 s")

    with tempfile.TemporaryDirectory(prefix="bench_logging_") as tmp:
        result = measure_exceptions(_load_site(Path(tmp)), Contender(call, drain), config)
    client.shutdown()
    result["stats"] = posthog_errors.stats()
    return result


def child_exc_sentry(config: Config, posthog_url: str, sentry_dsn: str) -> dict[str, Any]:
    import sentry_sdk

    _quiet_library_loggers()
    sentry_sdk.init(
        dsn=sentry_dsn,
        default_integrations=True,
        integrations=[sentry_logging_integration()],  # an event for each logger.exception
        sample_rate=1.0,
        release="bench",  # otherwise sentry-sdk runs `git rev-parse` to guess one
    )
    logger = _bench_logger("bench.errors", logging.NullHandler())

    def call(error: BaseException) -> object:
        logger.exception(ERROR_MESSAGE, 42)
        return None

    def drain() -> None:
        sentry_sdk.flush(timeout=30)

    with tempfile.TemporaryDirectory(prefix="bench_logging_") as tmp:
        result = measure_exceptions(_load_site(Path(tmp)), Contender(call, drain), config)
    sentry_sdk.flush(timeout=30)
    return result


def child_exc_posthog(config: Config, posthog_url: str, sentry_dsn: str) -> dict[str, Any]:
    import posthog

    _quiet_library_loggers()
    client = posthog.Posthog(API_KEY, host=posthog_url)

    def call(error: BaseException) -> object:
        return client.capture_exception(error)

    def drain() -> None:
        client.flush(30.0)

    contender = Contender(call, drain, accepted=lambda result: bool(result))
    with tempfile.TemporaryDirectory(prefix="bench_logging_") as tmp:
        result = measure_exceptions(_load_site(Path(tmp)), contender, config)
    client.shutdown()
    return result


CHILDREN: dict[str, Callable[[Config, str, str], dict[str, Any]]] = {
    "filtered": child_filtered,
    "filtered-install": child_filtered_install,
    "filtered-install-steps": child_filtered_install_steps,
    "filtered-sentry": child_filtered_sentry,
    "exc-ours": child_exc_ours,
    "exc-sentry": child_exc_sentry,
    "exc-posthog": child_exc_posthog,
}


def run_child(name: str, config: Config, server: ServerProcess) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter; its result is the last line of its stdout."""
    command = [
        sys.executable,
        str(SCRIPT),
        "--child",
        name,
        "--config",
        json.dumps(dataclasses.asdict(config)),
        "--posthog-url",
        server.posthog_url,
        "--sentry-dsn",
        server.sentry_dsn,
    ]
    done = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, env=child_env(), timeout=600, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child {name!r} failed with exit status {done.returncode}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- reporting -------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    # As installed: the parent process never imports the libraries it measures.
    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "posthog-errors": version("posthog-errors"),
        "posthog-python": version("posthog"),
        "sentry-sdk": version("sentry-sdk"),
    }


@dataclasses.dataclass
class FilteredRow:
    label: str
    loops: list[float]  # ns per call, one per timed loop
    baseline: list[float]  # the NullHandler loops it took turns with, same order

    @property
    def ns(self) -> float:
        return statistics.median(self.loops)

    @property
    def ratio(self) -> float:
        """Median of the per-turn ratios to the NullHandler loop of the same turn: drift
        in machine speed during the run affects both sides of each ratio alike."""
        return statistics.median(a / b for a, b in zip(self.loops, self.baseline, strict=True))

    @property
    def added_ns(self) -> float:
        """Median, over turns, of the time added to the NullHandler loop of the same turn."""
        return statistics.median(a - b for a, b in zip(self.loops, self.baseline, strict=True))

    @property
    def ratio_spread(self) -> tuple[float, float]:
        """The 10th and 90th percentiles of the per-turn ratios."""
        ratios = [a / b for a, b in zip(self.loops, self.baseline, strict=True)]
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        deciles = statistics.quantiles(ratios, n=10)
        return deciles[0], deciles[-1]

    @property
    def min_ratio(self) -> float:
        return min(self.loops) / min(self.baseline)


@dataclasses.dataclass
class ExcRow:
    label: str
    timing: Timing  # as measure_exceptions() measured it in a child process


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def filtered_table(rows: list[FilteredRow], markdown: bool) -> str:
    header = [
        "logger.info below the allow list, one handler",
        f"{MU}s/call",
        "added ns",
        "vs NullHandler",
    ]
    body = [
        [row.label, _fmt(row.ns / 1000), f"{row.added_ns:+,.0f}", f"{row.ratio:.3f}"]
        for row in rows
    ]
    return render_table(header, body, markdown)


def exc_table(rows: list[ExcRow], markdown: bool) -> str:
    header = [
        f"logger.exception, {DEPTH}-frame exception",
        f"{MU}s/call",
        f"on-CPU {MU}s",
        "vs posthog-errors",
    ]
    ours = rows[0].timing.median_us
    body = [
        [
            row.label,
            _fmt(row.timing.median_us),
            _fmt(row.timing.cpu_median_us),
            f"{row.timing.median_us / ours:,.1f}x",
        ]
        for row in rows
    ]
    return render_table(header, body, markdown)


@dataclasses.dataclass
class Target:
    what: str
    row: FilteredRow
    limit: float  # at most this ratio to the NullHandler call, from the issues
    versus: FilteredRow | None = None  # sentry-sdk's breadcrumb row, shown beside a step's


def _verdict(target: Target, quick: bool) -> str:
    row = target.row
    met = row.ratio <= target.limit
    versus = target.versus
    return (
        f"{target.what}: {row.ratio:.3f}x, {row.added_ns:+,.0f} ns "
        f"(target <= {target.limit:.2f}): {'met' if met else 'NOT MET'}"
        + (
            f"; sentry-sdk's breadcrumb for the same call: {versus.ratio:.3f}x, "
            f"{versus.added_ns:+,.0f} ns"
            if versus is not None
            else ""
        )
        + (" (--quick run: too few loops to settle a 5% question)" if quick else "")
    )


def _targets(rows: dict[str, FilteredRow]) -> list[Target]:
    """The rows with a target: a record posthog-errors does not keep costs at most 1.05x
    the same call without posthog-errors, a record that becomes a step at most 1.10x."""
    breadcrumb = rows["sentry"]
    return [
        Target(
            "PostHogHandler(steps=False) on an INFO record below its level, vs NullHandler",
            rows["posthog_off"],
            FILTERED_TARGET,
        ),
        Target(
            "PostHogHandler() on an INFO record that becomes a step, vs NullHandler",
            rows["posthog_step"],
            STEP_TARGET,
            breadcrumb,
        ),
        Target(
            "install(steps=False) on an INFO record below the allow list, vs NullHandler alone",
            rows["install_off"],
            FILTERED_TARGET,
        ),
        Target(
            "install() on an INFO record that becomes a step, vs NullHandler alone",
            rows["install_step"],
            STEP_TARGET,
            breadcrumb,
        ),
        Target(
            "install() on a record the logger's level filters out, vs no install()",
            rows["level_install"],
            FILTERED_TARGET,
        ),
    ]


def _memory_lines(trail: dict[str, Any], crumbs: dict[str, Any]) -> list[str]:
    """Memory per context, as measured by measure_trail_memory() and
    measure_breadcrumb_memory() in the children."""
    bound = 2 * int(trail["max_steps"])
    parts = trail["getsizeof"]
    return [
        f"Memory per context: a trail holds at most 2 x MAX_STEPS = {bound} nodes (two "
        f"segments of {trail['max_steps']}: when the newest is full it becomes the older "
        "one, the one before dropped), each one flat tuple of its links and its step: "
        "small immutable values made when the record was logged (here the template, shared "
        "with the call site, the arguments tuple (42,), the timestamp, the level and the "
        "logger name), never the record. For this record "
        f"{trail['per_node']:,.0f} bytes per node (tracemalloc: {trail['bytes']:,} bytes "
        f"held by a context after {trail['records']} records, {trail['nodes']} nodes), so "
        f"about {bound * trail['per_node'] / 1024:,.0f} KiB per context at most; after "
        f"{trail['long_records']:,} records in one context it holds {trail['long_nodes']} "
        f"nodes, {trail['long_bytes']:,} bytes. sys.getsizeof of a node: {parts['node']} "
        "bytes; the rest is the values made for the record (the timestamp, the arguments "
        "tuple). Whatever a record references, a step "
        "holds at most about 3,300 characters of text (docs/steps.md).",
        f"sentry-sdk keeps at most {crumbs['max']} breadcrumbs per isolation scope: "
        f"{crumbs['per_breadcrumb']:,.0f} bytes each for this record (tracemalloc: "
        f"{crumbs['bytes']:,} bytes for {crumbs['kept']} breadcrumbs).",
    ]


def _details(filtered: list[FilteredRow], exc: list[ExcRow]) -> list[str]:
    lines = []
    for row in filtered:
        low, high = row.ratio_spread
        lines.append(
            f"{row.label}: median {row.ns:,.0f} ns over {len(row.loops)} loops "
            f"(min {min(row.loops):,.0f}, max {max(row.loops):,.0f}); per-turn ratio "
            f"p10 {low:.3f}, median {row.ratio:.3f}, p90 {high:.3f}; ratio of minimums "
            f"{row.min_ratio:.3f}; its NullHandler: median {statistics.median(row.baseline):,.0f}"
            " ns"
        )
    lines += [f"{exc_row.label}: {exc_row.timing.summary()}" for exc_row in exc]
    return lines


METHOD_NOTE = (
    "Method: `benchmarks/bench_logging.py` runs every library in its own child process, so "
    "sentry-sdk's patch of `logging` touches nothing else, against a PostHog capture server "
    "and a Sentry envelope endpoint on 127.0.0.1 in one more process. **logger.info:** a "
    'logger at DEBUG with one handler times `logger.info("user %s logged in", 42)` in loops '
    "of {loop:,} calls with the garbage collector paused, as `timeit` does; the variants "
    "take turns, in a rotating order, for {reps} loops each. The figure is the median loop; "
    "the ratio is the median, over turns, of each loop against the `NullHandler` loop of "
    "the same turn, in the same process, so that a machine speeding up or slowing down "
    "during the run cancels out (the median rather than the minimum, because the minimum "
    'of a noisy shared machine is one lucky loop). "Added ns" is the median, over turns, '
    "of the difference to that `NullHandler` loop. `PostHogHandler(steps=False)` keeps its "
    "level at the lowest allowed level (ERROR), so `Logger.callHandlers` never calls it for "
    "an INFO record. With steps on (the default, `steps_levels` INFO and WARNING) its level "
    "is INFO and `handle()` makes the record a step, fixed when logged: a tuple of the "
    "template, the arguments (here one small int, kept as it is, formatted by the worker "
    "when an event sends the step; other arguments are formatted at once), the timestamp, "
    "the level and the logger name, never the `LogRecord`, as the new head of the current "
    "context's trail (a persistent linked list in a `ContextVar`). With "
    '`levels="debug,error", steps=False` the record reaches '
    "`handle()` and is refused by the allow list. `install()` chains `Logger.callHandlers` "
    "(it adds no handler) once per process, so `install(steps=False)` and `install()` run "
    "in a process each, timed over a `NullHandler` and taking turns with the original "
    "method put back: with steps off the hook's cost for an INFO record is one level "
    "comparison; with steps on it hands the record to its internal `PostHogHandler`, which "
    "makes it a step. On a logger at WARNING the record is filtered out before it is made "
    "and the hook is never called. The steps loops add every record to the one trail of "
    "the benchmark's context, far past its bound ({bound} nodes: each full segment of "
    "{max_steps} becomes the older one and the one before is dropped), so their figures "
    "include that turnover "
    "and the freeing of the steps it drops, as in a long-running process. sentry-sdk is "
    "timed over a `NullHandler` with its patched `Logger.callHandlers`: its "
    "`LoggingIntegration`, set up as 2.x's default on every line (3.x: without Sentry "
    "Logs), formats each INFO record and adds it as a breadcrumb to the "
    "isolation scope's buffer (the most recent 100). **Memory:** tracemalloc's growth while "
    "{bound} INFO records are logged through `install()` in a fresh `contextvars.Context`, "
    "which keeps the trail alive, divided by its nodes; and the same for sentry-sdk's "
    "breadcrumb buffer, cleared and filled. **logger.exception:** "
    "each call logs a new `ValueError` raised {depth} frames deep at the same site and is "
    "made inside the `except` block that caught it; only the call is timed, not the raise. "
    "Calls run in batches of {batch} with the background threads (posthog-errors' worker, "
    "the posthog client's sender, sentry-sdk's transport) flushed between batches, outside "
    "the timed region; {reps_exc} repetitions of {per_rep} calls after {warmup} warm-up "
    "calls; the figure is the median of the per-repetition medians. posthog-errors' per-site "
    "rate limit is turned off so that every record becomes an event, as with the others. "
    "posthog-python has no logging handler, so its row is `Posthog.capture_exception(exc)` "
    "in the same `except` block. sentry-sdk's figure includes serializing its breadcrumb "
    "buffer (up to 100 breadcrumbs, one per earlier record at INFO or above, here the earlier "
    "`logger.exception` calls), as in any long-running process. On-CPU is the calling "
    "thread's own CPU time (`time.thread_time`), which leaves out time spent waiting for the "
    "GIL."
)


def render_doc_block(
    info: dict[str, str],
    rows: dict[str, FilteredRow],
    exc: list[ExcRow],
    memory: list[str],
    max_steps: int,
    details: list[str],
    config: Config,
    quick: bool,
) -> str:
    note = METHOD_NOTE.format(
        loop=config.filtered_loop,
        reps=config.filtered_reps,
        bound=2 * max_steps,
        max_steps=max_steps,
        depth=DEPTH,
        batch=config.batch,
        reps_exc=config.exc_reps,
        per_rep=config.exc_per_rep,
        warmup=config.warmup,
    )
    lines = [
        measured_on(info, ("posthog-errors", "posthog-python", "sentry-sdk"), quick)
        + f" On 2 CPUs, {info['load']}.",
        "",
        filtered_table(list(rows.values()), markdown=True),
        "",
        *(f"- {_verdict(target, quick)}" for target in _targets(rows)),
        *(f"- {line}" for line in memory),
        "",
        exc_table(exc, markdown=True),
        "",
        note,
        "",
        '<details markdown="1"><summary>Spread and details</summary>',
        "",
        *(f"- {line}" for line in details),
        "",
        "</details>",
    ]
    return doc_block(DOC_START, DOC_END, SCRIPT.name, lines)


def write_doc(block: str, path: Path | None = None) -> None:
    """Replace the section between the markers, or append it (under a heading) when the
    file has neither marker. A file with only one of them is left alone: an error."""
    path = DOC_PATH if path is None else path
    write_marked_block(block, DOC_START, DOC_END, path, heading=DOC_HEADING)


# -- main ------------------------------------------------------------------------------


def _check_trails(
    plain: dict[str, Any], off: dict[str, Any], on: dict[str, Any], problems: list[str]
) -> None:
    """The rows measure what they say: the steps-on variants made steps, within the bound;
    install(steps=False) made none. ``MAX_STEPS`` as the child read it: the parent never
    imports the library it measures."""
    memory = on["memory"]
    bound = 2 * int(memory["max_steps"])
    for name, data in (("PostHogHandler()", plain), ("install()", on)):
        if not 0 < data["trail_nodes"] <= bound:
            problems.append(
                f"{name} left a trail of {data['trail_nodes']} nodes (0 < n <= {bound})"
            )
    if off["trail_nodes"]:
        problems.append(f"install(steps=False) left a trail of {off['trail_nodes']} nodes")
    if memory["nodes"] != bound or not 0 < memory["long_nodes"] <= bound:
        problems.append(f"trail memory: unexpected node counts {memory}")


def _load() -> str:
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def run(config: Config, quick: bool, write: bool) -> int:
    info = machine_info(_versions())
    load_before = _load()
    problems: list[str] = []
    server = ServerProcess()
    try:
        progress("logger.info: NullHandler and PostHogHandler, steps off and on")
        plain = run_child("filtered", config, server)
        progress("logger.info: install(steps=False)'s logging hook")
        off = run_child("filtered-install", config, server)
        progress("logger.info: install()'s logging hook, steps on; a trail's memory")
        on = run_child("filtered-install-steps", config, server)
        progress("logger.info: sentry-sdk's logging integration (breadcrumbs)")
        sentry = run_child("filtered-sentry", config, server)
        exc: dict[str, dict[str, Any]] = {}
        for name, label in (
            ("exc-ours", "posthog-errors"),
            ("exc-sentry", "sentry-sdk"),
            ("exc-posthog", "posthog-python"),
        ):
            progress(f"logger.exception: {label}")
            server.clear()
            data = run_child(name, config, server)
            exc[name] = data
            events = int(data["events"])
            if name == "exc-sentry":
                received = server.wait(0, events)["sentry"]
            else:
                received = server.wait(events, 0)["posthog"]
            if received != events:
                problems.append(f"{label}: the server received {received} of {events} events")
            if data["rejected"]:
                problems.append(f"{label} rejected {data['rejected']} captures")
    finally:
        server.close()

    # The machine is shared: say how busy it was (the run itself keeps about one CPU busy).
    info["load"] = f"load average (1, 5, 15 min) {load_before} before the run, {_load()} after"
    stats: dict[str, int] = exc["exc-ours"]["stats"]
    for key in ("dropped", "internal_errors", "rate_limited", "deduplicated", "filtered"):
        if stats.get(key):
            problems.append(f"posthog-errors stats: {key} = {stats[key]}")
    _check_trails(plain, off, on, problems)

    p, i, o, s = plain["loops"], off["loops"], on["loops"], sentry["loops"]
    rows = {
        "null": FilteredRow("logging.NullHandler", p["null"], p["null"]),
        "posthog_off": FilteredRow(
            "PostHogHandler(steps=False): below its level, not called",
            p["posthog_off"],
            p["null"],
        ),
        "posthog_step": FilteredRow(
            "PostHogHandler(), steps on: the record becomes a step", p["posthog_step"], p["null"]
        ),
        "posthog_gap": FilteredRow(
            'PostHogHandler(levels="debug,error", steps=False): refused in handle()',
            p["posthog_gap"],
            p["null"],
        ),
        "install_off": FilteredRow(
            "install(steps=False) + NullHandler: the hook's level check",
            i["install_off"],
            i["null"],
        ),
        "install_step": FilteredRow(
            "install() + NullHandler, steps on: the record becomes a step",
            o["install_step"],
            o["null"],
        ),
        "level_install": FilteredRow(
            "install(), logger at WARNING: no record made (vs the same without install())",
            o["level_install"],
            o["level_null"],
        ),
        "sentry": FilteredRow(
            "sentry-sdk LoggingIntegration (a breadcrumb per record) + NullHandler",
            s["sentry"],
            s["null"],
        ),
    }
    filtered = list(rows.values())
    exc_rows = [
        ExcRow("posthog-errors: PostHogHandler", Timing.from_dict(exc["exc-ours"])),
        ExcRow("sentry-sdk: LoggingIntegration", Timing.from_dict(exc["exc-sentry"])),
        ExcRow("posthog-python: Posthog.capture_exception", Timing.from_dict(exc["exc-posthog"])),
    ]
    memory = _memory_lines(on["memory"], sentry["memory"])
    details = _details(filtered, exc_rows)

    print()
    print(info_line(info))
    print(info["load"])
    print(
        f'logger.info("{INFO_MESSAGE}", 42) on a logger at DEBUG, {config.filtered_reps} loops '
        f"of {config.filtered_loop:,} per variant; ratio = median per-turn ratio to the "
        "NullHandler of the same process"
    )
    print()
    print(filtered_table(filtered, markdown=False))
    print()
    for target in _targets(rows):
        print(f"target: {_verdict(target, quick)}")
    print()
    for line in memory:
        print(line)
    print()
    print(
        f"logger.exception: {DEPTH}-frame ValueError, same site, {config.exc_reps} x "
        f"{config.exc_per_rep} calls, flushed every {config.batch}; median of repetition medians"
    )
    print()
    print(exc_table(exc_rows, markdown=False))
    print()
    print(f"posthog-errors stats: {stats}")
    print()
    for line in details:
        print(line)
    if write:
        write_doc(
            render_doc_block(
                info, rows, exc_rows, memory, on["memory"]["max_steps"], details, config, quick
            )
        )
        print(f"\nwrote {DOC_PATH}")
    return exit_status(problems)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    # Internal: how the parent runs one scenario in a child process.
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--posthog-url", help=argparse.SUPPRESS)
    parser.add_argument("--sentry-dsn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        config = Config(**json.loads(args.config))
        result = CHILDREN[args.child](config, args.posthog_url, args.sentry_dsn)
        print(json.dumps(result), flush=True)
        return 0
    return run(QUICK if args.quick else FULL, quick=args.quick, write=args.write_doc)


if __name__ == "__main__":
    sys.exit(main())
