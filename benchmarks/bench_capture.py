"""Caller-thread cost, total CPU and start-up of capturing exceptions: posthog-errors
against posthog-python's ``Posthog.capture_exception``, sentry-sdk's
``event_from_exception`` (3.x, and 2.x in a child process) and no library at all.

Usage::

    python benchmarks/bench_capture.py            # full run, about 4 minutes on 2 cores
    python benchmarks/bench_capture.py --quick    # smoke run, about 15 seconds
    python benchmarks/bench_capture.py --write-doc  # also rewrite docs/performance.md

All libraries are measured in the same run, on the same exceptions, against a PostHog
capture server on 127.0.0.1 running in a child process (so its CPU is not counted). See
``benchmarks/README.md`` for what each scenario means and ``docs/performance.md`` for the
recorded figures. The exit status is 1 when the run itself is broken (events dropped or not
delivered), never because of the figures: speed is measured here, not asserted.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import inspect
import json
import linecache
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# This script's directory is sys.path[0] when it is run as `python benchmarks/bench_capture.py`.
from _shared import (
    DOC_PATH,
    MU,
    REPO_ROOT,
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

import posthog  # noqa: E402
import sentry_sdk  # noqa: E402
from sentry_sdk.utils import event_from_exception  # noqa: E402

import posthog_errors  # noqa: E402
from posthog_errors import _rate_limit  # noqa: E402
from posthog_errors._frames import FrameBuilder  # noqa: E402
from posthog_errors._options import PayloadOptions  # noqa: E402
from posthog_errors._payload import build_properties  # noqa: E402
from posthog_errors._reporter import Reporter, set_default_reporter  # noqa: E402
from posthog_errors._snapshot import EventSnapshot, walk_exceptions  # noqa: E402

DOC_START = "<!-- bench:start -->"
DOC_END = "<!-- bench:end -->"
API_KEY = "phc_benchmark"
DEPTH = 30  # frames in every captured traceback
BASELINE = "no library"  # the same loop, with no capture call at all
LIBRARIES = ("posthog-errors", "posthog-python", "sentry-sdk 3", "sentry-sdk 2")
# sentry-sdk 3.x is the one installed (the lock); 2.x, still the most used, is installed by
# the benchmark itself into a git-ignored cache and measured in a child process of the run.
SENTRY_2 = "sentry-sdk==2.76.0"
SENTRY_2_CACHE = REPO_ROOT / "benchmarks" / ".cache" / "sentry-sdk-2"

# Done-when targets of issue 26: how many times cheaper posthog-errors must be than
# posthog-python (start-up: at most this multiple of `import posthog`). Reported, never
# asserted.
TARGETS = {"caller_same": 40.0, "caller_fresh": 40.0, "cpu_same": 2.0, "cpu_fresh": 2.0}
STARTUP_TARGET = 1.0
# Issue 23: redacting a new event, code context included, costs at most this on the worker.
REDACTION_TARGET_US = 100.0


# -- configuration -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    reps: int  # repetitions of each caller-thread scenario (libraries interleaved)
    same_per_rep: int  # timed captures per library per repetition, repeated site
    fresh_per_rep: int  # timed captures per library per repetition, fresh sites
    batch: int  # captures between two flushes of the background threads
    warmup: int  # untimed captures per library before anything is timed
    cpu_reps: int  # repetitions of each total-CPU phase
    cpu_events: int  # events per total-CPU phase (at most the worker's queue size)
    cpu_fresh_events: int  # events per fresh-site total-CPU phase
    redaction_sites: int  # fresh sites per repetition of the redaction-cost phase
    startup_rounds: int  # rounds of start-up measurements (one child process each)


FULL = Config(
    reps=7,
    same_per_rep=150,
    fresh_per_rep=60,
    batch=10,
    warmup=50,
    cpu_reps=5,
    cpu_events=500,
    cpu_fresh_events=200,
    redaction_sites=60,
    startup_rounds=7,
)
QUICK = Config(
    reps=2,
    same_per_rep=30,
    fresh_per_rep=15,
    batch=10,
    warmup=10,
    cpu_reps=1,
    cpu_events=100,
    cpu_fresh_events=40,
    redaction_sites=20,
    startup_rounds=1,
)


# -- the application's own work ------------------------------------------------------


def app_work() -> int:
    """What an application does between two failures, about 150 microseconds of it on this machine:
    a request handler's kind of work (build rows, encode them to JSON, read them back).

    Timed captures run right after it, as in a service, where a failure comes in the
    middle of other work: the CPU's caches hold the app's data, not the library's, and the
    library's background threads deliver earlier events meanwhile. Back-to-back captures,
    each right after the previous one, measure a warm best case that applications rarely
    see.
    """
    rows = [
        {"id": i, "name": f"item {i}", "price": i * 1.5, "tags": ["a", "b", str(i)]}
        for i in range(40)
    ]
    return sum(len(row["name"]) for row in json.loads(json.dumps(rows)))


# -- failure sites -------------------------------------------------------------------


def _module_source(tag: str) -> str:
    """A module whose ``trigger()`` returns a freshly raised, 30-frame-deep ValueError."""
    lines = [
        f'"""Failure site {tag}, generated by benchmarks/bench_capture.py."""',
        "",
        "",
        "def trigger(value: int) -> BaseException:",
        "    try:",
        "        f1(value)",
        "    except ValueError as error:",
        "        return error",
        '    raise AssertionError("f1 did not raise")',
        *raising_chain(DEPTH, f"failure at site {tag}, depth %d", typed=True),
    ]
    return "\n".join(lines) + "\n"


class SiteFactory:
    """Writes and imports failure-site modules in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def new_site(self) -> Callable[[], BaseException]:
        self.count += 1
        name = f"bench_site_{os.getpid()}_{self.count}"
        module = import_generated_module(self.directory, name, _module_source(str(self.count)))
        trigger: Callable[[int], BaseException] = module.trigger
        return lambda: trigger(0)


def _check_depth(exc: BaseException) -> None:
    depth = traceback_depth(exc)
    if depth != DEPTH:
        raise SystemExit(f"expected a {DEPTH}-frame traceback, got {depth}")


# -- the capture server, in a child process ------------------------------------------

_SERVER_CODE = r"""
import json, sys, time
from posthog_errors.capture_server import CaptureServer

with CaptureServer() as server:
    print(server.url, flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        reply = {}
        if command == "wait":
            events = server.wait_for_events(int(args[0]), timeout=float(args[1]))
            sizes = [len(json.dumps(event.get("properties", {}))) for event in events]
            reply = {"count": len(events), "bytes": sum(sizes) / len(sizes) if sizes else 0}
        elif command == "clear":
            server.clear()
        elif command == "quit":
            break
        print(json.dumps(reply), flush=True)
"""


class ServerProcess(LoopbackServerProcess):
    """A CaptureServer in a child process, driven over its stdin/stdout."""

    def __init__(self) -> None:
        super().__init__(_SERVER_CODE, "capture server")
        self.url = self._readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"capture server did not start: {self.url!r}")

    def wait(self, count: int, timeout: float = 30.0) -> tuple[int, float]:
        """Block until ``count`` $exception events arrived; (events received, mean bytes)."""
        reply = self._command("wait", count, timeout)
        return int(reply["count"]), float(reply["bytes"])


# -- the contenders --------------------------------------------------------------------


@dataclasses.dataclass
class Contender:
    name: str
    capture: Callable[[BaseException], object]  # truthy when the event was accepted
    drain: Callable[[], None]  # wait until background threads delivered everything
    rejected: int = 0
    # CPU (ns, on whichever thread called it) spent in the posthog client's own capture()
    client_capture_ns: list[int] = dataclasses.field(default_factory=lambda: [0])


def _make_client(url: str, library: str, spent: list[int]) -> posthog.Posthog:
    # The client's defaults (batching, one consumer thread), pointed at the local server.
    # One key per library, so posthog does not warn about two clients sharing a project.
    client = posthog.Posthog(f"{API_KEY}_{library}", host=url)
    # The client's own share of the work, counted: its capture() (cleaning the properties,
    # queueing the event) runs on our worker, or in posthog-python's capture_exception on
    # the caller's thread. An instance attribute, so both libraries' calls go through it.
    capture = client.capture
    clock = time.thread_time_ns

    def counted_capture(*args: object, **kwargs: object) -> object:
        start = clock()
        try:
            return capture(*args, **kwargs)
        finally:
            spent[0] += clock() - start

    client.capture = counted_capture
    return client


def build_contenders(url: str) -> tuple[list[Contender], list[posthog.Posthog]]:
    # Every capture must become an event, as it does with the other two libraries: turn
    # off the per-site rate limit (on by default; measured separately, see below).
    _rate_limit.configure(None)
    ours_spent, theirs_spent = [0], [0]
    ours_client = _make_client(url, "errors", ours_spent)
    set_default_reporter(Reporter(ours_client))

    def ours_capture(exc: BaseException) -> object:
        return posthog_errors.capture_exception(exc, distinct_id="u")

    def ours_drain() -> None:
        if not posthog_errors.flush(30.0):
            raise SystemExit("posthog_errors.flush() did not finish within 30 s")

    theirs_client = _make_client(url, "python", theirs_spent)

    def posthog_capture(exc: BaseException) -> object:
        return theirs_client.capture_exception(exc, distinct_id="u")

    def posthog_drain() -> None:
        theirs_client.flush(30.0)

    contenders = [
        Contender(BASELINE, _no_capture, lambda: None),
        Contender("posthog-errors", ours_capture, ours_drain, client_capture_ns=ours_spent),
        Contender("posthog-python", posthog_capture, posthog_drain, client_capture_ns=theirs_spent),
        sentry_contender(),
    ]
    return contenders, [ours_client, theirs_client]


def _no_capture(exc: BaseException) -> object:
    """The no-library baseline: the loop's own cost (raising, the clock), nothing captured."""
    return exc


def sentry_contender() -> Contender:
    """sentry-sdk's ``event_from_exception``, named by its major version.

    A client as ``sentry_sdk.init()`` would make it (no DSN, so no transport): source
    context and local variables on, as by default. sentry-sdk 2.x takes its options as an
    argument; 3.x reads them from the current client (no client_options parameter).
    """
    name = f"sentry-sdk {importlib.metadata.version('sentry-sdk').partition('.')[0]}"
    sentry_client = sentry_sdk.Client()
    if "client_options" in inspect.signature(event_from_exception).parameters:
        sentry_options = sentry_client.options

        def sentry_capture(exc: BaseException) -> object:
            return event_from_exception(exc, client_options=sentry_options)

    else:
        sentry_sdk.Scope.get_global_scope().set_client(sentry_client)

        def sentry_capture(exc: BaseException) -> object:
            return event_from_exception(exc)

    return Contender(name, sentry_capture, lambda: None)


# -- measurements ----------------------------------------------------------------------


def _timed_batch(
    contender: Contender,
    sites: Sequence[Callable[[], BaseException]],
    fresh: bool,
    amid: bool = False,
) -> tuple[list[Sample], list[Sample]]:
    """Raise from each site, then time only the capture call: (wall ns, thread CPU ns).

    ``amid``: the application's own work (:func:`app_work`) runs before each raise, and the
    whole iteration (work, raise, capture) is timed too, in the second list. Background
    threads are drained after the batch, outside the timed region.
    """
    samples: list[Sample] = []
    loops: list[Sample] = []
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns
    capture = contender.capture
    with gc_paused():
        for site in sites:
            if fresh:
                linecache.clearcache()  # no library starts with the file already read
            loop_start, loop_cpu = clock(), cpu_clock()
            if amid:
                app_work()
            exc = site()
            cpu = cpu_clock()
            start = clock()
            accepted = capture(exc)
            end = clock()
            end_cpu = cpu_clock()
            samples.append((end - start, end_cpu - cpu))
            loops.append((end - loop_start, end_cpu - loop_cpu))
            if not accepted:
                contender.rejected += 1
    contender.drain()
    return samples, loops


@dataclasses.dataclass
class CallerResult:
    """One caller-thread scenario: per library, the capture call, and (amid app work) the
    whole iteration of app work, raise and capture."""

    calls: dict[str, Timing]
    loops: dict[str, Timing]

    def merge(self, other: CallerResult) -> None:
        self.calls.update(other.calls)
        self.loops.update(other.loops)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": {k: dataclasses.asdict(v) for k, v in self.calls.items()},
            "loops": {k: dataclasses.asdict(v) for k, v in self.loops.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallerResult:
        return cls(
            {k: Timing.from_dict(v) for k, v in data["calls"].items()},
            {k: Timing.from_dict(v) for k, v in data["loops"].items()},
        )


def measure_caller(
    contenders: list[Contender],
    sites_for: Callable[[int], list[Callable[[], BaseException]]],
    reps: int,
    per_rep: int,
    batch: int,
    fresh: bool,
    amid: bool,
) -> CallerResult:
    result = CallerResult({c.name: Timing() for c in contenders}, {})
    if amid:
        result.loops = {c.name: Timing() for c in contenders}
    for rep in range(reps):
        for contender in rotated(contenders, rep):
            rep_samples: list[Sample] = []
            rep_loops: list[Sample] = []
            for size in batch_sizes(per_rep, batch):
                samples, loops = _timed_batch(contender, sites_for(size), fresh, amid)
                rep_samples += samples
                rep_loops += loops
            result.calls[contender.name].add_rep(rep_samples)
            if amid:
                result.loops[contender.name].add_rep(rep_loops)
    return result


# The caller-thread scenarios: (label, fresh sites, amid app work).
CALLER_SCENARIOS = (
    ("repeated site, amid app work", False, True),
    ("fresh site, amid app work", True, True),
    ("repeated site, back to back", False, False),
)


def measure_all_callers(
    contenders: list[Contender], sites: Sites, config: Config
) -> dict[str, CallerResult]:
    results = {}
    for label, fresh, amid in CALLER_SCENARIOS:
        progress(f"caller thread, {label}")
        per_rep = config.fresh_per_rep if fresh else config.same_per_rep
        sites_for = sites.fresh if fresh else sites.repeated
        results[label] = measure_caller(
            contenders, sites_for, config.reps, per_rep, config.batch, fresh, amid
        )
    return results


def measure_rate_limited(
    contender: Contender,
    sites_for: Callable[[int], list[Callable[[], BaseException]]],
    reps: int,
    per_rep: int,
    batch: int,
) -> Timing:
    """posthog-errors with its default per-site rate limit, once the site's burst is spent:
    what a failure repeating in a hot loop costs the app (no event is built or sent)."""
    _rate_limit.configure((_rate_limit.DEFAULT_BURST, _rate_limit.DEFAULT_PER_SECOND))
    try:
        rejected = contender.rejected
        _timed_batch(contender, sites_for(2 * _rate_limit.DEFAULT_BURST), fresh=False)
        timing = Timing()
        for _ in range(reps):
            rep_samples: list[Sample] = []
            for size in batch_sizes(per_rep, batch):
                rep_samples += _timed_batch(contender, sites_for(size), False, amid=True)[0]
            timing.add_rep(rep_samples)
        contender.rejected = rejected  # None is the expected answer here
    finally:
        _rate_limit.configure(None)
    return timing


@dataclasses.dataclass
class CpuResult:
    """Total process CPU per delivered event, one entry per repetition."""

    per_event_us: list[float] = dataclasses.field(default_factory=list)
    wall_ms: list[float] = dataclasses.field(default_factory=list)
    event_bytes: list[float] = dataclasses.field(default_factory=list)
    # thread group -> CPU us per event, one entry per repetition (Linux only)
    by_thread: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # the posthog client's capture() (on the caller's thread or our worker), us per event
    client_capture_us: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.per_event_us)


def measure_cpu(
    contenders: list[Contender],
    server: ServerProcess,
    sites_for: Callable[[int], list[Callable[[], BaseException]]],
    reps: int,
    events: int,
) -> dict[str, CpuResult]:
    """Capture ``events`` exceptions end to end and wait until the server has them all.

    ``time.process_time()`` covers every thread of this process: the caller, the
    posthog-errors worker and the posthog client's consumer thread. The exceptions are
    raised before the clock starts; the server runs in another process.
    """
    results = {c.name: CpuResult() for c in contenders}
    for rep in range(reps):
        for contender in rotated(contenders, rep):
            exceptions = [site() for site in sites_for(events)]
            server.clear()
            linecache.clearcache()
            gc.collect()
            threads = _thread_cpu()
            client_capture = contender.client_capture_ns[0]
            wall = time.perf_counter()
            cpu = time.process_time()
            for exc in exceptions:
                if not contender.capture(exc):
                    contender.rejected += 1
            contender.drain()
            received, size = server.wait(events)
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
            threads = {k: v - threads.get(k, 0.0) for k, v in _thread_cpu().items()}
            if received != events:
                raise SystemExit(
                    f"{contender.name}: the server received {received} of {events} events"
                )
            result = results[contender.name]
            result.per_event_us.append(cpu / received * 1e6)
            result.wall_ms.append(wall * 1e3)
            result.event_bytes.append(size)
            spent = contender.client_capture_ns[0] - client_capture
            result.client_capture_us.append(spent / received / 1000)
            for group, seconds in threads.items():
                result.by_thread.setdefault(group, []).append(seconds / received * 1e6)
    return results


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's live threads, grouped by role (Linux only)."""
    totals: dict[str, float] = {}
    clock_id_of = getattr(time, "pthread_getcpuclockid", None)
    if clock_id_of is None:
        return totals
    for thread in threading.enumerate():
        if thread is threading.main_thread():
            group = "caller"
        elif thread.name == "posthog-errors-worker":
            group = "posthog-errors worker"
        else:
            group = "posthog client threads"
        try:
            seconds = time.clock_gettime(clock_id_of(thread.ident))
        except (OSError, TypeError, OverflowError):  # the thread ended meanwhile
            continue
        totals[group] = totals.get(group, 0.0) + seconds
    return totals


@dataclasses.dataclass
class RedactionResult:
    """The worker's CPU to build one fresh-site event, with redaction on and off (one
    entry per repetition, median over its sites)."""

    on_us: list[float] = dataclasses.field(default_factory=list)
    off_us: list[float] = dataclasses.field(default_factory=list)

    @property
    def cost_us(self) -> float:
        return statistics.median(on - off for on, off in zip(self.on_us, self.off_us, strict=True))

    @property
    def off_median_us(self) -> float:
        return statistics.median(self.off_us)


def measure_redaction(
    sites_for: Callable[[int], list[Callable[[], BaseException]]], reps: int, sites: int
) -> RedactionResult:
    """What redaction adds to building a new failure site's event on the worker: the same
    fresh-site exceptions (distinct files, so distinct code objects) built into payloads
    by a builder with redaction on and one with it off, source lines read afresh by both,
    on this thread's CPU clock. Every frame is new to both builders."""
    result = RedactionResult()
    for _ in range(reps):
        options = {flag: PayloadOptions(redact_secrets=flag) for flag in (True, False)}
        builders = {flag: FrameBuilder(options[flag]) for flag in options}
        samples: dict[bool, list[float]] = {True: [], False: []}
        exceptions = [site() for site in sites_for(sites)]
        with gc_paused():
            for index, exc in enumerate(exceptions):
                entries = walk_exceptions(
                    exc, max_exceptions=50, max_frames=100, max_value_length=20_000
                )
                snapshot = EventSnapshot("", 0.0, entries, "error", True, "generic", "manual")
                for flag in (True, False) if index % 2 else (False, True):
                    linecache.clearcache()
                    start = time.thread_time_ns()
                    build_properties(snapshot, builders[flag])
                    samples[flag].append((time.thread_time_ns() - start) / 1000)
        result.on_us.append(statistics.median(samples[True]))
        result.off_us.append(statistics.median(samples[False]))
    return result


# -- sentry-sdk 2.x, in a child process ------------------------------------------------


def sentry_2_path(install: bool) -> Path | None:
    """The directory holding sentry-sdk 2.x for the child process, installed there by pip
    on the first full run (``install``); None when it is not there and cannot be had."""
    marker = SENTRY_2_CACHE / ".complete"
    if marker.exists():
        return SENTRY_2_CACHE
    if not install:
        return None
    progress(f"installing {SENTRY_2} into {SENTRY_2_CACHE.relative_to(REPO_ROOT)}")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade"]
    command += ["--target", str(SENTRY_2_CACHE), SENTRY_2]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        progress(f"could not install {SENTRY_2}: {done.stderr.strip()[-500:]}")
        return None
    marker.write_text(SENTRY_2 + "\n", encoding="utf-8")
    return SENTRY_2_CACHE


def measure_sentry_2(config: Config, install: bool) -> tuple[dict[str, CallerResult], str]:
    """The caller-thread scenarios for sentry-sdk 2.x: this script again, in a child whose
    ``sys.path`` finds sentry-sdk 2.x first. ({} and why, when it cannot run.)"""
    path = sentry_2_path(install)
    if path is None:
        return {}, f"not measured ({SENTRY_2} is not installed in the benchmark's cache)"
    progress("caller thread, sentry-sdk 2.x (child process)")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(path), env["PYTHONPATH"]])
    quick = ["--quick"] if config is QUICK else []
    command = [sys.executable, __file__, "--sentry-child", *quick]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the sentry-sdk 2.x child failed:\n{done.stderr[-3000:]}")
    reply = json.loads(done.stdout)
    results = {label: CallerResult.from_json(data) for label, data in reply["results"].items()}
    return results, reply["version"]


def sentry_child(config: Config) -> int:
    """In the child: the caller-thread scenarios for the sentry-sdk found first on the path
    (2.x), as JSON on stdout."""
    with tempfile.TemporaryDirectory(prefix="bench_capture_") as tmp:
        factory = SiteFactory(Path(tmp))
        sites = Sites(factory, same=factory.new_site())
        contender = sentry_contender()
        _timed_batch(contender, sites.repeated(config.warmup), fresh=False)
        _timed_batch(contender, sites.fresh(config.batch), fresh=True)
        results = measure_all_callers([contender], sites, config)
    reply = {
        "version": importlib.metadata.version("sentry-sdk"),
        "results": {label: result.to_json() for label, result in results.items()},
    }
    print(json.dumps(reply))
    return 0


# -- start-up --------------------------------------------------------------------------

# What each contender's start-up is, run in a fresh interpreter: the time from before its
# first import to the app's next line. The posthog client's own import is the target's
# yardstick; posthog-python's set-up is its client with exception autocapture on.
# An app that already uses PostHog has imported the client before it installs: what
# posthog-errors adds to its start-up is the row with "posthog imported", the client's import
# run first and not timed (a prelude).
ADDED_STARTUP = "posthog-errors, posthog imported"
STARTUP: dict[str, tuple[str, str]] = {
    BASELINE: ("", "pass"),
    "posthog import": ("", "import posthog"),
    "posthog-errors": (
        "",
        f"import posthog_errors; posthog_errors.install(api_key={API_KEY!r}, host=URL)",
    ),
    ADDED_STARTUP: (
        "import posthog",
        f"import posthog_errors; posthog_errors.install(api_key={API_KEY!r}, host=URL)",
    ),
    "posthog-python": (
        "",
        f"import posthog; posthog.Posthog({API_KEY!r}, host=URL, "
        "enable_exception_autocapture=True)",
    ),
    "sentry-sdk 3": ("", "import sentry_sdk; sentry_sdk.init()"),
}

_STARTUP_CODE = r"""
import json, os, sys, time
URL = "http://127.0.0.1:9"  # nothing is sent: no capture happens
prelude, statement = sys.argv[1], sys.argv[2]
exec(prelude)
cpu, wall = time.process_time(), time.perf_counter()
exec(statement)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)
os._exit(0)  # the libraries' exit handlers have nothing to send
"""


def measure_startup(rounds: int) -> dict[str, Timing]:
    """Each contender's start-up in a fresh interpreter per round, contenders taking turns.
    Wall time is what the app waits; CPU (``process_time``) includes threads started."""
    timings = {name: Timing() for name in STARTUP}
    # As installed from a wheel: compiled modules written once and read after (the
    # checkout has none, and PYTHONDONTWRITEBYTECODE would make every round compile the
    # checkout's modules while the installed peers read theirs). A first round, untimed,
    # writes them.
    env = child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for turn in range(-1, rounds):
        for name in rotated(list(STARTUP), max(turn, 0)):
            command = [sys.executable, "-c", _STARTUP_CODE, *STARTUP[name]]
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
            if done.returncode != 0:
                raise SystemExit(f"start-up of {name} failed:\n{done.stderr[-2000:]}")
            reply = json.loads(done.stdout.strip().splitlines()[-1])
            if turn >= 0:
                timings[name].add_rep([(int(reply["wall"] * 1e9), int(reply["cpu"] * 1e9))])
    return timings


# -- reporting -------------------------------------------------------------------------


def _versions(sentry_2: str) -> dict[str, str]:
    # posthog-errors as imported (this checkout), the others as installed.
    return {
        "posthog-errors": posthog_errors.__version__,
        "posthog-python": importlib.metadata.version("posthog"),
        "sentry-sdk 3": importlib.metadata.version("sentry-sdk"),
        "sentry-sdk 2": sentry_2,
    }


@dataclasses.dataclass
class Row:
    scenario: str
    unit: str
    values: dict[str, float | None]  # library (or BASELINE) -> figure (None: not applicable)
    target_key: str = ""
    # Ratios of what each library adds to the no-library figure (an iteration of app work).
    added: bool = False

    def ratio(self, library: str) -> float | None:
        ours, theirs = self.values.get("posthog-errors"), self.values.get(library)
        if ours is None or theirs is None:
            return None
        if self.added:
            base = self.values.get(BASELINE) or 0.0
            ours, theirs = ours - base, theirs - base
        if ours <= 0:
            return None
        return theirs / ours


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


OTHERS = LIBRARIES[1:]


def _table(rows: list[Row], markdown: bool) -> str:
    header = ["scenario", BASELINE, *LIBRARIES, *(f"vs {lib}" for lib in OTHERS)]
    body = [
        [
            f"{row.scenario} ({MU}s/{row.unit})",
            *(_fmt(row.values.get(lib)) for lib in (BASELINE, *LIBRARIES)),
            *(_fmt_ratio(row.ratio(lib)) for lib in OTHERS),
        ]
        for row in rows
    ]
    return render_table(header, body, markdown)


def _startup_ratio(startup: dict[str, Timing], contender: str = "posthog-errors") -> float:
    return startup[contender].median_us / startup["posthog import"].median_us


def _startup_table(startup: dict[str, Timing], markdown: bool) -> str:
    header = ["start-up, fresh interpreter", *startup]
    body = [
        ["wall (ms)", *(_fmt(t.median_us / 1000) for t in startup.values())],
        ["CPU, every thread (ms)", *(_fmt(t.cpu_median_us / 1000) for t in startup.values())],
    ]
    return render_table(header, body, markdown)


def _targets(rows: list[Row], startup: dict[str, Timing]) -> list[str]:
    verdicts = []
    for row in rows:
        target = TARGETS.get(row.target_key)
        ratio = row.ratio("posthog-python")
        if target is None or ratio is None:
            continue
        if row.target_key.startswith("cpu"):
            goal = "at most half of posthog-python's"
        else:
            goal = f"at least {target:g}x cheaper than posthog-python"
        met = ratio >= target
        verdicts.append(
            f"{row.scenario}: {_fmt_ratio(ratio)} ({goal}): {'met' if met else 'NOT MET'}"
        )
    ratio = _startup_ratio(startup)
    met = "met" if ratio <= STARTUP_TARGET else "NOT MET"
    verdicts.append(
        f"start-up, import posthog_errors + install(): {ratio:.2f}x the posthog client's own "
        f"import (at most {STARTUP_TARGET:g}x): {met}"
    )
    added = _startup_ratio(startup, ADDED_STARTUP)
    added_verdict = "met" if added <= STARTUP_TARGET else "NOT MET"
    verdicts.append(
        f"start-up added to an app that imports posthog, import posthog_errors + install(): "
        f"{added:.2f}x the posthog client's own import (at most {STARTUP_TARGET:g}x): "
        f"{added_verdict}"
    )
    return verdicts


def _details(caller: dict[str, CallerResult], cpu: dict[str, dict[str, CpuResult]]) -> list[str]:
    lines = []
    for scenario, result in caller.items():
        for lib, timing in result.calls.items():
            lines.append(f"caller thread, {scenario}, {lib}: {timing.summary()}")
        for lib, timing in result.loops.items():
            lines.append(f"iteration, {scenario}, {lib}: {timing.summary()}")
    for scenario, results in cpu.items():
        for lib, res in results.items():
            spread = ", ".join(f"{v:,.0f}" for v in res.per_event_us)
            lines.append(
                f"total CPU, {scenario}, {lib}: {res.median_us:,.0f} {MU}s CPU/event "
                f"(repetitions: {spread}); wall {statistics.median(res.wall_ms):,.0f} ms "
                f"per phase; event properties {statistics.median(res.event_bytes):,.0f} "
                "bytes of JSON"
            )
            if res.by_thread:
                parts = ", ".join(
                    f"{group} {statistics.median(values):,.0f}"
                    for group, values in sorted(res.by_thread.items())
                    if statistics.median(values) >= 5
                )
                lines.append(f"total CPU, {scenario}, {lib}: by thread: {parts}")
            if res.client_capture_us:
                lines.append(
                    f"total CPU, {scenario}, {lib}: the posthog client's capture() "
                    f"{statistics.median(res.client_capture_us):,.0f} {MU}s/event, "
                    "+ its threads: the client's own share"
                )
    return lines


def _detail_tables(
    caller: dict[str, CallerResult], cpu: dict[str, dict[str, CpuResult]]
) -> list[str]:
    lines = [
        "| caller-thread scenario | library | median | p10 | p90 | on-CPU median "
        "| repetition medians |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, result in caller.items():
        for kind, timings in (("capture call", result.calls), ("iteration", result.loops)):
            for lib, t in timings.items():
                low, high = min(t.rep_medians) / 1000, max(t.rep_medians) / 1000
                lines.append(
                    f"| {scenario}: {kind} | {lib} | {_fmt(t.median_us)} "
                    f"| {_fmt(t.percentile_us(0.1))} | {_fmt(t.percentile_us(0.9))} "
                    f"| {_fmt(t.cpu_median_us)} | {_fmt(low)} to {_fmt(high)} |"
                )
    lines += [
        "",
        f"All in {MU}s. A capture call is the call alone; an iteration is the app's work, "
        "the raise and the capture call. On-CPU is the calling thread's own CPU time "
        "(`time.thread_time`), which leaves out time spent waiting for the GIL.",
        "",
        "| total-CPU scenario | library | CPU per event | caller | posthog-errors worker "
        "| posthog client threads | client capture() | repetitions | event size |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = ("caller", "posthog-errors worker", "posthog client threads")
    for scenario, results in cpu.items():
        for lib, r in results.items():
            split = [
                _fmt(statistics.median(r.by_thread[g])) if r.by_thread.get(g) else "n/a"
                for g in groups
            ]
            if lib != "posthog-errors":
                split[1] = "-"
            client = statistics.median(r.client_capture_us) if r.client_capture_us else None
            split.append(_fmt(client))
            lines.append(
                f"| {scenario} | {lib} | {_fmt(r.median_us)} | {' | '.join(split)} "
                f"| {_fmt(min(r.per_event_us))} to {_fmt(max(r.per_event_us))} "
                f"| {statistics.median(r.event_bytes) / 1024:,.1f} KiB |"
            )
    lines += [
        "",
        f"All in {MU}s of CPU per delivered event (medians over repetitions), split by "
        "thread; event size is the JSON of the event's properties as the server received it. "
        "Client capture() is the posthog client's own `capture()` (cleaning the properties, "
        "queueing the event), already counted in the thread that called it: our worker, or "
        "posthog-python's caller. With the client threads it is the client's own share of "
        "an event, which both libraries pay.",
    ]
    return lines


def _redaction_verdict(redaction: RedactionResult) -> str:
    cost, build = redaction.cost_us, redaction.off_median_us
    met = "met" if cost <= REDACTION_TARGET_US else "NOT MET"
    return (
        f"redaction of a new failure site's event, code context included: {cost:,.0f} {MU}s "
        f"on the worker, {cost / build:.0%} of building the event without it "
        f"({build:,.0f} {MU}s; at most {REDACTION_TARGET_US:g} {MU}s): {met}"
    )


def render_doc_block(
    info: dict[str, str],
    rows: list[Row],
    caller: dict[str, CallerResult],
    cpu: dict[str, dict[str, CpuResult]],
    startup: dict[str, Timing],
    config: Config,
    quick: bool,
    redaction: RedactionResult,
) -> str:
    lines = [
        f"{measured_on(info, LIBRARIES, quick)} {info['load']}",
        "",
        _table(rows, markdown=True),
        "",
        "Ratios are how many times more the other library costs than posthog-errors; for an "
        "iteration, how many times more it adds to the no-library iteration.",
        "",
        _startup_table(startup, markdown=True),
        "",
        "Targets from the issues:",
        "",
        *(f"- {verdict}" for verdict in _targets(rows, startup)),
        f"- {_redaction_verdict(redaction)}",
        "",
        f"Run size: {config.reps} repetitions of {config.same_per_rep} repeated-site and "
        f"{config.fresh_per_rep} fresh-site captures per library and scenario, flushed every "
        f"{config.batch}; {config.cpu_reps} repetitions of {config.cpu_events} "
        f"(repeated site) and {config.cpu_fresh_events} (fresh sites) events end to end; "
        f"{config.startup_rounds} start-up rounds. sentry-sdk 2.x runs in a child process "
        "of the same run, after the others.",
        "",
        '<details markdown="1"><summary>Spread, and where the CPU goes</summary>',
        "",
        *_detail_tables(caller, cpu),
        "",
        "</details>",
    ]
    return doc_block(DOC_START, DOC_END, Path(__file__).name, lines)


def write_doc(block: str) -> None:
    """Replace the section between the markers; a page without both is an error."""
    write_marked_block(block, DOC_START, DOC_END, DOC_PATH)


# -- main ------------------------------------------------------------------------------


@dataclasses.dataclass
class Sites:
    factory: SiteFactory
    same: Callable[[], BaseException]

    def repeated(self, n: int) -> list[Callable[[], BaseException]]:
        return [self.same] * n

    def fresh(self, n: int) -> list[Callable[[], BaseException]]:
        return [self.factory.new_site() for _ in range(n)]


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
        # user, nice, system and steal; irq/softirq time is left out, as the loopback
        # traffic of the benchmark itself is accounted there, not to its processes.
        ticks = sum(int(fields[i]) for i in (1, 2, 3, 8))
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_seconds() -> float:
    """CPU of this process and its waited-for children (the capture server)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _load_average() -> str:
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def run(config: Config, quick: bool, write: bool) -> int:
    busy_before, own_before, wall_before = _busy_cpu_seconds(), _own_cpu_seconds(), time.time()
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="bench_capture_") as tmp:
        factory = SiteFactory(Path(tmp))
        sites = Sites(factory, same=factory.new_site())
        _check_depth(sites.same())
        server = ServerProcess()
        clients: list[posthog.Posthog] = []
        try:
            contenders, clients = build_contenders(server.url)
            progress("warming up")
            for contender in contenders:
                _timed_batch(contender, sites.repeated(config.warmup), fresh=False)
                _timed_batch(contender, sites.fresh(config.batch), fresh=True)
                contender.rejected = 0
            server.clear()

            caller = measure_all_callers(contenders, sites, config)
            delivering = contenders[1:3]  # sentry-sdk's function only builds the event
            expected = (
                len(delivering) * config.reps * (2 * config.same_per_rep + config.fresh_per_rep)
            )
            received, _ = server.wait(expected)
            if received != expected:
                raise SystemExit(f"the server received {received} of {expected} events")
            progress("caller thread, repeated site past the rate limit (posthog-errors)")
            limited = measure_rate_limited(
                contenders[1], sites.repeated, config.reps, config.same_per_rep, config.batch
            )

            progress("total CPU per delivered event, repeated site")
            cpu_same = measure_cpu(
                delivering, server, sites.repeated, config.cpu_reps, config.cpu_events
            )
            progress("total CPU per delivered event, fresh site each time")
            cpu_fresh = measure_cpu(
                delivering, server, sites.fresh, config.cpu_reps, config.cpu_fresh_events
            )
            progress("redaction cost of a fresh-site event on the worker")
            redaction = measure_redaction(sites.fresh, config.cpu_reps, config.redaction_sites)
        finally:
            for client in clients:
                client.shutdown()
            server.close()
    sentry_2, sentry_2_version = measure_sentry_2(config, install=not quick)
    for label, result in sentry_2.items():
        caller[label].calls["sentry-sdk 2"] = result.calls["sentry-sdk 2"]
        if result.loops:
            caller[label].loops["sentry-sdk 2"] = result.loops["sentry-sdk 2"]
    progress("start-up")
    startup = measure_startup(config.startup_rounds)

    info = machine_info(_versions(sentry_2_version))
    busy_after = _busy_cpu_seconds()
    load = f"Load average {load_before} (1, 5, 15 min) before the run, {_load_average()} after"
    if busy_before is not None and busy_after is not None:
        # Other processes competing for the CPUs make every figure noisier: say how much.
        others = (busy_after - busy_before) - (_own_cpu_seconds() - own_before)
        share = max(0.0, others) / max(1e-9, time.time() - wall_before)
        load += f"; other processes used {share:.0%} of one CPU during the run"
    info["load"] = load + "."
    problems = [f"{c.name} rejected {c.rejected} captures" for c in contenders if c.rejected]
    dropped = posthog_errors.stats()["dropped"]
    if dropped:
        problems.append(f"posthog-errors dropped {dropped} events")

    def call_row(label: str, key: str) -> Row:
        calls = caller[label].calls
        values = {lib: calls[lib].median_us if lib in calls else None for lib in calls}
        return Row(f"caller thread, {label}", "call", values, key)

    def loop_row(label: str) -> Row:
        loops = caller[label].loops
        values = {lib: loops[lib].median_us for lib in loops}
        return Row(f"iteration, {label.partition(',')[0]}", "iteration", values, added=True)

    rows = [
        call_row("repeated site, amid app work", "caller_same"),
        call_row("fresh site, amid app work", "caller_fresh"),
        call_row("repeated site, back to back", ""),
        Row(
            "caller thread, rate-limited repeat, amid app work",
            "call",
            {"posthog-errors": limited.median_us},
        ),
        loop_row("repeated site, amid app work"),
        loop_row("fresh site, amid app work"),
        Row(
            "total CPU, repeated site",
            "event",
            {lib: cpu_same[lib].median_us for lib in cpu_same},
            "cpu_same",
        ),
        Row(
            "total CPU, fresh site",
            "event",
            {lib: cpu_fresh[lib].median_us for lib in cpu_fresh},
            "cpu_fresh",
        ),
    ]
    caller["rate-limited repeat, amid app work"] = CallerResult({"posthog-errors": limited}, {})
    cpu_results = {"repeated site": cpu_same, "fresh site": cpu_fresh}
    details = _details(caller, cpu_results)

    print()
    print(info_line(info))
    print(f"{DEPTH}-frame exceptions; medians; ratios = other library / posthog-errors")
    print()
    print(_table(rows, markdown=False))
    print()
    print(_startup_table(startup, markdown=False))
    print()
    for verdict in _targets(rows, startup):
        print(f"target: {verdict}")
    print(f"target: {_redaction_verdict(redaction)}")
    print(f"posthog-errors stats: {posthog_errors.stats()}")
    print()
    for line in details:
        print(line)
    if write:
        block = render_doc_block(info, rows, caller, cpu_results, startup, config, quick, redaction)
        write_doc(block)
        print(f"\nwrote {DOC_PATH.relative_to(REPO_ROOT)}")
    return exit_status(problems)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    # Internal: the sentry-sdk 2.x child (see measure_sentry_2).
    parser.add_argument("--sentry-child", action="store_true", help=argparse_suppress())
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.sentry_child:
        return sentry_child(config)
    return run(config, quick=args.quick, write=args.write_doc)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
