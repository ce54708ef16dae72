"""What ``bench_capture.py`` and ``bench_logging.py`` have in common.

Both scripts compare posthog-errors with its peers in one run and report the figures the
same way, so the parts that mean the same thing in both live here, once: the child process
that runs the loopback servers, the generated 30-frame failure site, the timing statistics,
the tables, and the marked section of ``docs/performance.md`` each script rewrites.

What only looks alike stays in each script: how a contender is called and timed (outside
the ``except`` block in one, inside it in the other), the configurations, the number
formats of each table, the server code itself.

The scripts import this module as ``_shared``: when run as ``python benchmarks/bench_x.py``
the script's directory is the first entry of ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "performance.md"
MU = "\u00b5"  # the micro sign, spelled out so the source stays ASCII

T = TypeVar("T")

# One timed call: (wall-clock ns, the calling thread's own CPU ns).
Sample = tuple[int, int]


# -- running from a checkout -----------------------------------------------------------


def use_checkout() -> None:
    """Put the repository root first on ``sys.path``, so that the scripts import the
    ``posthog_errors`` of this checkout without it being installed."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def child_env() -> dict[str, str]:
    """This process's environment with the repository root first on ``PYTHONPATH``, so that
    a child interpreter imports the same ``posthog_errors`` as its parent."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def progress(message: str) -> None:
    """Say what is being measured now, on stderr: stdout is kept for the report."""
    print(f"... {message}", file=sys.stderr, flush=True)


# -- the servers, in a child process ---------------------------------------------------


class LoopbackServerProcess:
    """Servers on 127.0.0.1, run by ``code`` in a child interpreter and driven over its
    stdin/stdout: one command a line in, one JSON object a line out.

    A child process so that the servers' own parsing and bookkeeping are charged to no
    library, and so that waiting for deliveries blocks on a pipe, which costs the benchmark
    process no CPU. ``code`` must print one line once it listens (read it with
    ``_readline()``), answer every command with a JSON line, and stop on ``quit``.
    """

    def __init__(self, code: str, name: str) -> None:
        self._name = name  # how error messages call the child
        self._process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )

    def _readline(self) -> str:
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise SystemExit(f"{self._name} exited unexpectedly")
        return line

    def _command(self, *words: object) -> dict[str, Any]:
        stdin: IO[str] | None = self._process.stdin
        assert stdin is not None
        stdin.write(" ".join(str(w) for w in words) + "\n")
        stdin.flush()
        reply: dict[str, Any] = json.loads(self._readline())
        return reply

    def clear(self) -> None:
        """Forget every event received so far."""
        self._command("clear")

    def close(self) -> None:
        """Ask the child to quit; kill it if it has not within 5 s. Safe on a dead child."""
        with contextlib.suppress(SystemExit, OSError, ValueError):
            self._command("quit")
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# -- the failure site ------------------------------------------------------------------


def raising_chain(depth: int, message: str, typed: bool) -> list[str]:
    """Source lines of functions ``f1`` ... ``f{depth - 1}``: each calls the next, the last
    raises ``ValueError(message % value)``; with a ``trigger()`` that calls ``f1``, every
    traceback is exactly ``depth`` frames deep.

    A chain of distinct functions rather than one recursive function, so that on a fresh
    site every frame is a (code object, line) pair never seen before. ``typed`` only adds
    annotations: each script keeps the source it was measured with, as the source lines end
    up in the events.
    """
    signature = "(value: int) -> int" if typed else "(value)"
    lines: list[str] = []
    for i in range(1, depth):
        lines += ["", "", f"def f{i}{signature}:"]
        if i < depth - 1:
            lines += [f"    result = f{i + 1}(value + 1)", "    return result * 2"]
        else:
            lines += [f'    message = "{message}" % value', "    raise ValueError(message)"]
    return lines


def import_generated_module(directory: Path, name: str, source: str) -> types.ModuleType:
    """Write ``source`` to ``directory/name.py`` and import it from there.

    A real file rather than ``exec``, because every library reads the source lines of the
    frames it reports: the benchmark must pay for that as an application would.
    """
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as a real import would; lets loaders find the source
    spec.loader.exec_module(module)
    return module


def traceback_depth(exc: BaseException) -> int:
    """Frames in the traceback of ``exc``, to check a generated site before timing it."""
    depth = 0
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        depth += 1
        tb = tb.tb_next
    return depth


# -- timing ----------------------------------------------------------------------------


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collect garbage, then keep the collector off inside the block (as ``timeit`` does),
    so that no timed call pays for a collection caused by earlier ones."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """``items`` starting at position ``turn`` (modulo its length): contenders taking
    turns in this order never always run first, or always right after the same other one,
    so that a machine speeding up or slowing down during the run hits all of them alike."""
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


def batch_sizes(total: int, batch: int) -> Iterator[int]:
    """Sizes of the batches that make up ``total`` calls, ``batch`` at the most each: the
    scripts drain background threads between batches, so that queues never fill."""
    for start in range(0, total, batch):
        yield min(batch, total - start)


@dataclasses.dataclass
class Timing:
    """Per-call times (ns) of one contender in one scenario, over several repetitions: wall
    time, and the calling thread's own CPU time (which leaves out time spent waiting for the
    GIL). Plain lists, so that a child process can hand it over as JSON."""

    walls: list[int] = dataclasses.field(default_factory=list)
    cpus: list[int] = dataclasses.field(default_factory=list)
    rep_medians: list[float] = dataclasses.field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timing:
        """The inverse of ``dataclasses.asdict``; other keys of ``data`` are ignored."""
        return cls(list(data["walls"]), list(data["cpus"]), list(data["rep_medians"]))

    def add_rep(self, samples: Sequence[Sample]) -> None:
        """Record one repetition's samples."""
        walls = [wall for wall, _ in samples]
        self.walls += walls
        self.cpus += [cpu for _, cpu in samples]
        self.rep_medians.append(statistics.median(walls))

    @property
    def median_us(self) -> float:
        """The headline figure: the median over repetitions of each repetition's median,
        so that one disturbed repetition does not move it."""
        return float(statistics.median(self.rep_medians)) / 1000

    @property
    def cpu_median_us(self) -> float:
        return float(statistics.median(self.cpus)) / 1000

    def percentile_us(self, q: float) -> float:
        ordered = sorted(self.walls)
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) / 1000

    def summary(self) -> str:
        """Median, p10/p90, count, the spread of the repetitions and the on-CPU median, for
        the details under a table."""
        spread = ", ".join(f"{m / 1000:,.1f}" for m in self.rep_medians)
        return (
            f"median {self.median_us:,.1f} {MU}s, "
            f"p10 {self.percentile_us(0.1):,.1f}, p90 {self.percentile_us(0.9):,.1f}, "
            f"n={len(self.walls)}; per-repetition medians: {spread}; "
            f"on-CPU median {self.cpu_median_us:,.1f} {MU}s"
        )


# -- reporting -------------------------------------------------------------------------


def _cpu_model() -> str:
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu_model


def machine_info(versions: Mapping[str, str]) -> dict[str, str]:
    """The machine and Python the figures come from, then ``versions`` (library ->
    version), in that order: the first line of each report and of each doc section."""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "cpu": _cpu_model(),
        "cpus": str(os.cpu_count()),
        **versions,
    }


def info_line(info: Mapping[str, str]) -> str:
    """``machine_info()`` (and anything added to it) as one line of the plain report."""
    return "  ".join(f"{key}: {value}" for key, value in info.items())


def measured_on(info: Mapping[str, str], libraries: Iterable[str], quick: bool) -> str:
    """The sentence that opens a doc section: when, on what, with which versions."""
    today = datetime.date.today().isoformat()
    versions = ", ".join(f"{lib} {info[lib]}" for lib in libraries)
    return (
        f"Measured {today}{' (--quick run)' if quick else ''} on {info['cpu']}, "
        f"{info['cpus']} CPUs, {info['python']} ({info['platform']}); {versions}."
    )


def render_table(header: Sequence[str], body: Sequence[Sequence[str]], markdown: bool) -> str:
    """A table with a left-aligned first column and right-aligned figures: markdown for the
    docs, or aligned plain text for the terminal."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def doc_block(start: str, end: str, script: str, body: Iterable[str]) -> str:
    """``body`` between the markers, with a comment saying which script writes it, so that
    nobody edits by hand what the next ``--write-doc`` run overwrites."""
    return "\n".join(
        [
            start,
            f"<!-- Generated by `python benchmarks/{script} --write-doc`; edit the prose"
            " around these markers, not this block. -->",
            "",
            *body,
            end,
        ]
    )


def write_marked_block(
    block: str, start: str, end: str, path: Path, heading: str | None = None
) -> None:
    """Replace the section of ``path`` from ``start`` to ``end`` (markers included) with
    ``block``, leaving the prose around it alone.

    When the file has neither marker and a ``heading`` is given, the block is appended under
    that heading instead. Anything else (one marker only; or none, and no heading) is left
    for a person to fix: SystemExit. The file is replaced in one step, so that an
    interrupted run never leaves half a page.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    first = text.find(start)
    last = text.find(end, first + len(start)) if first >= 0 else text.find(end)
    if first >= 0 and last >= 0:
        text = text[:first] + block + text[last + len(end) :]
    elif heading is None:
        raise SystemExit(f"{path} has no {start} ... {end} section to rewrite")
    elif first < 0 and last < 0:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + heading + "\n\n"
        text += block + "\n"
    else:
        raise SystemExit(f"{path} has only one of {start} and {end}; fix it by hand")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options both scripts take: ``--quick`` and ``--write-doc``; the description is
    the first paragraph of the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument(
        "--write-doc", action="store_true", help=f"rewrite the figures in {DOC_PATH.name}"
    )
    return parser


def exit_status(problems: Sequence[str]) -> int:
    """Print each problem to stderr; 1 if there was any. Only a broken run fails (an event
    dropped or not received, a child that failed), never the figures: speed is measured by
    the scripts, not asserted."""
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0
