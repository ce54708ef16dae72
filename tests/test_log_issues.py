"""Issue 16, items 5 and 6, and issue 25, items 2 and 3: log records without an exception
become readable, correctly grouped PostHog issues, grouped by PostHog itself, under both
fingerprint versions.

A manual ``$exception_fingerprint`` overrides the grouping rules a team sets in PostHog, so
message-only events send none unless the user set one. PostHog then computes the
fingerprint on ingestion, under two versions: it keeps the one an existing issue uses and
creates new issues under V2. :func:`server_fingerprint` models both, as PostHog/posthog's
``rust/cymbal`` computes them (``FingerprintStrategy`` and ``FingerprintVersion`` in its
fingerprinting module, Python frames as ``langs/python.rs`` resolves them, the manual
fingerprint as the grouping stage's ``fingerprint.rs`` takes it), run here on the real wire
JSON (a real posthog client posting to the loopback capture server): what these tests
assert is what PostHog would group, under each version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
import structlog

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.structlog import PostHogProcessor

Version = Literal["v1", "v2"]
VERSIONS: tuple[Version, ...] = ("v1", "v2")

# V2's normalizations (cymbal's ``Normalization`` and ``MessageNormalization``).
_HASHED_CHUNK = re.compile(r"[A-Za-z0-9]{8,}")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_HEX_ID = re.compile(
    r"0x[0-9a-fA-F]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}"
)
_NUMBER = re.compile(r"\d+(\.\d+)?")


def _v2_source(source: str) -> str:
    """A frame's source as V2 hashes it: no query string, the basename, build hashes
    (a run of 8+ alphanumerics with a digit) masked."""
    source = source.split("?", 1)[0]
    source = re.split(r"[/\\]", source)[-1]
    return _HASHED_CHUNK.sub(lambda m: "*" if any(c.isdigit() for c in m[0]) else m[0], source)


def _v2_message(message: str) -> str:
    message = _QUOTED.sub("'*'", message)
    message = _HEX_ID.sub("*", message)
    return _NUMBER.sub("#", message)[:200]


def server_fingerprint(properties: dict[str, Any], version: Version = "v2") -> str:
    """The issue fingerprint PostHog's ingestion gives these ``$exception`` properties.

    A manual ``$exception_fingerprint`` wins over every version and every grouping rule,
    SHA-512-hashed when over 64 **bytes** (Rust's ``str::len``). Otherwise a SHA-512 over
    every entry of ``$exception_list``, in order, of its ``type``, then: without a stack,
    its ``value`` (V2: quoted text, hex ids and numbers masked, cut at 200 characters);
    with one, per selected frame, its ``filename``, ``module`` and ``function`` (a Python
    frame is "resolved": the function is its name, and the line never counts).

    - V1 selects the in-app frames (a frame without ``in_app`` counts as in-app), or the
      first frame only when none is;
    - V2 selects **every** frame, in-app or not, and hashes the filename's basename.
    """
    manual = properties.get("$exception_fingerprint")
    if isinstance(manual, str):
        encoded = manual.encode()
        return manual if len(encoded) <= 64 else hashlib.sha512(encoded).hexdigest()
    hasher = hashlib.sha512()
    for entry in properties["$exception_list"]:
        hasher.update(entry["type"].encode())
        stacktrace = entry.get("stacktrace")
        if stacktrace is None:
            value = entry.get("value", "")
            hasher.update((value if version == "v1" else _v2_message(value)).encode())
            continue
        frames = stacktrace["frames"]
        if version == "v1":
            frames = [frame for frame in frames if frame.get("in_app", True)] or frames[:1]
        for frame in frames:
            source = frame["filename"] if version == "v1" else _v2_source(frame["filename"])
            hasher.update(source.encode())
            if frame.get("module") is not None:
                hasher.update(frame["module"].split("?", 1)[0].encode())
            hasher.update(frame["function"].encode())
    return hasher.hexdigest()


def fingerprints(properties: dict[str, Any]) -> dict[Version, str]:
    return {version: server_fingerprint(properties, version) for version in VERSIONS}


def test_the_server_fingerprint_follows_cymbal() -> None:
    """The model above, on hand-made events: type and frames, never line numbers; V1 the
    in-app frames, V2 every frame."""

    def frame(
        function: str, lineno: int, in_app: bool | None = True, filename: str = "app.py"
    ) -> dict[str, Any]:
        made = {"filename": filename, "module": "app", "function": function, "lineno": lineno}
        return made if in_app is None else {**made, "in_app": in_app}

    def event(type_: str, value: str, *frames: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": type_, "value": value}
        if frames:
            entry["stacktrace"] = {"type": "raw", "frames": list(frames)}
        return {"$exception_list": [entry]}

    for version in VERSIONS:

        def fp(props: dict[str, Any], version: Version = version) -> str:
            return server_fingerprint(props, version)

        base = fp(event("E", "a", frame("f", 1)))
        assert base == fp(event("E", "b", frame("f", 2)))  # value and line never count
        assert base == fp(event("E", "c", frame("f", 7, None)))  # missing in_app: in-app
        assert base != fp(event("F", "a", frame("f", 1)))
        assert base != fp(event("E", "a", frame("g", 1)))
        # No stack: the value (V2 masks numbers and quoted text).
        assert fp(event("E", "a")) != fp(event("E", "b"))
        assert fp({**event("E", "a"), "$exception_fingerprint": "mine"}) == "mine"

    # A framework frame, not in-app: V1 ignores it, V2 hashes it.
    one = event("E", "a", frame("dispatch", 3, False, "fw/worker.py"), frame("f", 1))
    other = event("E", "a", frame("route", 9, False, "fw/router.py"), frame("f", 1))
    assert server_fingerprint(one, "v1") == server_fingerprint(other, "v1")
    assert server_fingerprint(one, "v2") != server_fingerprint(other, "v2")
    # No in-app frame: V1 the first frame only, V2 every one.
    first = event("E", "a", frame("main", 1, False), frame("x", 1, False))
    assert server_fingerprint(first, "v1") == server_fingerprint(
        event("E", "b", frame("main", 5, False)), "v1"
    )
    assert server_fingerprint(first, "v2") != server_fingerprint(
        event("E", "b", frame("main", 5, False)), "v2"
    )
    # V2 hashes the basename; V1 the whole relative filename.
    deep = event("E", "a", frame("f", 1, True, "shop/views.py"))
    flat = event("E", "a", frame("f", 1, True, "views.py"))
    assert server_fingerprint(deep, "v1") != server_fingerprint(flat, "v1")
    assert server_fingerprint(deep, "v2") == server_fingerprint(flat, "v2")
    # V2 masks a stackless value's numbers and quoted text; V1 does not.
    assert server_fingerprint(event("E", "order 41 'x'"), "v2") == server_fingerprint(
        event("E", "order 42 'y'"), "v2"
    )
    assert server_fingerprint(event("E", "order 41"), "v1") != server_fingerprint(
        event("E", "order 42"), "v1"
    )
    # A manual fingerprint is hashed over 64 bytes, not 64 characters.
    accented = "é" * 40  # 40 characters, 80 bytes
    assert server_fingerprint({"$exception_fingerprint": accented}) != accented
    assert server_fingerprint({"$exception_fingerprint": "a" * 64}) == "a" * 64


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

    for version in VERSIONS:
        cases = ("args A-1", "args B-2", "args C-3")
        same = {server_fingerprint(events[case], version) for case in cases}
        assert len(same) == 1
        [issue] = same
        others = {
            server_fingerprint(events[case], version) for case in ("other template", "other logger")
        }
        assert len(others) == 2 and issue not in others
        # Another call site (another function logs it) is another issue: the server hashes
        # the call site's file, module and function (not its line).
        assert server_fingerprint(events["other path"], version) != issue
    # The values differ (the formatted message): only what the server hashes is stable.
    assert events["args A-1"]["$exception_list"][0]["value"] == "order A-1 failed"
    assert events["args B-2"]["$exception_list"][0]["value"] == "order B-2 failed"

    for props in events.values():
        assert "$exception_fingerprint" not in props  # PostHog's own grouping, and rules
        entry = props["$exception_list"][0]
        assert entry["type"].startswith("LogMessage[") and entry["mechanism"]["synthetic"]
        [site] = entry["stacktrace"]["frames"]  # the call site, alone
        assert site["in_app"] is True and site["context_line"].lstrip().startswith(
            ("logger.error(", "checkout.error(")
        )
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
    assert fingerprints(events["first line"]) == fingerprints(events["second line"])


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
    # The description is the template, not the first occurrence's text (user data).
    assert events["whitespace"]["$issue_description"] == "retrying\n  order %s\tnow"
    assert events["user name"]["$issue_description"] == "kept %s"
    long_description = events["long"]["$issue_description"]
    assert long_description.startswith("commande %s échouée: é€😀")
    assert long_description.endswith("...") and "A-1" not in long_description
    assert password not in secret["$issue_description"]


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

    for version in VERSIONS:
        issue = server_fingerprint(events["kwargs 1"], version)
        assert server_fingerprint(events["kwargs 2"], version) == issue
        assert server_fingerprint(events["other event"], version) != issue
        assert server_fingerprint(events["other logger"], version) != issue
    assert events["kwargs 1"]["$issue_description"] == "order failed"
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
    assert events["processor A-1"]["$exception_source"] == "structlog.processor"
    assert events["handler A-1"]["$exception_source"] == "python.logging"
    for version in VERSIONS:
        assert len({server_fingerprint(props, version) for props in events.values()}) == 1
    assert {props["$issue_description"] for props in events.values()} == {"order %s failed"}
    assert {props["$issue_name"] for props in events.values()} == {"shop.checkout: order %s failed"}
    assert {props["logger"] for props in events.values()} == {"shop.checkout"}


# Issue 25, item 2: one template from one logger is one issue whatever framework path
# reached its call site, under V1 and V2. Framework modules live under a ``site-packages``
# directory (not in-app, as a real framework); the app's module beside them is in-app.
_FRAMEWORKS = {
    "fw_worker": """
def run(job, *args):
    return job(*args)
""",
    "fw_router": """
def dispatch(view, *args):
    return _handle(view, *args)


def _handle(view, *args):
    return view(*args)
""",
    "fw_signals": """
def send(receiver, *args):
    for _ in range(1):
        receiver(*args)
""",
}
_APP = """
def charge(logger, order, case):
    logger.error("order %s failed", order, extra={"case": case})


def refund(logger, order, case):
    logger.error("order %s not refunded", order, extra={"case": case})


def with_retry(job, *args):
    return job(*args)
"""


def _load(name: str, path: Path, source: str) -> ModuleType:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_and_frameworks(tmp_path: Path) -> Iterator[dict[str, ModuleType]]:
    (tmp_path / "site-packages").mkdir()
    modules = {
        name: _load(name, tmp_path / "site-packages" / f"{name}.py", source)
        for name, source in _FRAMEWORKS.items()
    }
    modules["shopapp"] = _load("shopapp", tmp_path / "shopapp.py", _APP)
    yield modules
    for name in modules:
        sys.modules.pop(name, None)


def test_one_template_is_one_issue_whatever_framework_path_reached_it(
    capture_server: CaptureServer,
    loggers: dict[str, logging.Logger],
    app_and_frameworks: dict[str, ModuleType],
) -> None:
    checkout = loggers["shop.checkout"]
    app = app_and_frameworks["shopapp"]
    worker = app_and_frameworks["fw_worker"]
    router = app_and_frameworks["fw_router"]
    signals = app_and_frameworks["fw_signals"]
    paths: dict[str, Callable[[], object]] = {
        "worker": lambda: worker.run(app.charge, checkout, "A-1", "worker"),
        "router": lambda: router.dispatch(app.charge, checkout, "B-2", "router"),
        # Through a framework and one of the app's own (in-app) helpers.
        "signal": lambda: signals.send(app.with_retry, app.charge, checkout, "C-3", "signal"),
        "other template": lambda: worker.run(app.refund, checkout, "A-1", "other template"),
    }
    for call in paths.values():
        call()
    events = sent(capture_server, 4)

    for version in VERSIONS:
        cases = ("worker", "router", "signal")
        issues = {server_fingerprint(events[case], version) for case in cases}
        assert len(issues) == 1, version
        assert server_fingerprint(events["other template"], version) not in issues
    for case in ("worker", "router", "signal"):
        props = events[case]
        assert "$exception_fingerprint" not in props  # the team's grouping rules still apply
        entry = props["$exception_list"][0]
        # The event still shows where it was logged: file, function, line and source.
        [site] = entry["stacktrace"]["frames"]
        where = (site["filename"], site["module"], site["function"], site["lineno"])
        assert where == ("shopapp.py", "shopapp", "charge", 3)
        assert site["in_app"] is True
        assert site["context_line"].strip().startswith('logger.error("order %s failed"')
        assert props["$issue_name"] == "shop.checkout: order %s failed"
        assert props["$issue_description"] == "order %s failed"
    assert events["router"]["$exception_list"][0]["value"] == "order B-2 failed"


def test_structlog_one_event_is_one_issue_whatever_framework_path(
    capture_server: CaptureServer, reporter: Reporter, app_and_frameworks: dict[str, ModuleType]
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
    log = structlog.get_logger().bind(logger="shop.checkout")

    def view(case: str) -> None:
        log.error("order failed", order_id=case, case=case)

    app_and_frameworks["fw_worker"].run(view, "worker")
    app_and_frameworks["fw_router"].dispatch(view, "router")
    events = sent(capture_server, 2)
    for version in VERSIONS:
        assert server_fingerprint(events["worker"], version) == server_fingerprint(
            events["router"], version
        )
    [site] = events["router"]["$exception_list"][0]["stacktrace"]["frames"]
    assert site["function"] == "view"
