"""Issue 12, "Cost on the caller": what a log message costs the logging thread.

Two promises. The caller's cost does not grow with the message size: a huge template is
fingerprinted from a bounded head, and huge string arguments are cut before formatting.
And f-string messages from one line share one rate-limit budget: a message is limited by
its call site (plus its template when it was logged with arguments), not by its text.

Sizes are checked through memory (``tracemalloc`` in a child process), never through time:
a copy of a 50 MB message shows as 50 MB allocated, whatever the machine's speed.
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import json
import logging
import logging.handlers
import queue
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import posthog_errors
from posthog_errors import PostHogHandler, _rate_limit
from posthog_errors._log_message import (
    TEXT_HEAD,
    fingerprint,
    group_digest,
    mark_structlog_message,
    was_sent_by_structlog,
)
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.handler import _message
from posthog_errors.structlog import PostHogProcessor
from tests.scripts import run_script

BURST = _rate_limit.DEFAULT_BURST
MB50 = 50 * 1024 * 1024


@pytest.fixture
def no_refill() -> None:
    """The default burst with no refill, so the counts below do not depend on how long the
    loops take (the refill, 1/s by default, is covered in test_rate_limit.py)."""
    _rate_limit.configure((BURST, 0.0))


@pytest.fixture
def logger(reporter: Reporter) -> Iterator[logging.Logger]:
    log = logging.getLogger("test.cost")
    log.handlers = [PostHogHandler(reporter=reporter)]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers = []


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def outcome() -> dict[str, int]:
    assert posthog_errors.flush(10)
    return posthog_errors.stats()


def frames_line(event: dict[str, Any]) -> str:
    line: str = event["properties"]["$exception_list"][0]["stacktrace"]["frames"][-1][
        "context_line"
    ]
    return line.strip()


# -- fingerprints of huge templates -------------------------------------------------------


def old_fingerprint(logger_name: str, template: str) -> str:
    """The fingerprint before issue 12 (the whole template hashed)."""
    if len(template) <= 200:
        return f"{logger_name}:{template}"
    digest = hashlib.sha256(template.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{logger_name}:{template[:100]}...{digest}"


@pytest.mark.parametrize("length", [1, 200, 201, 5000, TEXT_HEAD])
def test_fingerprints_of_templates_up_to_the_head_are_unchanged(length: int) -> None:
    template = ("order %s failed; é\ud800 " * (length // 20 + 1))[:length]
    assert fingerprint("app", template) == old_fingerprint("app", template)


def test_a_huge_template_is_fingerprinted_by_its_head_and_length() -> None:
    """The intended trade-off: the same length and the same first 8192 characters make the
    same fingerprint, whatever comes after (a 50 MB template costs what an 8 KB one does)."""
    head = "import failed for rows: "
    base = head + "x" * (MB50 - len(head))
    same_head_later_change = base[:-10] + "y" * 10
    other_head = "Import" + base[6:]
    longer = base + "x"
    shorter_than_head_after = base[: TEXT_HEAD + 1]
    prints = [
        fingerprint("app", t)
        for t in (base, same_head_later_change, other_head, longer, shorter_than_head_after)
    ]
    assert prints[0] == prints[1]
    assert len(set(prints[1:])) == 4
    assert prints[0].startswith("app:" + base[:100] + "...")
    assert len(prints[0]) == len("app:") + 100 + 3 + 16
    # Not the whole-template hash of before: content past the head was never read.
    assert prints[0] != old_fingerprint("app", base)


# -- a 50 MB message through the handler, in a child process ------------------------------

BIG_MESSAGE_SCRIPT = """
import json, logging, tracemalloc
from posthog_errors import PostHogHandler

log = logging.getLogger("test.big")
log.handlers = [PostHogHandler(client=client)]
log.propagate = False
big = "x" * (50 * 1024 * 1024)
log.error("warm up %s", 1)  # imports, caches, the worker and client threads
assert posthog_errors.flush(30)

def fstring(): log.error(big)
def with_args(): log.error("payload %s end", big)
def as_mapping(): log.error("payload %(body)s", {"body": big})
def bad_args(): log.error("two %s %s", big)
def with_exception(): log.error("failed: %s", big, exc_info=ValueError("boom"))

peaks = {}
tracemalloc.start()
for call in (fstring, with_args, as_mapping, bad_args, with_exception):
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    call()
    peaks[call.__name__] = tracemalloc.get_traced_memory()[1] - before
tracemalloc.stop()
flushed = posthog_errors.flush(30)
print(json.dumps({"peaks": peaks, "flushed": flushed, "stats": posthog_errors.stats()}))
"""


def test_a_50_mb_message_costs_the_caller_no_copy_and_arrives_bounded(
    capture_server: CaptureServer,
) -> None:
    result = run_script(BIG_MESSAGE_SCRIPT, capture_server.url, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["flushed"] is True
    assert report["stats"]["sent"] == 6 and report["stats"]["rate_limited"] == 0
    # Memory the logging call allocated, at its peak: a copy, an encoding or a formatting
    # of the message would be 50 MB. What is left is the record and an 8 KB head.
    for name, peak in report["peaks"].items():
        assert peak < 1024 * 1024, (name, peak)

    events = capture_server.wait_for_events(6)
    by_function = {
        e["properties"]["$exception_list"][0]["stacktrace"]["frames"][-1]["function"]: e
        for e in events
        if e["properties"]["$exception_list"][0]["type"].startswith("LogMessage[")
    }
    big = "x" * MB50
    fstring = by_function["fstring"]["properties"]
    # Grouped by PostHog from the synthetic type, a digest of the bounded fingerprint; no
    # manual fingerprint; a name of at most 255 bytes.
    assert "$exception_fingerprint" not in fstring
    assert fstring["$exception_list"][0]["type"] == (
        f"LogMessage[{group_digest(fingerprint('test.big', big))}]"
    )
    assert fstring["$issue_name"] == "test.big: " + "x" * (255 - len("test.big: ") - 3) + "..."
    for name, start in (
        ("fstring", "xxx"),
        ("with_args", "payload xxx"),
        ("as_mapping", "payload xxx"),
    ):
        value = by_function[name]["properties"]["$exception_list"][0]["value"]
        # The server's limit: 10,000 UTF-8 bytes.
        assert value.startswith(start) and value.endswith("...") and len(value) == 10_000, name
    bad = by_function["bad_args"]["properties"]["$exception_list"][0]["value"]
    assert bad.startswith("two %s %s (bad logging arguments: ('xxx") and len(bad) < 1200
    assert by_function["with_args"]["properties"]["$issue_name"] == "test.big: payload %s end"
    [exception] = [
        e
        for e in events
        if not e["properties"]["$exception_list"][0]["type"].startswith("LogMessage[")
    ]
    assert exception["properties"]["$exception_list"][0]["value"] == "boom"
    log_message = exception["properties"]["log_message"]
    assert log_message.startswith("failed: xxx") and len(log_message) <= 1024


def test_cut_arguments_format_like_the_whole_message_up_to_the_cut() -> None:
    big = "é" * (3 * TEXT_HEAD) + "tail"

    def record(msg: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord("app", logging.ERROR, __file__, 1, msg, args, None)

    for made in (
        record("%s and %d", big, 3),
        record("%(a)s/%(b)s", {"a": big, "b": "b"}),
        record("%-5s|%.9000s", big, big),
    ):
        whole, cut = made.getMessage(), _message(made, 8192)
        assert len(cut) < len(whole) and whole.startswith(cut[: TEXT_HEAD + 1])
    small = record("%s and %d", "short", 3)
    assert _message(small, 8192) == small.getMessage() == "short and 3"


def test_a_huge_message_from_structlog_is_recognised_by_the_handler_once() -> None:
    """The structlog processor saw the whole message, the handler its cut version: the
    doors compare heads, so the handler skips what structlog already sent."""
    big = "y" * (2 * TEXT_HEAD)
    made = logging.LogRecord("app", logging.ERROR, __file__, 1, "got %s", (big,), None)

    def doors() -> None:
        mark_structlog_message({"event": "got %s"}, made.getMessage())
        assert was_sent_by_structlog(made, _message(made, 100))
        assert not was_sent_by_structlog(made, _message(made, 100))  # consumed
        mark_structlog_message({"event": "got %s"}, "got " + "z" * (2 * TEXT_HEAD))
        assert not was_sent_by_structlog(made, _message(made, 100))

    contextvars.copy_context().run(doors)  # the mark stays in a context of its own


# -- rate limited by call site ------------------------------------------------------------


def test_f_string_messages_from_one_line_share_one_budget(
    capture_server: CaptureServer, logger: logging.Logger, no_refill: None
) -> None:
    for uid in range(1000):
        logger.error(f"user {uid} not found")
    counts = outcome()
    assert counts["captured"] == 1000
    assert counts["sent"] == BURST and counts["rate_limited"] == 1000 - BURST
    events = capture_server.wait_for_events(BURST)
    assert len(events) == BURST
    # Grouping is unchanged: an f-string is its own template (its own synthetic type).
    assert len({e["properties"]["$exception_list"][0]["type"] for e in events}) == BURST


def test_two_call_sites_each_get_their_own_budget(
    capture_server: CaptureServer, logger: logging.Logger, no_refill: None
) -> None:
    for uid in range(300):
        logger.error(f"user {uid} not found")
        logger.error(f"order {uid} not found")
    counts = outcome()
    assert counts["sent"] == 2 * BURST and counts["rate_limited"] == 2 * (300 - BURST)
    events = capture_server.wait_for_events(2 * BURST)
    lines = sorted(frames_line(e) for e in events)
    assert lines == sorted(
        ['logger.error(f"user {uid} not found")'] * BURST
        + ['logger.error(f"order {uid} not found")'] * BURST
    )


def test_a_helper_keeps_a_budget_per_template_but_not_per_f_string(
    capture_server: CaptureServer, logger: logging.Logger, no_refill: None
) -> None:
    def report(template: str, *args: object) -> None:
        logger.error(template, *args)  # one line for every message

    for i in range(50):
        report("job %s failed", i)
        report("queue %s full", i)
        report(f"disk {i} gone")
    counts = outcome()
    assert counts["sent"] == 3 * BURST and counts["rate_limited"] == 3 * (50 - BURST)


def test_the_call_site_survives_a_queue_handler(
    capture_server: CaptureServer, reporter: Reporter, no_refill: None
) -> None:
    """Through QueueHandler the PostHog handler runs on the listener's thread: the record
    still names the line that logged."""
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    listener = logging.handlers.QueueListener(records, PostHogHandler(reporter=reporter))
    log = logging.getLogger("test.cost.queued")
    log.handlers = [logging.handlers.QueueHandler(records)]
    log.propagate = False
    listener.start()
    try:
        for uid in range(100):
            log.error(f"user {uid} not found")
            log.error(f"order {uid} not found")
    finally:
        listener.stop()
        log.handlers = []
    counts = outcome()
    assert counts["sent"] == 2 * BURST and counts["rate_limited"] == 2 * (100 - BURST)


def test_without_source_lines_in_records_the_stack_names_the_site(
    capture_server: CaptureServer,
    logger: logging.Logger,
    no_refill: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``logging._srcfile = None`` (a documented speed-up) leaves records without a file and
    line; the call-site frame is the key then, not the logger as a whole."""
    monkeypatch.setattr(logging, "_srcfile", None)
    for uid in range(100):
        logger.error(f"user {uid} not found")
        logger.error(f"order {uid} not found")
    counts = outcome()
    assert counts["sent"] == 2 * BURST and counts["rate_limited"] == 2 * (100 - BURST)


def test_structlog_f_string_events_share_one_budget_per_line(
    capture_server: CaptureServer, reporter: Reporter, no_refill: None, reset_structlog: None
) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            PostHogProcessor(reporter=reporter),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
        cache_logger_on_first_use=False,
    )
    log = structlog.get_logger("test.cost.structlog")
    for uid in range(500):
        log.error(f"user {uid} not found")
        log.error(f"order {uid} not found")
    counts = outcome()
    assert counts["sent"] == 2 * BURST and counts["rate_limited"] == 2 * (500 - BURST)
    events = capture_server.wait_for_events(2 * BURST)
    assert sorted(frames_line(e) for e in events) == sorted(
        ['log.error(f"user {uid} not found")'] * BURST
        + ['log.error(f"order {uid} not found")'] * BURST
    )


def test_structlog_foreign_records_are_limited_by_their_line(
    capture_server: CaptureServer, reporter: Reporter, no_refill: None
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, PostHogProcessor(reporter=reporter)],
        processor=structlog.processors.JSONRenderer(),
    )
    console = logging.StreamHandler(io.StringIO())
    console.setFormatter(formatter)
    log = logging.getLogger("test.cost.foreign")
    log.handlers = [console, PostHogHandler(reporter=reporter)]
    log.propagate = False
    try:
        for uid in range(100):
            log.error(f"user {uid} not found")
            log.error(f"order {uid} not found")
    finally:
        log.handlers = []
    counts = outcome()
    # Sent once per record (the processor marks it, the handler skips it), per line budgets.
    assert counts["captured"] == 200
    assert counts["sent"] == 2 * BURST and counts["rate_limited"] == 2 * (100 - BURST)
