"""Celery: real workers (the prefork pool and the solo pool) against a real Redis.

The app module is docs/celery.md's set-up code (read from the page, so the documented
snippet is the one under test), pointed at the test's capture server and Redis, plus the
tasks below. The worker is ``celery -A celery_app worker`` in a child process, which runs
that start-up code as in production; the producer is another child process, the "web
request", that enqueues inside ``posthog_errors.bind(...)`` and waits for every task to
finish. The app's posthog client only sends on an explicit flush (``flush_interval=60``),
so an event that arrives shows which flush delivered it: the prefork child's after its
task, or the warm shutdown's. Assertions are on the JSON the capture server received,
after the worker exited, so that "no event" means none was ever sent.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from posthog_errors.capture_server import CaptureServer
from tests.redis_server import redis_url  # noqa: F401

# Celery before 5.7 hands a task killed by its hard time limit to no task failure path the
# integration sees: only Celery's own error records report it (docs/celery.md says so).
_CELERY_VERSION = tuple(int(part) for part in importlib.metadata.version("celery").split(".")[:2])
HARD_LIMIT_IS_A_TASK_EVENT = _CELERY_VERSION >= (5, 7)

pytest.importorskip("celery")  # a dev dependency; without it the suite says so

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "celery.md"
DOC_CLIENT = 'posthog.Posthog("phc_...", host="https://us.i.posthog.com")'
DOC_BROKER = '"redis://localhost:6379/0"'
PERSON = {"distinct_id": "user-42", "session_id": "s-1", "plan": "pro"}
TAGS = {"tenant": "acme"}  # posthog.tag() where the producer enqueues
HANG_BOUND = 50  # seconds before a child process dumps its threads and exits

# Appended to the documented set-up: the tasks, and what the test needs to see them run.
TASKS = """
import logging

import redis
from celery.exceptions import Ignore, Reject

app.conf.update(
    result_backend=app.conf.broker_url,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
_markers = redis.Redis.from_url(app.conf.broker_url)


def ran(name):
    _markers.rpush("ran", name)


class ChargeError(Exception):
    pass


@app.task
def fails(order):
    raise ChargeError(f"card declined for order {order}")


@app.task(bind=True, autoretry_for=(ConnectionError,), max_retries=2,
          retry_kwargs={"countdown": 0})
def flaky(self):
    raise ConnectionError(f"gateway down (attempt {self.request.retries + 1})")


@app.task(bind=True, max_retries=1)
def manual(self):
    try:
        raise TimeoutError(f"too slow (attempt {self.request.retries + 1})")
    except TimeoutError as error:
        raise self.retry(exc=error, countdown=0.1)


@app.task(bind=True, max_retries=3)
def recovers(self):
    if self.request.retries == 0:
        # outside an except block: the attempt is read from retry()'s own arguments
        raise self.retry(exc=ValueError("first try"), countdown=0)
    return "ok"


@app.task
def ignored():
    ran("ignored")
    raise Ignore()


@app.task
def rejected():
    ran("rejected")
    raise Reject("bad payload", requeue=False)


class Cleanup(app.Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        logging.getLogger("proj").exception("cleaning up after %s", task_id, exc_info=exc)


@app.task(base=Cleanup)
def cleans_up():
    raise KeyError("missing row")


@app.task
def spawns():
    return fails.delay("child").id


@app.task(time_limit=0.5)
def stuck():
    import time
    time.sleep(30)
"""

# The web request: enqueue as a person, then wait until every task is done.
PRODUCER = """
import faulthandler, json, time
faulthandler.dump_traceback_later({hang}, exit=True)

import posthog
import posthog_errors
import celery_app as proj

with (
    posthog_errors.bind("user-42", session_id="s-1", properties={{"plan": "pro"}}),
    posthog.new_context(fresh=True, capture_exceptions=False),
):
    posthog.tag("tenant", "acme")  # posthog-python's context tags travel too
    sent = {{name: getattr(proj, name).delay(*args) for name, args in {calls!r}}}
ids = {{name: result.id for name, result in sent.items()}}
for name, result in sent.items():
    if name not in ("ignored", "rejected"):
        value = result.get(timeout=30, propagate=False)
        if name == "spawns":
            ids["child"] = value
            proj.app.AsyncResult(value).get(timeout=30, propagate=False)
waiting = {{name for name in ("ignored", "rejected") if name in sent}}
deadline = time.monotonic() + 30
while waiting - {{m.decode() for m in proj._markers.lrange("ran", 0, -1)}}:
    assert time.monotonic() < deadline, "Ignore/Reject tasks never ran"
    time.sleep(0.05)
print(json.dumps(ids))
"""


def doc_block(marker: str) -> str:
    """The ``python`` code block of docs/celery.md that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"docs/celery.md should have one set-up block with {marker!r}"
    return found[0]


def write_app(tmp_path: Path, marker: str, capture_url: str, broker: str) -> None:
    setup = doc_block(marker)
    assert DOC_CLIENT in setup and DOC_BROKER in setup, "the documented set-up changed"
    client = (
        f'posthog.Posthog("phc_test_key", host={capture_url!r}, flush_interval=60, max_retries=0)'
    )
    setup = setup.replace(DOC_CLIENT, client).replace(DOC_BROKER, repr(broker))
    header = f"import faulthandler\nfaulthandler.dump_traceback_later({HANG_BOUND}, exit=True)\n"
    (tmp_path / "celery_app.py").write_text(header + setup + TASKS)


def child_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env["PYTHONFAULTHANDLER"] = "1"
    return env


class Worker:
    """``celery -A celery_app worker`` in a child process, its output in a file."""

    def __init__(self, tmp_path: Path, pool: str) -> None:
        self.log_path = tmp_path / f"worker-{pool}.log"
        args = [sys.executable, "-m", "celery", "-A", "celery_app", "worker",
                f"--pool={pool}", "--loglevel=INFO", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", f"{pool}@%h"]  # fmt: skip
        if pool == "prefork":
            args.append("--concurrency=2")
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                args, cwd=tmp_path, env=child_env(tmp_path), stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text()[-6000:]

    def warm_shutdown(self) -> None:
        """SIGTERM (Celery's warm shutdown), and wait, bounded, for the worker to exit."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the worker did not stop on SIGTERM:\n{self.log()}")
        assert code == 0, f"worker exited with {code}:\n{self.log()}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def produce(
    tmp_path: Path, calls: list[tuple[str, tuple[Any, ...]]], worker: Worker
) -> dict[str, str]:
    script = tmp_path / "producer.py"
    script.write_text(textwrap.dedent(PRODUCER.format(hang=HANG_BOUND, calls=calls)))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=HANG_BOUND + 10,
    )
    assert result.returncode == 0, f"{result.stderr[-4000:]}\nworker:\n{worker.log()}"
    ids: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return ids


def by_task_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The events, by the id of the task each came from: one each, or the test fails."""
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        task_id = event["properties"].get("celery_task_id")
        assert task_id not in found, f"two events for task {task_id}: {events!r}"
        found[task_id] = event
    return found


def assert_task_event(event: dict[str, Any], task_id: str, retries: int) -> None:
    props = event["properties"]
    assert event["distinct_id"] == PERSON["distinct_id"]
    assert props["$session_id"] == PERSON["session_id"]
    assert props["plan"] == PERSON["plan"]
    assert {key: props.get(key) for key in TAGS} == TAGS
    assert props["celery_task_id"] == task_id
    assert props["celery_retries"] == retries
    assert props["celery_queue"] == "celery"
    assert props["$exception_source"] == "celery.task_failure"
    assert props["$exception_handled"] is False
    assert props["$exception_level"] == "error"
    root = props["$exception_list"][0]
    assert root["mechanism"]["type"] == "task"
    assert root["mechanism"]["handled"] is False


def steps_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in event["properties"].get("$exception_steps", []) if "attempt" in s]


def redis_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def test_prefork_pool_reports_each_final_failure_once_to_the_enqueuer(
    capture_server: CaptureServer,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    write_app(tmp_path, "posthog_errors.install(", capture_server.url, redis_db(redis_url, 1))
    worker = Worker(tmp_path, "prefork")
    try:
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("fails", ("web",)),
            ("flaky", ()),
            ("manual", ()),
            ("recovers", ()),
            ("ignored", ()),
            ("rejected", ()),
            ("cleans_up", ()),
            ("spawns", ()),
            ("stuck", ()),
        ]
        ids = produce(tmp_path, calls, worker)
        # The pool's children sent their events when their tasks ended, before any
        # shutdown (the main process's own error records may arrive meanwhile too).
        children = {ids[name] for name in ("fails", "flaky", "manual", "cleans_up", "child")}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            received = capture_server.exception_events()
            arrived = set(by_task_id([e for e in received if "celery_task_id" in e["properties"]]))
            if children <= arrived:
                break
            time.sleep(0.05)
        assert children <= arrived, f"{arrived!r}\n{worker.log()}"
        worker.warm_shutdown()
    finally:
        worker.kill()

    received = capture_server.exception_events()
    # Besides the tasks' own events, only the error records the worker's main process
    # logs about the hard time limit ("Hard time limit (0.5s) exceeded", and at times
    # "Process 'ForkPoolWorker-1' ... exited with 'signal 9 (SIGKILL)'"; before Celery 5.7
    # also the TimeLimitExceeded traceback), which
    # install()'s logging hook reports as messages, as it does any error record.
    logged = [e for e in received if "celery_task_id" not in e["properties"]]
    messages = [e["properties"]["$exception_list"][0]["value"] for e in logged]
    assert all(e["properties"]["$exception_source"] == "python.logging" for e in logged)
    assert any(m.startswith("Hard time limit (0.5s) exceeded") for m in messages), messages
    # Celery before 5.7 also logs the time limit's traceback as an error record of its own.
    assert all(
        m.startswith("Hard time limit") or "signal 9" in m or "TimeLimitExceeded" in m
        for m in messages
    ), messages
    if not HARD_LIMIT_IS_A_TASK_EVENT:
        assert any("TimeLimitExceeded" in m for m in messages), messages
    events = by_task_id([e for e in received if e not in logged])
    # None for the task that succeeded on retry, nor for Ignore / Reject, and no second
    # event from Celery's own "Task ... raised unexpected" record of the same exception.
    failed = ["fails", "flaky", "manual", "cleans_up", "child"]
    failed += ["stuck"] if HARD_LIMIT_IS_A_TASK_EVENT else []
    assert set(events) == {ids[name] for name in failed}, f"{events!r}\n{worker.log()}"

    if HARD_LIMIT_IS_A_TASK_EVENT:
        # A hard time limit: reported by the worker's main process, which sent it on warm
        # shutdown, with the person (Celery hands over the request the second time).
        stuck = events[ids["stuck"]]
        assert_task_event(stuck, ids["stuck"], retries=0)
        assert stuck["properties"]["$exception_list"][0]["type"] == "TimeLimitExceeded"

    web = events[ids["fails"]]
    assert_task_event(web, ids["fails"], retries=0)
    assert web["properties"]["celery_task_name"] == "celery_app.fails"
    assert web["properties"]["$exception_list"][0]["type"] == "ChargeError"
    assert web["properties"]["$exception_list"][0]["value"] == "card declined for order web"
    assert web["properties"]["celery_root_id"] == ids["fails"]
    assert "celery_parent_id" not in web["properties"]
    assert steps_of(web) == []

    # autoretry_for + max_retries=2: the third attempt's exception, the first two as steps
    flaky = events[ids["flaky"]]
    assert_task_event(flaky, ids["flaky"], retries=2)
    assert flaky["properties"]["$exception_list"][0]["value"] == "gateway down (attempt 3)"
    steps = steps_of(flaky)
    assert [s["attempt"] for s in steps] == [1, 2]
    assert [s["exception_type"] for s in steps] == ["ConnectionError"] * 2
    assert [s["exception_message"] for s in steps] == [
        "gateway down (attempt 1)",
        "gateway down (attempt 2)",
    ]
    assert steps[0]["$message"] == (
        "Attempt 1 failed: ConnectionError: gateway down (attempt 1) (retried in 0 s)"
    )
    assert steps[0]["$timestamp"] <= steps[1]["$timestamp"]

    # self.retry(exc=..., countdown=0.1, max_retries=1)
    manual = events[ids["manual"]]
    assert_task_event(manual, ids["manual"], retries=1)
    assert manual["properties"]["$exception_list"][0]["type"] == "TimeoutError"
    assert [(s["attempt"], s["exception_message"], s["countdown"]) for s in steps_of(manual)] == [
        (1, "too slow (attempt 1)", 0.1)
    ]

    # A task enqueued by a task: the person passed on, the parent and root task named.
    child = events[ids["child"]]
    assert_task_event(child, ids["child"], retries=0)
    assert child["properties"]["celery_parent_id"] == ids["spawns"]
    assert child["properties"]["celery_root_id"] == ids["spawns"]
    assert child["properties"]["$exception_list"][0]["value"] == "card declined for order child"

    # The user's on_failure logged the exception first: still one event, with the person
    # and the task's properties (the logging door's, since that one sent it).
    cleaned = events[ids["cleans_up"]]
    assert cleaned["distinct_id"] == PERSON["distinct_id"]
    assert cleaned["properties"]["plan"] == PERSON["plan"]
    assert cleaned["properties"]["tenant"] == TAGS["tenant"]
    assert cleaned["properties"]["celery_task_id"] == ids["cleans_up"]
    assert cleaned["properties"]["$exception_list"][0]["type"] == "KeyError"


def test_solo_pool_with_instrument_flushes_on_warm_shutdown(
    capture_server: CaptureServer,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    write_app(tmp_path, "instrument(", capture_server.url, redis_db(redis_url, 2))
    worker = Worker(tmp_path, "solo")
    try:
        ids = produce(tmp_path, [("flaky", ()), ("recovers", ()), ("ignored", ())], worker)
        # Both failed tasks are done. Their events leave about 0.3 s after capture (the
        # prompt send), whether or not the warm shutdown's exit flush gets to them first:
        # either way each arrives once, and the worker still exits 0.
        worker.warm_shutdown()
    finally:
        worker.kill()
    events = by_task_id(capture_server.exception_events())
    assert set(events) == {ids["flaky"]}, f"{events!r}\n{worker.log()}"
    flaky = events[ids["flaky"]]
    assert_task_event(flaky, ids["flaky"], retries=2)
    assert [s["attempt"] for s in steps_of(flaky)] == [1, 2]


# -- in-process: the API, and the headers both ways with posthog-python -----------------


def test_importing_posthog_errors_never_imports_celery_and_the_shim_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        import posthog_errors
        posthog_errors.install(api_key="phc_x", host="http://127.0.0.1:9")
        assert "celery" not in sys.modules, "posthog_errors imported celery"
        sys.modules["celery"] = None  # as if it were not installed
        try:
            import posthog_errors.celery
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "posthog_errors.celery needs celery: pip install 'posthog-errors[celery]'"
    )


def test_instrument_is_idempotent_and_undoable() -> None:
    from celery import signals

    import posthog_errors.celery
    from posthog_errors import _reporter

    before = len(signals.task_failure.receivers)
    handle = posthog_errors.celery.instrument()
    try:
        assert posthog_errors.celery.instrument() is handle
        assert len(signals.task_failure.receivers) == before + 1
        # install() finds it instrumented: the explicit set-up stays, its undo does nothing
        undo = posthog_errors.celery.install_integration(_reporter.Reporter())
        undo()
        assert handle.connected
    finally:
        handle.uninstrument()
    handle.uninstrument()  # a second time: nothing
    assert len(signals.task_failure.receivers) == before
    # install()'s set-up gives way to an explicit instrument(), and its undo then does nothing
    undo = posthog_errors.celery.install_integration(_reporter.Reporter())
    explicit = posthog_errors.celery.instrument()
    try:
        assert explicit is not undo
        undo()
        assert explicit.connected
        assert len(signals.task_failure.receivers) == before + 1
    finally:
        explicit()
    assert len(signals.task_failure.receivers) == before


def test_headers_interoperate_with_posthog_pythons_celery_integration(
    capture_server: CaptureServer, posthog_client: Any
) -> None:
    from celery import Celery
    from posthog import contexts
    from posthog.integrations.celery import PosthogCeleryIntegration

    import posthog_errors
    import posthog_errors.celery
    from posthog_errors.integrations import celery as integration

    # ours -> posthog-python: it reads request.headers, the nested dict
    headers: dict[str, Any] = {"id": "t-1", "retries": 0}
    tags = {"tenant": "acme", "n": 3, "ok": True, "nested": {"a": [1, "é"]}}
    with (
        posthog_errors.bind("user-42", session_id="s-1", properties={"plan": "pro"}),
        contexts.new_context(fresh=True, capture_exceptions=False),
    ):
        for key, value in tags.items():
            contexts.tag(key, value)
        integration._write_headers(headers)
        # the same header, byte for byte, as posthog-python's producer writes it
        theirs_now: dict[str, Any] = {}
        PosthogCeleryIntegration(posthog_client)._on_before_task_publish(headers=theirs_now)
    assert integration.TAGS_HEADER == "X-POSTHOG-CONTEXT-TAGS"
    assert headers["X-POSTHOG-CONTEXT-TAGS"] == theirs_now["X-POSTHOG-CONTEXT-TAGS"]
    assert headers["headers"]["X-POSTHOG-CONTEXT-TAGS"] == json.dumps(tags)
    request = type("Request", (), headers)()
    seen = PosthogCeleryIntegration()._extract_headers(request)
    assert seen["X-POSTHOG-DISTINCT-ID"] == "user-42"
    assert seen["X-POSTHOG-SESSION-ID"] == "s-1"
    assert PosthogCeleryIntegration()._extract_propagated_tags(request) == tags

    # posthog-python -> ours: a task run with the headers posthog-python's producer wrote
    theirs: dict[str, Any] = {}
    with contexts.new_context(fresh=True, capture_exceptions=False):
        contexts.identify_context("their-user")
        contexts.set_context_session("their-session")
        contexts.tag("tenant", "their-tenant")
        contexts.tag(" \x00region\n", "eu\x07")  # cleaned as the identity headers are
        # a tag a posthog-python worker passes on from the task that enqueued: the task's
        # own value wins, as in posthog-python
        contexts.tag("celery_task_name", "the-parent-task")
        PosthogCeleryIntegration(posthog_client)._on_before_task_publish(headers=theirs)
    app = Celery("interop", set_as_current=False)

    @app.task
    def breaks() -> None:
        raise LookupError("no such order")

    with posthog_errors.celery.instrument(app, client=posthog_client):
        # apply() runs it here (eager), with these as request.headers: only this test
        # does; the others run real workers.
        breaks.apply(headers=theirs["headers"])
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["distinct_id"] == "their-user"
    assert event["properties"]["$session_id"] == "their-session"
    assert event["properties"]["celery_task_name"].endswith("breaks")
    assert event["properties"]["tenant"] == "their-tenant"
    assert event["properties"]["region"] == "eu"
    assert contexts.get_tags() == {}  # the task's context tags ended with it
    assert event["properties"]["$exception_source"] == "celery.task_failure"
