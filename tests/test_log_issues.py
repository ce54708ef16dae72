"""Issue 16, items 5 and 6: log records without an exception become readable, correctly
grouped PostHog issues, grouped by PostHog itself.

A manual ``$exception_fingerprint`` overrides the grouping rules a team sets in PostHog, so
message-only events send none unless the user set one. PostHog then computes the
fingerprint on ingestion. :func:`server_fingerprint` is that computation, as
exception-event.md ("Grouping (read from cymbal's code)") describes it, run here on the
real wire JSON (a real posthog client posting to the loopback capture server): what these
tests assert is what PostHog would group.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.structlog import PostHogProcessor


def server_fingerprint(properties: dict[str, Any]) -> str:
    """The issue fingerprint PostHog's ingestion gives these ``$exception`` properties.

    A manual ``$exception_fingerprint`` wins (hashed when over 64 characters). Otherwise,
    the hash over every entry of ``$exception_list`` of its ``type`` and: with a stack, the
    ``filename``, ``module`` and ``function`` of every in-app frame (a frame without
    ``in_app`` counts as in-app), or of the first frame only when none is in-app; without a
    stack, the entry's ``value``. Line numbers and source lines never count.
    """
    manual = properties.get("$exception_fingerprint")
    if isinstance(manual, str):
        return manual if len(manual) <= 64 else hashlib.sha512(manual.encode()).hexdigest()
    hasher = hashlib.sha512()
    for entry in properties["$exception_list"]:
        hasher.update(entry["type"].encode())
        stacktrace = entry.get("stacktrace")
        if not stacktrace:
            hasher.update(entry.get("value", "").encode())
            continue
        frames = stacktrace["frames"]
        counted = [frame for frame in frames if frame.get("in_app", True)] or frames[:1]
        for frame in counted:
            for part in (frame["filename"], frame.get("module") or "", frame["function"]):
                hasher.update(part.encode())
    return hasher.hexdigest()


def test_the_server_fingerprint_follows_the_spec() -> None:
    """The model above, on hand-made events: type and in-app frames, never line numbers."""

    def frame(function: str, lineno: int, in_app: bool | None = True) -> dict[str, Any]:
        made = {"filename": "app.py", "module": "app", "function": function, "lineno": lineno}
        return made if in_app is None else {**made, "in_app": in_app}

    def event(type_: str, value: str, *frames: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": type_, "value": value}
        if frames:
            entry["stacktrace"] = {"type": "raw", "frames": list(frames)}
        return {"$exception_list": [entry]}

    base = server_fingerprint(event("E", "a", frame("f", 1), frame("lib", 9, False)))
    assert base == server_fingerprint(event("E", "b", frame("f", 2), frame("other", 3, False)))
    assert base == server_fingerprint(event("E", "c", frame("f", 7, None)))  # missing: in-app
    assert base != server_fingerprint(event("F", "a", frame("f", 1)))
    assert base != server_fingerprint(event("E", "a", frame("g", 1)))
    # No in-app frame: the first frame only.
    first = server_fingerprint(event("E", "a", frame("main", 1, False), frame("x", 1, False)))
    assert first == server_fingerprint(event("E", "b", frame("main", 5, False)))
    # No stack: the value.
    assert server_fingerprint(event("E", "a")) != server_fingerprint(event("E", "b"))
    assert server_fingerprint({**event("E", "a"), "$exception_fingerprint": "mine"}) == "mine"


@pytest.fixture
def loggers(reporter: Reporter) -> Iterator[dict[str, logging.Logger]]:
    """Two loggers sending to the capture server through a PostHogHandler each."""
    made = {}
    for name in ("shop.checkout", "shop.billing"):
        logger = logging.getLogger(name)
        logger.handlers = [PostHogHandler(reporter=reporter)]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        made[name] = logger
    yield made
    for logger in made.values():
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def sent(server: CaptureServer, count: int) -> dict[str, dict[str, Any]]:
    """The ``count`` events sent, by their ``case`` property."""
    assert posthog_errors.flush(5)
    events = server.wait_for_events(count)
    assert len(events) == count
    assert len(server.wait_for_events(count + 1, timeout=0.3)) == count  # no duplicate
    by_case = {e["properties"]["case"]: e["properties"] for e in events}
    assert len(by_case) == count
    return by_case


def log(logger: logging.Logger, template: str, *args: object, case: str) -> None:
    """Every record of a test from one call path, so that only logger, template and
    arguments change."""
    logger.error(template, *args, extra={"case": case})


def test_one_template_from_one_logger_is_one_issue_whatever_the_arguments(
    capture_server: CaptureServer, loggers: dict[str, logging.Logger]
) -> None:
    checkout, billing = loggers["shop.checkout"], loggers["shop.billing"]
    for order in ("A-1", "B-2", "C-3"):
        log(checkout, "order %s failed", order, case=f"args {order}")
    log(checkout, "order %s refunded", "A-1", case="other template")
    log(billing, "order %s failed", "A-1", case="other logger")
    # The same template and logger, from another function (another in-app call path).
    checkout.error("order %s failed", "D-4", extra={"case": "other path"})
    events = sent(capture_server, 6)

    same = {server_fingerprint(events[case]) for case in ("args A-1", "args B-2", "args C-3")}
    assert len(same) == 1
    [issue] = same
    # The values differ (the formatted message): only what the server hashes is stable.
    assert events["args A-1"]["$exception_list"][0]["value"] == "order A-1 failed"
    assert events["args B-2"]["$exception_list"][0]["value"] == "order B-2 failed"
    others = {server_fingerprint(events[case]) for case in ("other template", "other logger")}
    assert len(others) == 2 and issue not in others
    # Another call path is another issue, as an exception raised through another path
    # would be: the server hashes the in-app frames' functions (not their lines).
    assert server_fingerprint(events["other path"]) != issue

    for props in events.values():
        assert "$exception_fingerprint" not in props  # PostHog's own grouping, and rules
        entry = props["$exception_list"][0]
        assert entry["type"].startswith("LogMessage[") and entry["mechanism"]["synthetic"]
        assert entry["stacktrace"]["frames"][-1]["in_app"] is True  # the call site
    assert events["args A-1"]["$issue_name"] == "shop.checkout: order %s failed"
    assert events["other path"]["$issue_name"] == "shop.checkout: order %s failed"
    assert events["other template"]["$issue_name"] == "shop.checkout: order %s refunded"
    assert events["other logger"]["$issue_name"] == "shop.billing: order %s failed"


def test_one_call_path_groups_whatever_the_line(
    capture_server: CaptureServer, loggers: dict[str, logging.Logger]
) -> None:
    checkout = loggers["shop.checkout"]
    checkout.error("stock low for %s", "sku-1", extra={"case": "first line"})
    checkout.error("stock low for %s", "sku-2", extra={"case": "second line"})
    events = sent(capture_server, 2)
    assert server_fingerprint(events["first line"]) == server_fingerprint(events["second line"])


def test_a_manual_fingerprint_only_when_the_user_sets_one(
    capture_server: CaptureServer, loggers: dict[str, logging.Logger]
) -> None:
    checkout = loggers["shop.checkout"]
    checkout.error("payment %s declined", "A-1", extra={"case": "template"})
    checkout.error(
        "payment %s declined",
        "A-2",
        extra={"case": "extra", "$exception_fingerprint": "payments-declined"},
    )
    try:
        raise ValueError("card declined")
    except ValueError:
        checkout.exception("checkout failed", extra={"case": "logged exception"})
    posthog_errors.capture_exception(
        TimeoutError("provider"), properties={"case": "manual"}, fingerprint="payments-provider"
    )
    events = sent(capture_server, 4)
    assert "$exception_fingerprint" not in events["template"]
    assert "$exception_fingerprint" not in events["logged exception"]
    assert events["extra"]["$exception_fingerprint"] == "payments-declined"
    assert server_fingerprint(events["extra"]) == "payments-declined"
    assert events["manual"]["$exception_fingerprint"] == "payments-provider"
    # With the user's fingerprint, the name comes from the message (no template known).
    assert events["extra"]["$issue_name"] == "shop.checkout: payment A-2 declined"
    # Exceptions keep PostHog's defaults: their type and value name the issue.
    assert "$issue_name" not in events["logged exception"]


def test_the_issue_name_is_readable_bounded_and_redacted(
    capture_server: CaptureServer, loggers: dict[str, logging.Logger]
) -> None:
    checkout = loggers["shop.checkout"]
    long_template = "commande %s échouée: " + "é€😀 " * 200
    checkout.error(long_template, "A-1", extra={"case": "long"})
    checkout.error("retrying\n  order %s\tnow", "A-1", extra={"case": "whitespace"})
    password = "hunter2-correct-horse"
    checkout.error(f"login failed password={password}", extra={"case": "secret"})
    checkout.error("kept %s", 1, extra={"case": "user name", "$issue_name": "Checkout broke"})
    events = sent(capture_server, 4)

    name = events["long"]["$issue_name"]
    encoded = name.encode("utf-8")
    assert len(encoded) <= 255 and len(encoded) > 240  # cut on a character boundary
    assert name.startswith("shop.checkout: commande %s échouée: é€😀") and name.endswith("...")
    assert events["whitespace"]["$issue_name"] == "shop.checkout: retrying order %s now"
    secret = events["secret"]
    assert password not in secret["$issue_name"] and password not in str(secret)
    assert secret["$issue_name"].startswith("shop.checkout: login failed password=")
    assert events["user name"]["$issue_name"] == "Checkout broke"  # the user's wins
    # The description is left to PostHog's default: the first event's formatted message.
    assert not any("$issue_description" in props for props in events.values())


def test_structlog_messages_group_by_logger_and_event(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            PostHogProcessor(reporter=reporter),
            structlog.processors.KeyValueRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
        cache_logger_on_first_use=False,
    )
    # (as structlog.stdlib.add_logger_name names them)
    checkout = structlog.get_logger().bind(logger="shop.checkout")
    billing = structlog.get_logger().bind(logger="shop.billing")
    for order in (1, 2):
        checkout.error("order failed", order_id=order, case=f"kwargs {order}")
    checkout.error("order refunded", order_id=1, case="other event")
    billing.error("order failed", order_id=1, case="other logger")
    checkout.error("order failed", case="user fingerprint", **{"$exception_fingerprint": "orders"})
    events = sent(capture_server, 5)

    issue = server_fingerprint(events["kwargs 1"])
    assert server_fingerprint(events["kwargs 2"]) == issue
    assert server_fingerprint(events["other event"]) != issue
    assert server_fingerprint(events["other logger"]) != issue
    assert events["kwargs 1"]["$issue_name"] == "shop.checkout: order failed"
    assert events["other logger"]["$issue_name"] == "shop.billing: order failed"
    assert not any(
        "$exception_fingerprint" in props
        for case, props in events.items()
        if case != "user fingerprint"
    )
    assert events["user fingerprint"]["$exception_fingerprint"] == "orders"


def test_a_stdlib_record_is_one_issue_whichever_door_sends_it(
    capture_server: CaptureServer, reporter: Reporter, loggers: dict[str, logging.Logger]
) -> None:
    """Through ``ProcessorFormatter(foreign_pre_chain=[..., PostHogProcessor()])`` and a
    PostHogHandler, a record is sent once, by the first door: the processor (keeping the
    record's logger name and template) or the handler. Both make the same issue."""
    checkout = loggers["shop.checkout"]
    console = logging.StreamHandler(io.StringIO())
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.ExtraAdder(),  # the record's extra= ("case")
                PostHogProcessor(reporter=reporter),
            ],
            processor=structlog.processors.JSONRenderer(),
        )
    )
    handler = PostHogHandler(reporter=reporter)
    for door, handlers in (("processor", [console, handler]), ("handler", [handler, console])):
        checkout.handlers = handlers
        for order in ("A-1", "B-2"):
            checkout.error("order %s failed", order, extra={"case": f"{door} {order}"})
    events = sent(capture_server, 4)
    assert events["processor A-1"]["$exception_source"] == "python.structlog"
    assert events["handler A-1"]["$exception_source"] == "python.logging"
    assert len({server_fingerprint(props) for props in events.values()}) == 1
    assert {props["$issue_name"] for props in events.values()} == {"shop.checkout: order %s failed"}
    assert {props["logger"] for props in events.values()} == {"shop.checkout"}
