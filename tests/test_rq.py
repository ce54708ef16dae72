"""RQ: real workers against a real Redis, events checked on the wire.

The app is a module written into ``tmp_path`` whose start-up code calls
``posthog_errors.install(client)``, its client aimed at the ``capture_server`` fixture. A
producer process (that start-up code, then ``Queue.enqueue`` inside ``bind``) enqueues the
jobs; the ``rq worker`` command (``-c app``: the same start-up code) runs them in burst
mode, with the forking ``Worker`` (each job in a work horse that ends with ``os._exit``)
and with ``SimpleWorker``. Every child is time-bound: on a hang, each process of its tree
dumps its threads' stacks (faulthandler, SIGABRT) and the test fails with them.

One hang is not ours, and is tolerated: with redis-py 8.2.0, whose
``PubSubWorkerThread.stop()`` joins the thread with no timeout, RQ's ``unsubscribe()`` (in
the worker's teardown, after "done, quitting") often waits for its pubsub thread's current
``get_message(timeout=60)``, up to a minute (redis-py 8.1.0's ``stop()`` does not join).
A worker still running :data:`QUIT_GRACE` seconds after RQ logged "done, quitting" is
let go only when every expected event has arrived and its dumped stacks show the main
thread in RQ's ``unsubscribe`` in ``teardown``; any other hang fails the test, with the
stacks of every process of the worker's tree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import posthog
import pytest
from redis import Redis
from rq import Queue, Retry
from rq.job import Job

import posthog_errors
import posthog_errors.rq
from posthog_errors.capture_server import CaptureServer
from tests.redis_server import redis_url  # noqa: F401

CHILD_TIMEOUT = 30.0
# Seconds a burst worker may take to exit after RQ logged "done, quitting" (it normally
# takes well under one) before its stacks are dumped to tell RQ's known hang from ours.
QUIT_GRACE = 5.0
RQ_DONE = ": done, quitting"

APP = """
import logging
import os

import posthog
import posthog_errors
import posthog_errors.rq

client = posthog.Posthog(
    "phc_test", host=os.environ["CAPTURE_URL"], flush_interval=0.01, max_retries=0
)
posthog_errors.install(client)

log = logging.getLogger("app.jobs")


def always_fails(tag):
    log.warning("charging card %s", tag)
    raise ValueError(f"card declined {tag}")


def flaky(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"


def fails_once(tag):
    raise KeyError(tag)
"""

# The same jobs in a module with no start-up code of its own (for the worker that is not
# instrumented).
JOBS = APP.replace("posthog_errors.install(client)", "")

PRODUCER = """
import json, os, sys

import app  # the app's start-up code: posthog_errors.install(client)
import posthog
import posthog_errors
import posthog_errors.rq
from redis import Redis
from rq import Queue, Retry

queue = Queue(sys.argv[1], connection=Redis.from_url(os.environ["REDIS_URL"]))
with (
    posthog_errors.bind("user-42", session_id="s-1", properties={"plan": "pro"}),
    posthog.new_context(fresh=True, capture_exceptions=False),
):
    posthog.tag("tenant", "acme")  # posthog-python's context tags travel in the meta too
    retried = queue.enqueue(app.always_fails, "A", retry=Retry(max=2))
    recovered = queue.enqueue(app.flaky, sys.argv[2], retry=Retry(max=2))
    once = queue.enqueue(app.fails_once, "B")
anonymous = queue.enqueue(app.fails_once, "anon")
ids = {"retried": retried.id, "recovered": recovered.id, "once": once.id, "anon": anonymous.id}
print(json.dumps(ids))
"""

# A worker that is not instrumented (no install()): the explicit exception handler only.
HANDLER_WORKER = """
import os, sys

import posthog
import posthog_errors.rq
from redis import Redis
from rq import Queue, Worker

client = posthog.Posthog(
    "phc_test", host=os.environ["CAPTURE_URL"], flush_interval=0.01, max_retries=0
)
connection = Redis.from_url(os.environ["REDIS_URL"])
worker = Worker(
    [Queue(sys.argv[1], connection=connection)],
    connection=connection,
    exception_handlers=[posthog_errors.rq.make_exception_handler(client)],
)
worker.work(burst=True)
"""


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a work horse leaves its parent's process group)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _dump_and_kill(process: subprocess.Popen[Any]) -> None:
    """Every process of the tree dumps its threads' stacks (PYTHONFAULTHANDLER + SIGABRT)
    to its stderr, then whatever is left is killed."""
    tree = [*_descendants(process.pid), process.pid]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(2)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(10)


def run_child(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a child to completion, within CHILD_TIMEOUT; its stdout. On a hang, every
    process of its tree dumps its stacks, then the test fails with them."""
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env={**env, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        _dump_and_kill(process)
        out, err = process.communicate(timeout=10)
        pytest.fail(f"{args[1:3]} hung; stacks:\n{err[-20000:]}\nstdout:\n{out[-2000:]}")
    assert process.returncode == 0, f"{args[1:3]} exited {process.returncode}:\n{err[-5000:]}"
    return out


def _thread_stacks(dump: str) -> list[str]:
    """Each thread's block of faulthandler's dumps in ``dump``."""
    pattern = r"^(?:Current thread|Thread) 0x[^\n]*\n(?:  File [^\n]*\n)+"
    return re.findall(pattern, dump, re.MULTILINE)


def _rqs_known_hang(stack: str) -> bool:
    """A thread (the main one: RQ tears down there) waits in RQ's ``unsubscribe()`` of the
    worker's ``teardown()``, for redis-py's pubsub thread (the module's docstring)."""
    frames = re.findall(r'File "([^"]*)", line \d+ in (\w+)', stack)
    rq_frames = {name for path, name in frames if f"{os.sep}rq{os.sep}worker" in path}
    return {"unsubscribe", "teardown"} <= rq_frames


def run_worker(
    args: list[str], env: dict[str, str], cwd: Path, capture_server: CaptureServer, events: int
) -> str:
    """Run a burst worker to its end, within CHILD_TIMEOUT; its output (stdout, then
    stderr). It must exit 0; or, still running QUIT_GRACE seconds after RQ logged "done,
    quitting", it is tolerated and killed only if the ``events`` expected ``$exception``
    events have arrived and its main thread is in RQ's known hang (the module's docstring).
    Any other hang fails the test, with every process's stacks."""
    out_path, err_path = cwd / "worker.out", cwd / "worker.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            args, cwd=cwd, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=out, stderr=err
        )

    def output() -> str:
        return out_path.read_text() + err_path.read_text()

    deadline = time.monotonic() + CHILD_TIMEOUT
    quitting_since = None
    while process.poll() is None:
        now = time.monotonic()
        if quitting_since is None and RQ_DONE in output():
            quitting_since = now
        if now > deadline or (quitting_since is not None and now > quitting_since + QUIT_GRACE):
            break
        time.sleep(0.05)
    arrived: list[dict[str, Any]] = []
    if process.poll() is None and quitting_since is not None:
        arrived = capture_server.wait_for_events(
            events, timeout=max(1.0, deadline - time.monotonic())
        )
    if process.poll() is None:
        _dump_and_kill(process)
        text = output()
        known = [stack for stack in _thread_stacks(text) if _rqs_known_hang(stack)]
        if quitting_since is None:
            pytest.fail(f"{args[1:3]} hung before RQ's done; stacks and output:\n{text[-20000:]}")
        problems = []
        if len(arrived) < events:
            problems.append(f"only {len(arrived)} of the {events} events arrived")
        if not known:
            problems.append("no thread of it is in RQ's unsubscribe (teardown)")
        if problems:
            pytest.fail(
                f"{args[1:3]} hung after RQ's done: {'; '.join(problems)}; stacks and output:\n"
                f"{text[-20000:]}"
            )
        print(f"tolerated RQ's known hang in unsubscribe (redis-py's stop()):\n{known[0]}")
        return text
    text = output()
    assert process.returncode == 0, f"{args[1:3]} exited {process.returncode}:\n{text[-5000:]}"
    return text


@pytest.fixture
def app_env(tmp_path: Path, capture_server: CaptureServer, redis_url: str) -> dict[str, str]:  # noqa: F811
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "jobs.py").write_text(JOBS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(tmp_path), str(Path(__file__).parent.parent), env.get("PYTHONPATH")])
    )
    env["CAPTURE_URL"] = capture_server.url
    env["REDIS_URL"] = redis_url
    return env


def rq_worker(env: dict[str, str], path: Path, queue: str, *options: str) -> list[str]:
    """``rq worker --burst`` (the venv's command) on ``queue``."""
    command = str(Path(sys.executable).with_name("rq"))
    url = env["REDIS_URL"]
    return [command, "worker", "--burst", "-u", url, "--path", str(path), *options, queue]


def by_job(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        grouped.setdefault(event["properties"].get("rq_job_id", "-"), []).append(event)
    return grouped


@pytest.mark.parametrize("worker_class", ["rq.worker.Worker", "rq.worker.SimpleWorker"])
def test_a_jobs_final_failure_is_one_event_of_the_enqueuer(
    worker_class: str, app_env: dict[str, str], capture_server: CaptureServer, tmp_path: Path
) -> None:
    queue = worker_class.rsplit(".", 1)[1].lower()
    produced = run_child(
        [sys.executable, "-c", PRODUCER, queue, str(tmp_path / "flaky-marker")], app_env, tmp_path
    )
    ids = json.loads(produced.strip().splitlines()[-1])
    run_worker(
        rq_worker(app_env, tmp_path, queue, "-c", "app", "-w", worker_class),
        app_env,
        tmp_path,
        capture_server,
        events=3,
    )
    # The worker has ended: the horses' events (and everything else) were delivered.
    events = capture_server.exception_events()
    jobs = by_job(events)
    assert set(jobs) == {ids["retried"], ids["once"], ids["anon"]}, [
        (e["properties"].get("$exception_source"), e["properties"]["$exception_list"][0]["value"])
        for e in events
    ]
    assert all(len(job_events) == 1 for job_events in jobs.values()), jobs

    for event in events:
        props = event["properties"]
        assert props["$exception_source"] == "rq.exception_handler"
        assert props["$exception_handled"] is False
        assert props["$exception_level"] == "error"
        root = props["$exception_list"][0]
        assert root["mechanism"]["type"] == "task"
        assert root["mechanism"]["handled"] is False
        assert props["rq_queue"] == queue
        functions = {frame["function"] for frame in root["stacktrace"]["frames"]}
        assert functions & {"always_fails", "fails_once"}

    (retried,) = jobs[ids["retried"]]
    props = retried["properties"]
    assert retried["distinct_id"] == "user-42"
    assert props["$session_id"] == "s-1"
    assert props["plan"] == "pro"
    assert props["tenant"] == "acme"
    assert props["rq_job_func"] == "app.always_fails"
    assert props["rq_job_id"] == ids["retried"]
    assert props["rq_retries"] == 2
    assert props["$exception_list"][0]["type"] == "ValueError"
    assert props["$exception_list"][0]["value"] == "card declined A"
    steps = props["$exception_steps"]
    attempts = [s for s in steps if "rq_attempt" in s]
    assert [s["rq_attempt"] for s in attempts] == [1, 2]
    assert all("ValueError: card declined A" in s["$message"] for s in attempts)
    assert attempts[0]["$timestamp"] <= attempts[1]["$timestamp"]
    # The earlier attempts come first, then the final attempt's own steps, and nothing of
    # the worker's own log or of other jobs.
    assert steps[:2] == attempts
    assert [s["$message"] for s in steps[2:]] == ["charging card A"]

    (once,) = jobs[ids["once"]]
    assert once["distinct_id"] == "user-42"
    assert once["properties"]["$session_id"] == "s-1"
    assert once["properties"]["plan"] == "pro"
    assert once["properties"]["tenant"] == "acme"
    assert once["properties"]["rq_retries"] == 0
    assert once["properties"]["rq_job_func"] == "app.fails_once"
    assert "$exception_steps" not in once["properties"]

    # Enqueued outside the bind() block: personless, and nothing of the other jobs leaks
    # into it (SimpleWorker runs every job in one process).
    (anonymous,) = jobs[ids["anon"]]
    assert anonymous["distinct_id"] != "user-42"
    assert anonymous["properties"]["$process_person_profile"] is False
    assert "plan" not in anonymous["properties"]
    assert "tenant" not in anonymous["properties"]
    assert "$session_id" not in anonymous["properties"]


def test_start_up_code_that_runs_only_when_the_horse_imports_the_job_module(
    app_env: dict[str, str], capture_server: CaptureServer, tmp_path: Path
) -> None:
    """``rq worker`` without ``-c``: install() runs in each forked horse, when it imports
    the job's module, after the job started. The final failure is still one event of the
    enqueuer, with its attempts, delivered before the horse exits."""
    produced = run_child(
        [sys.executable, "-c", PRODUCER, "lazy", str(tmp_path / "flaky-marker")], app_env, tmp_path
    )
    ids = json.loads(produced.strip().splitlines()[-1])
    run_worker(rq_worker(app_env, tmp_path, "lazy"), app_env, tmp_path, capture_server, events=3)
    jobs = by_job(capture_server.exception_events())
    assert set(jobs) == {ids["retried"], ids["once"], ids["anon"]}
    assert all(len(job_events) == 1 for job_events in jobs.values()), jobs
    (retried,) = jobs[ids["retried"]]
    assert retried["distinct_id"] == "user-42"
    assert retried["properties"]["plan"] == "pro"
    assert retried["properties"]["rq_retries"] == 2
    attempts = [s["rq_attempt"] for s in retried["properties"]["$exception_steps"]]
    assert attempts == [1, 2]


def test_the_exception_handler_alone_reports_from_the_forked_horse(
    app_env: dict[str, str],
    capture_server: CaptureServer,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    """A worker without install(): ``make_exception_handler(client)`` passed to
    ``Worker``; the producer instrumented by ``posthog_errors.rq.instrument()``."""
    connection = Redis.from_url(redis_url)
    queue = Queue("handler", connection=connection)
    undo = posthog_errors.rq.instrument()
    try:
        with (
            posthog_errors.bind("user-42", session_id="s-1", properties={"plan": "pro"}),
            posthog.new_context(fresh=True, capture_exceptions=False),
        ):
            posthog.tag("tenant", "acme")
            retried = queue.enqueue("jobs.always_fails", "H", retry=Retry(max=1))
            recovered = queue.enqueue("jobs.flaky", str(tmp_path / "m"), retry=Retry(max=1))
    finally:
        undo()
    assert retried.meta["posthog_errors"] == {
        "distinct_id": "user-42",
        "session_id": "s-1",
        "properties": {"plan": "pro"},
        "tags": {"tenant": "acme"},
    }
    run_worker(
        [sys.executable, "-c", HANDLER_WORKER, "handler"],
        app_env,
        tmp_path,
        capture_server,
        events=1,
    )
    events = capture_server.exception_events()
    assert len(events) == 1, events
    (event,) = events
    props = event["properties"]
    assert event["distinct_id"] == "user-42"
    assert props["$session_id"] == "s-1"
    assert props["plan"] == "pro"
    assert props["tenant"] == "acme"
    assert props["$exception_source"] == "rq.exception_handler"
    assert props["rq_job_id"] == retried.id != recovered.id
    assert props["rq_queue"] == "handler"
    assert props["rq_retries"] == 1
    assert [s["rq_attempt"] for s in props["$exception_steps"]] == [1]


def test_instrument_is_idempotent_and_undone(redis_url: str) -> None:  # noqa: F811
    from posthog_errors.integrations import rq as integration

    worker_class = integration._WORKER_CLASS
    originals = (
        Job.__dict__["create"],
        # Inherited before rq 2.7 (Worker's handle_exception is BaseWorker's).
        worker_class.perform_job,
        worker_class.handle_exception,
    )
    rq_logger = logging.getLogger("rq.worker")
    connection = Redis.from_url(redis_url)

    first = posthog_errors.rq.instrument()
    second = posthog_errors.rq.instrument()
    try:
        patched = Job.__dict__["create"]
        assert patched is not originals[0]
        assert worker_class.perform_job is not originals[1]
        assert worker_class.handle_exception is not originals[2]
        assert rq_logger.filters.count(integration._FILTER) == 1
        with posthog_errors.bind("user-7", properties={"plan": "pro", "when": object()}):
            carried = Job.create(print, connection=connection)
            own = Job.create(print, connection=connection, meta={"posthog_errors": {"x": 1}})
        bare = Job.create(print, connection=connection)
        with posthog.new_context(fresh=True, capture_exceptions=False):
            posthog.tag("tenant", "acme")
            posthog.tag("\x00", "a name that cleans to nothing: left out")
            tagged = Job.create(print, connection=connection)
        first()
        assert Job.__dict__["create"] is patched  # the second call is still in place
    finally:
        first()
        second()
    assert carried.meta["posthog_errors"]["distinct_id"] == "user-7"
    assert carried.meta["posthog_errors"]["properties"]["plan"] == "pro"
    assert isinstance(carried.meta["posthog_errors"]["properties"]["when"], str)  # JSON-safe
    assert own.meta["posthog_errors"] == {"x": 1}  # the app's own value is kept
    assert "posthog_errors" not in bare.meta  # nothing bound: nothing stored
    assert tagged.meta["posthog_errors"] == {"tags": {"tenant": "acme"}}  # tags alone
    assert (
        Job.__dict__["create"],
        worker_class.perform_job,
        worker_class.handle_exception,
    ) == originals
    assert integration._FILTER not in rq_logger.filters


def test_importing_posthog_errors_does_not_import_rq() -> None:
    code = textwrap.dedent(
        """
        import sys
        import posthog_errors
        assert "rq" not in sys.modules, "posthog_errors imported rq"
        sys.modules["rq"] = None  # rq not installed
        try:
            import posthog_errors.rq
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("posthog_errors.rq needs rq: pip install 'posthog-errors[rq]'")
