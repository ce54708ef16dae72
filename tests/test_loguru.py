"""PostHogSink with the real loguru logger and a real posthog client: what reaches the wire."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import posthog
import pytest
from loguru import logger

import posthog_errors
from posthog_errors import _steps
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.loguru import PostHogSink, install_integration
from tests.scripts import run_script
from tests.test_log_issues import server_fingerprint

AddSink = Callable[..., PostHogSink]


@pytest.fixture
def add_sink(reporter: Reporter) -> Iterator[AddSink]:
    """Adds a PostHogSink (the test's reporter unless told otherwise) to the global loguru
    logger, with ``catch=False``: anything the sink raised would fail the test."""
    added: list[int] = []

    def add(*, enqueue: bool = False, **options: Any) -> PostHogSink:
        options.setdefault("reporter", reporter)
        sink = PostHogSink(**options)
        added.append(logger.add(sink, level=0, format="{message}", catch=False, enqueue=enqueue))
        return sink

    token = _steps.start_trail()
    yield add
    _steps.end_trail(token)
    for handler_id in added:
        logger.remove(handler_id)


def sent(server: CaptureServer, count: int) -> list[dict[str, Any]]:
    assert posthog_errors.flush(5)
    events = server.wait_for_events(count, timeout=5)
    extra = server.wait_for_events(count + 1, timeout=0.3)  # any duplicate breaks the count
    assert len(extra) == count, [e["properties"]["$exception_list"][0]["value"] for e in extra]
    return events


def entry(event: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = event["properties"]["$exception_list"][0]
    return first


def charge(amount: int) -> None:
    raise ValueError(f"card declined for {amount}")


def test_exception_event_has_the_raise_sites_frames_and_loguru_output_is_unchanged(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    output = io.StringIO()
    console = logger.add(output, format="{level} {message}", level="INFO")
    try:
        add_sink()
        try:
            charge(42)
        except ValueError:
            logger.bind(order_id=7, api_token="secret-value").exception("payment failed")
    finally:
        logger.remove(console)
    [event] = sent(capture_server, 1)
    props = event["properties"]
    first = entry(event)
    assert (first["type"], first["value"]) == ("ValueError", "card declined for 42")
    assert (first["mechanism"]["type"], first["mechanism"]["handled"]) == ("logger", True)
    frames = first["stacktrace"]["frames"]
    assert [f["function"] for f in frames[-2:]] == [
        "test_exception_event_has_the_raise_sites_frames_and_loguru_output_is_unchanged",
        "charge",
    ]
    assert (props["$exception_source"], props["$exception_handled"]) == ("loguru.sink", True)
    assert props["$exception_level"] == "error"
    assert props["log_message"] == "payment failed"
    assert (props["logger"], props["order_id"]) == ("tests.test_loguru", 7)
    assert props["api_token"] == "[Filtered]"
    # The app's own sink printed the record and its traceback, as without ours.
    text = output.getvalue()
    assert text.startswith("ERROR payment failed\n")
    assert "ValueError: card declined for 42" in text


def test_loguru_levels_map_to_posthog_levels(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    add_sink(levels="*", steps=False)
    for method in ("trace", "debug", "info", "success", "warning", "error", "critical"):
        getattr(logger, method)(f"level {method}")
    events = sent(capture_server, 7)
    levels = {entry(e)["value"]: e["properties"]["$exception_level"] for e in events}
    assert levels == {
        "level trace": "debug",
        "level debug": "debug",
        "level info": "info",
        "level success": "info",
        "level warning": "warning",
        "level error": "error",
        "level critical": "fatal",
    }


def log_order_failure(order: object) -> None:
    logger.error("order {} failed", order)


def test_messages_are_grouped_by_template_whatever_the_arguments(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    add_sink()
    log_order_failure("A-1")
    log_order_failure("B-2")
    logger.error("order {order_id} refunded", order_id=3)
    logger.error("order {order_id} refunded", order_id=4)
    logger.error("disk full")
    events = sent(capture_server, 5)
    by_value = {entry(e)["value"]: e["properties"] for e in events}
    assert sorted(by_value) == [
        "disk full",
        "order 3 refunded",
        "order 4 refunded",
        "order A-1 failed",
        "order B-2 failed",
    ]
    failed = [by_value["order A-1 failed"], by_value["order B-2 failed"]]
    refunded = [by_value["order 3 refunded"], by_value["order 4 refunded"]]
    issues = []
    for group, name in (
        (failed, "tests.test_loguru: order {} failed"),
        (refunded, "tests.test_loguru: order {order_id} refunded"),
    ):
        assert {p["$issue_name"] for p in group} == {name}
        [issue] = {server_fingerprint(p) for p in group}  # one issue per template
        issues.append(issue)
    issues.append(server_fingerprint(by_value["disk full"]))
    assert len(set(issues)) == 3
    for props in by_value.values():
        assert "$exception_fingerprint" not in props
        assert entry({"properties": props})["type"].startswith("LogMessage[")
        # The call site's stack: the app's frames, none of loguru's or ours.
        frames = entry({"properties": props})["stacktrace"]["frames"]
        assert not any(f["module"].startswith(("loguru", "posthog_errors")) for f in frames)
    assert entry({"properties": failed[0]})["stacktrace"]["frames"][-1]["function"] == (
        "log_order_failure"
    )
    assert sorted(p["order_id"] for p in refunded) == [3, 4]  # kwargs are in extra


def test_bind_and_contextualize_set_distinct_and_session_ids(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    add_sink()
    with logger.contextualize(distinct_id="ctx-user", session_id="sess-1", tenant="acme"):
        logger.error("from the context")
        logger.bind(distinct_id="bound-user").error("bound wins")
    try:
        charge(1)
    except ValueError:
        logger.bind(distinct_id="exc-user", session_id="sess-2").exception("failed")
    events = sent(capture_server, 3)
    by_value = {entry(e)["value"]: e for e in events}
    context = by_value["from the context"]
    assert context["distinct_id"] == "ctx-user"
    assert context["properties"]["$session_id"] == "sess-1"
    assert context["properties"]["tenant"] == "acme"
    assert "distinct_id" not in context["properties"]
    bound = by_value["bound wins"]
    assert (bound["distinct_id"], bound["properties"]["$session_id"]) == ("bound-user", "sess-1")
    failure = by_value["card declined for 1"]
    assert (failure["distinct_id"], failure["properties"]["$session_id"]) == ("exc-user", "sess-2")


def test_records_below_the_allow_list_become_steps_in_order(
    capture_server: CaptureServer, add_sink: AddSink, posthog_client: posthog.Posthog
) -> None:
    add_sink(client=posthog_client, reporter=None, release="api@7")  # options of its own
    logger.bind(cart="c-1", api_key="phc_" + "x" * 30).info("cart opened")
    logger.debug("below steps_levels")
    logger.success("coupon applied")
    logger.warning("payment slow {}", "acme")
    try:
        charge(5)
    except ValueError:
        logger.exception("checkout failed")
    [event] = sent(capture_server, 1)
    steps = event["properties"]["$exception_steps"]
    assert [s["$message"] for s in steps] == ["cart opened", "coupon applied", "payment slow acme"]
    assert [s["level"] for s in steps] == ["info", "info", "warning"]
    assert (steps[0]["cart"], steps[0]["logger"]) == ("c-1", "tests.test_loguru")
    assert steps[0]["api_key"] == "[Filtered]"
    assert event["properties"]["$release_id"] == "api@7"


def test_the_allow_list_takes_loguru_level_names_and_numbers(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    with contextlib.suppress(ValueError):  # made by an earlier run in this process
        logger.level("AUDIT", no=35)
    add_sink(levels=["SUCCESS", "audit"], steps=False)
    add_sink(levels=5, steps=False)  # TRACE, by number
    logger.info("info: not allowed")
    logger.success("a success")
    logger.log("AUDIT", "an audit")
    logger.warning("warning: not allowed")
    logger.error("error: not allowed")
    logger.trace("a trace")
    events = sent(capture_server, 3)
    levels = {entry(e)["value"]: e["properties"]["$exception_level"] for e in events}
    assert levels == {"a success": "info", "an audit": "warning", "a trace": "debug"}
    with pytest.raises(ValueError, match="levels"):
        PostHogSink(levels=["loud"])
    assert PostHogSink(levels="error", steps_levels="success").lowest == 25


def test_two_sinks_send_a_record_once(capture_server: CaptureServer, add_sink: AddSink) -> None:
    """install()'s sink and one the app added: one event per record, one step."""
    add_sink(capture_messages=False)  # sends no message: the other one still does
    add_sink()
    add_sink()
    logger.info("one step")
    logger.error("one message")
    try:
        charge(2)
    except ValueError:
        logger.exception("one exception")
    events = sent(capture_server, 2)
    failure = next(e for e in events if entry(e)["type"] == "ValueError")
    assert [s["$message"] for s in failure["properties"]["$exception_steps"]] == ["one step"]


def test_the_sink_never_raises_into_loguru(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

        __str__ = __repr__

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing")

        __hash__ = None  # type: ignore[assignment]

    add_sink()
    hostile = logger.bind(thing=Hostile(), distinct_id=Hostile(), session_id=Hostile())
    hostile.info("a step with a hostile value")
    hostile.error("odd values")
    try:
        charge(9)
    except ValueError:
        hostile.exception("odd values, with an exception")
    PostHogSink()("a plain string, no record")  # type: ignore[arg-type]
    events = sent(capture_server, 2)
    for event in events:
        assert event["properties"]["thing"] == "<unrepresentable Hostile>"
    assert posthog_errors.stats()["internal_errors"] == 0


def _bridge_frame(frame: FrameType) -> bool:
    return str(frame.f_globals.get("__name__")).startswith(("logging", "posthog_errors"))


class InterceptHandler(logging.Handler):
    """loguru's documented bridge from the standard library to loguru. (Its depth skips
    install()'s logging hook too; the documented one, which skips logging's frames only,
    names the hook as the caller, and the sink ignores posthog_errors' own records.)"""

    def emit(self, record: logging.LogRecord) -> None:
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or _bridge_frame(frame)):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(
            record.levelname, record.getMessage()
        )


@pytest.fixture
def intercepted() -> Iterator[logging.Logger]:
    stdlib = logging.getLogger("test.loguru.intercepted")
    stdlib.handlers = [InterceptHandler()]
    stdlib.propagate = False
    stdlib.setLevel(logging.INFO)
    yield stdlib
    stdlib.handlers = []
    stdlib.propagate = True


def test_a_stdlib_record_forwarded_to_loguru_is_one_event_and_one_step_with_install(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, intercepted: logging.Logger
) -> None:
    """install()'s logging hook sees the stdlib record first, then InterceptHandler hands
    it to loguru and the sink: still one event, or one step, per record."""
    token = _steps.start_trail()
    try:
        with posthog_errors.install(posthog_client, excepthooks=False):
            undo = install_integration(posthog_errors._reporter.default_reporter())
            try:
                intercepted.info("stdlib step")
                intercepted.error("stdlib error %s", 1)
                try:
                    charge(3)
                except ValueError:
                    intercepted.exception("stdlib exception")
            finally:
                undo()
    finally:
        _steps.end_trail(token)
    events = sent(capture_server, 2)
    assert {e["properties"]["$exception_source"] for e in events} == {"python.logging"}
    assert {e["properties"]["logger"] for e in events} == {"test.loguru.intercepted"}
    failure = next(e for e in events if entry(e)["type"] == "ValueError")
    assert [s["$message"] for s in failure["properties"]["$exception_steps"]] == ["stdlib step"]


def test_the_sink_marks_a_forwarded_record_sent_for_a_later_handler(
    capture_server: CaptureServer,
    add_sink: AddSink,
    reporter: Reporter,
    intercepted: logging.Logger,
) -> None:
    add_sink()
    intercepted.addHandler(posthog_errors.PostHogHandler(reporter=reporter))
    intercepted.error("forwarded %s", "once")
    [event] = sent(capture_server, 1)
    assert event["properties"]["$exception_source"] == "loguru.sink"
    # Named by the app's call site (InterceptHandler's depth), not by logging's frames.
    assert event["properties"]["logger"] == "tests.test_loguru"


def test_install_integration_adds_a_sink_and_its_undo_removes_it(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    undo = install_integration(reporter, levels=["error"], steps=False)
    logger.error("while added")
    undo()
    undo()  # twice: a no-op
    logger.error("after the undo")
    removed_by_app = install_integration(reporter)
    logger.remove()  # the app's "logger.remove()" at start-up removes it too
    removed_by_app()  # and the undo is still safe
    assert sys.__stderr__ is not None
    logger.add(sys.__stderr__)  # loguru's default handler, back for the next tests
    [event] = sent(capture_server, 1)
    assert entry(event)["value"] == "while added"


def test_without_options_the_sink_follows_install(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    sink = PostHogSink()
    handler_id = logger.add(sink, level=0, format="{message}", catch=False)
    try:
        with posthog_errors.install(posthog_client, release="app@1", logs=False, excepthooks=False):
            assert sink.reporter is posthog_errors._reporter.default_reporter()
            logger.error("installed")  # once, though install() may have added a sink too
    finally:
        logger.remove(handler_id)
    [event] = sent(capture_server, 1)
    assert event["properties"]["$release_id"] == "app@1"
    assert event["properties"]["$exception_source"] == "loguru.sink"


def test_enqueue_groups_messages_by_call_site(
    capture_server: CaptureServer, add_sink: AddSink
) -> None:
    add_sink(enqueue=True)
    for order in ("A-1", "B-2"):
        logger.info("step {}", order)  # on loguru's writer thread: not a step
        log_order_failure(order)
    logger.complete()
    events = sent(capture_server, 2)
    assert {server_fingerprint(e["properties"]) for e in events} == {
        server_fingerprint(events[0]["properties"])
    }
    for event in events:
        [frame] = entry(event)["stacktrace"]["frames"]
        assert (frame["function"], frame["module"]) == ("log_order_failure", "tests.test_loguru")
        assert frame["context_line"].strip() == 'logger.error("order {} failed", order)'
        assert "$exception_steps" not in event["properties"]


def test_an_exception_logged_and_then_uncaught_is_one_event(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        from loguru import logger
        from posthog_errors.loguru import PostHogSink
        posthog_errors.install(client, logs=False)
        logger.add(PostHogSink())
        def pay():
            raise RuntimeError("gateway down")
        try:
            pay()
        except RuntimeError:
            logger.exception("payment failed")
            raise
        """,
        capture_server.url,
        hang_after=20,
    )
    assert result.returncode == 1
    assert "payment failed" in result.stderr  # loguru's own stderr output
    assert "RuntimeError: gateway down" in result.stderr  # and Python's traceback
    events = capture_server.wait_for_events(1)
    assert len(capture_server.wait_for_events(2, timeout=0.5)) == 1
    props = events[0]["properties"]
    assert props["$exception_source"] == "loguru.sink"
    assert props["$exception_list"][0]["stacktrace"]["frames"][-1]["function"] == "pay"


def test_posthog_errors_never_imports_loguru_and_says_which_extra_is_missing() -> None:
    code = (
        "import sys; import posthog_errors; assert 'loguru' not in sys.modules\n"
        "sys.modules['loguru'] = None\n"
        "try:\n    import posthog_errors.loguru\n"
        "except ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == (
        "posthog_errors.loguru needs loguru: pip install 'posthog-errors[loguru]'"
    )
