"""PostHogProcessor with real structlog: native chains, stdlib chains, foreign_pre_chain."""

from __future__ import annotations

import io
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import posthog
import pytest
import structlog

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.structlog import PostHogProcessor
from tests.test_log_issues import server_fingerprint


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def stdlib_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test.structlog.app")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.handlers = []


def fail(message: str = "card declined") -> None:
    raise ValueError(message)


def sent(server: CaptureServer, count: int) -> list[dict[str, Any]]:
    assert posthog_errors.flush(5)
    events = server.wait_for_events(count, timeout=5)
    # wait a little more for any duplicate, which would break the counts below
    extra = server.wait_for_events(count + 1, timeout=0.3)
    assert len(extra) == count, [e["properties"]["$exception_list"][0]["value"] for e in extra]
    return events


def kind(event: dict[str, Any]) -> str:
    """An event's exception type; ``LogMessage`` for every message-only event (its type is
    ``LogMessage[<digest of logger and template>]``)."""
    return str(event["properties"]["$exception_list"][0]["type"]).split("[")[0]


def native_chain(processor: PostHogProcessor, output: io.StringIO) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            processor,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )


def test_native_chain_with_merge_contextvars(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    output = io.StringIO()
    native_chain(PostHogProcessor(reporter=reporter), output)
    log = structlog.get_logger()
    structlog.contextvars.bind_contextvars(distinct_id="ctx-user", session_id="sess-1")
    try:
        fail()
    except ValueError:
        log.exception("payment failed", order_id=42, api_token="secret-value")
    log.info("just info")  # not in the allow list
    [event] = sent(capture_server, 1)
    props = event["properties"]
    assert event["distinct_id"] == "ctx-user"
    assert props["$session_id"] == "sess-1"
    assert props["$exception_source"] == "structlog.processor"
    assert props["$exception_level"] == "error"
    assert props["log_message"] == "payment failed"
    assert props["order_id"] == 42
    assert props["api_token"] == "[Filtered]"  # secret-looking keys: values redacted
    entry = props["$exception_list"][0]
    assert (entry["type"], entry["mechanism"]["type"]) == ("ValueError", "logger")
    # The event dict went on unchanged: format_exc_info still found exc_info after us.
    rendered = [json.loads(line) for line in output.getvalue().splitlines()]
    assert "ValueError: card declined" in rendered[0]["exception"]


def test_without_add_log_level_and_with_exc_info_true(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    structlog.configure(
        processors=[PostHogProcessor(reporter=reporter), structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
    )
    log = structlog.get_logger()
    try:
        fail("with exc_info=True")
    except ValueError:
        log.error("failed", exc_info=True, distinct_id="dict-user")
    log.critical("disk full")
    log.warning("not allowed")
    events = sent(capture_server, 2)
    by_type = {kind(e): e for e in events}
    assert by_type["ValueError"]["distinct_id"] == "dict-user"
    assert by_type["ValueError"]["properties"]["$exception_level"] == "error"
    assert by_type["LogMessage"]["properties"]["$exception_level"] == "fatal"


def test_stdlib_chain_with_processor_formatter_and_handler_sends_each_failure_once(
    capture_server: CaptureServer, reporter: Reporter, stdlib_logger: logging.Logger
) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            PostHogProcessor(reporter=reporter),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    rendered = io.StringIO()
    console = logging.StreamHandler(rendered)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer())
    )
    stdlib_logger.handlers = [console, PostHogHandler(reporter=reporter)]
    log = structlog.get_logger("test.structlog.app")
    try:
        fail("through both doors")
    except ValueError:
        log.error("checkout failed", exc_info=True)
    for order in (1, 2):
        log.error("order failed", order_id=order)
    events = sent(capture_server, 3)
    values = sorted(e["properties"]["$exception_list"][0]["value"] for e in events)
    assert values == ["order failed", "order failed", "through both doors"]
    assert not any("{'" in value or '{"' in value for value in values)  # never str(dict)
    messages = [e for e in events if kind(e) == "LogMessage"]
    # One issue (one synthetic type, PostHog's own grouping), named by logger and event.
    assert len({e["properties"]["$exception_list"][0]["type"] for e in messages}) == 1
    assert not any("$exception_fingerprint" in e["properties"] for e in messages)
    assert {e["properties"]["$issue_name"] for e in messages} == {
        "test.structlog.app: order failed"
    }
    assert sorted(e["properties"]["order_id"] for e in messages) == [1, 2]
    assert len(rendered.getvalue().splitlines()) >= 3  # the app's own output is untouched


def test_foreign_pre_chain_and_handler_send_a_stdlib_record_once(
    capture_server: CaptureServer, reporter: Reporter, stdlib_logger: logging.Logger
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, PostHogProcessor(reporter=reporter)],
        processor=structlog.processors.JSONRenderer(),
    )
    console = logging.StreamHandler(io.StringIO())
    console.setFormatter(formatter)
    for handlers in (
        [console, PostHogHandler(reporter=reporter)],
        [PostHogHandler(reporter=reporter), console],
    ):
        stdlib_logger.handlers = handlers
        stdlib_logger.error("plain stdlib error %s", len(handlers))
    events = sent(capture_server, 2)
    assert {e["properties"]["$exception_list"][0]["value"] for e in events} == {
        "plain stdlib error 2"
    }


def test_threads_through_one_processor_keep_their_own_ids(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    native_chain(PostHogProcessor(reporter=reporter), io.StringIO())
    log = structlog.get_logger()
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        structlog.contextvars.bind_contextvars(distinct_id=f"thread-{i}")
        barrier.wait()
        try:
            fail(f"failure in thread {i}")
        except ValueError:
            log.exception("thread failed")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = sent(capture_server, 8)
    for event in events:
        value = event["properties"]["$exception_list"][0]["value"]
        assert event["distinct_id"] == "thread-" + value.rsplit(" ", 1)[-1]


def test_misplaced_after_format_exc_info_warns_once(reporter: Reporter) -> None:
    structlog.configure(
        processors=[
            structlog.processors.format_exc_info,
            PostHogProcessor(reporter=reporter),
            structlog.processors.KeyValueRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
    )
    log = structlog.get_logger()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            try:
                fail()
            except ValueError:
                log.exception("too late to see it")
    assert [str(w.message)[:40] for w in caught] == ["PostHogProcessor runs after format_exc_i"]


def test_the_processor_never_raises_and_returns_the_dict_unchanged(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    processor = PostHogProcessor(reporter=reporter)
    exc = ValueError("x")
    event_dict = {"event": "odd values", "level": "error", "thing": Hostile(), "exc_info": exc}
    before = dict(event_dict)
    assert processor(None, "error", event_dict) is event_dict
    assert event_dict == before
    [event] = sent(capture_server, 1)
    assert event["properties"]["thing"] == "<unrepresentable Hostile>"
    with pytest.raises(ValueError, match="levels"):
        PostHogProcessor(reporter=reporter, levels=["loud"])


# -- issue 16, item 6: logger names, code variables, ignore_loggers ------------------------


def test_foreign_pre_chain_keeps_each_records_logger_name(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    """A plain stdlib record formatted by ProcessorFormatter: structlog passes the processor
    no logger, only the record. Its name (not "structlog") names and groups the issue, so
    one message from two loggers is two issues, and its template (not the formatted
    message) groups it, as the stdlib handler would."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, PostHogProcessor(reporter=reporter)],
        processor=structlog.processors.JSONRenderer(),
    )
    rendered = io.StringIO()
    console = logging.StreamHandler(rendered)
    console.setFormatter(formatter)
    loggers = [logging.getLogger(name) for name in ("shop.checkout", "shop.billing")]
    try:
        for logger in loggers:
            logger.handlers = [console]
            logger.propagate = False
        for order in ("A-1", "B-2"):
            for logger in loggers:
                logger.error("order %s failed", order)
    finally:
        for logger in loggers:
            logger.handlers = []
            logger.propagate = True
    events = sent(capture_server, 4)
    by_logger: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        props = event["properties"]
        assert props["$exception_source"] == "structlog.processor"
        by_logger.setdefault(props["logger"], []).append(props)
    assert sorted(by_logger) == ["shop.billing", "shop.checkout"]
    issues = {}
    for name, sent_props in by_logger.items():
        values = sorted(p["$exception_list"][0]["value"] for p in sent_props)
        assert values == ["order A-1 failed", "order B-2 failed"]
        assert {p["$issue_name"] for p in sent_props} == {f"{name}: order %s failed"}
        [issues[name]] = {server_fingerprint(p) for p in sent_props}  # one issue each
    assert issues["shop.checkout"] != issues["shop.billing"]
    assert len(rendered.getvalue().splitlines()) == 4  # the app's output is untouched


def code_variables_of(event: dict[str, Any]) -> dict[str, Any] | None:
    frame = event["properties"]["$exception_list"][0]["stacktrace"]["frames"][-1]
    variables: dict[str, Any] | None = frame.get("code_variables")
    return variables


def fail_with_a_local() -> None:
    order_ref = "ord-77"  # noqa: F841
    raise LookupError("with a local")


def log_a_failure(case: str) -> None:
    try:
        fail_with_a_local()
    except LookupError:
        structlog.get_logger().exception("lookup failed", case=case)


def test_code_variables_follow_install_unless_the_processor_has_options(
    capture_server: CaptureServer, posthog_client: Any
) -> None:
    plain = PostHogProcessor()  # no options: install()'s, whenever install() runs
    native_chain(plain, io.StringIO())
    with pytest.warns(RuntimeWarning, match="no PostHog client"):
        log_a_failure("before install")  # nothing configured yet: no client to send to
    with posthog_errors.install(
        posthog_client, capture_code_variables=True, logs=False, excepthooks=False
    ):
        log_a_failure("installed")
        native_chain(PostHogProcessor(posthog_client), io.StringIO())  # same client: same
        log_a_failure("installed, own client")
        native_chain(PostHogProcessor(in_app_include=["tests"]), io.StringIO())
        log_a_failure("own options")  # its own options only: the default, off
        native_chain(PostHogProcessor(capture_code_variables=False), io.StringIO())
        log_a_failure("own option off")
    native_chain(PostHogProcessor(posthog_client, capture_code_variables=True), io.StringIO())
    log_a_failure("own option on")
    events = sent(capture_server, 5)
    by_case = {e["properties"]["case"]: e for e in events}
    assert "before install" not in by_case
    for case in ("installed", "installed, own client", "own option on"):
        assert code_variables_of(by_case[case]) == {"order_ref": "ord-77"}, case
    for case in ("own options", "own option off"):
        assert code_variables_of(by_case[case]) is None, case


def test_ignore_loggers_works_as_the_handlers(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            PostHogProcessor(reporter=reporter, ignore_loggers=["test.noisy", "vendor.*"]),
            structlog.processors.KeyValueRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    names = ["test.noisy", "test.noisy.child", "vendor.sdk", "posthog", "urllib3.pool"]
    names += ["posthog_errors", "test.noisyish", "test.kept", "vendor"]
    quiet = logging.NullHandler()
    for name in names:
        logging.getLogger(name).addHandler(quiet)
    try:
        for name in names:
            structlog.get_logger(name).error("from %s", name)
            try:
                fail(f"raised in {name}")
            except ValueError:
                structlog.get_logger(name).exception("failed")
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(quiet)
    events = sent(capture_server, 6)
    kept = sorted((e["properties"]["logger"], kind(e)) for e in events)
    assert kept == [
        (name, kind_)
        for name in ("test.kept", "test.noisyish", "vendor")
        for kind_ in ("LogMessage", "ValueError")
    ]
    # A single name from a config file, and bad names, as the handler takes them.
    assert PostHogProcessor(reporter=reporter, ignore_loggers="a.b").ignore_loggers[-1] == "a.b"
    with pytest.raises(ValueError, match="ignore_loggers"):
        PostHogProcessor(reporter=reporter, ignore_loggers=[""])
    assert PostHogProcessor().ignore_loggers == PostHogHandler().ignore_loggers


def test_events_below_the_allow_list_become_steps(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    from posthog_errors import _steps

    output = io.StringIO()
    native_chain(PostHogProcessor(posthog_client, release="api@7"), output)
    log = structlog.get_logger().bind(logger="shop")
    token = _steps.start_trail()
    try:
        log.info("cart opened", cart="c-1", api_key="phc_" + "x" * 30)
        log.debug("below steps_levels")
        log.warning("payment slow", provider="acme")
        try:
            fail()
        except ValueError:
            log.exception("checkout failed")
    finally:
        _steps.end_trail(token)
    [event] = sent(capture_server, 1)
    steps = event["properties"]["$exception_steps"]
    assert [s["$message"] for s in steps] == ["cart opened", "payment slow"]
    assert (steps[0]["cart"], steps[0]["level"], steps[0]["logger"]) == ("c-1", "info", "shop")
    assert steps[0]["api_key"] == "[Filtered]"
    assert steps[1]["provider"] == "acme"
    assert event["properties"]["$release_id"] == "api@7"
    assert '"event": "cart opened"' in output.getvalue()  # the app's own output goes on
