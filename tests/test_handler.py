"""PostHogHandler: the allow list, dictConfig/fileConfig, records to wire JSON."""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._levels import LevelAllowList
from posthog_errors.capture_server import CaptureServer

DOCS = Path(__file__).resolve().parent.parent / "docs" / "logging.md"


@pytest.fixture
def logging_state() -> Iterator[None]:
    """Put the root logger and every logger back as they were (dictConfig changes them)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.disabled = False
            for handler in list(logger.handlers):
                if isinstance(handler, PostHogHandler):
                    logger.removeHandler(handler)


@pytest.fixture
def myapp(tmp_path: Path, posthog_client: posthog.Posthog) -> Iterator[None]:
    """The docs' ``myapp.analytics.posthog_client``, a real client aimed at the server."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "analytics.py").write_text("posthog_client = None\n")
    sys.path.insert(0, str(tmp_path))
    import myapp.analytics  # type: ignore[import-not-found]

    myapp.analytics.posthog_client = posthog_client
    yield
    sys.path.remove(str(tmp_path))
    for name in ("myapp", "myapp.analytics"):
        sys.modules.pop(name, None)


def kind(event: dict[str, Any]) -> str:
    """An event's exception type; ``LogMessage`` for every message-only event (its type is
    ``LogMessage[<digest of logger and template>]``)."""
    return str(event["properties"]["$exception_list"][0]["type"]).split("[")[0]


def attach(logger: logging.Logger, handler: logging.Handler, level: int) -> None:
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(level)


def raise_value_error() -> None:
    raise ValueError("card declined")


# -- levels ---------------------------------------------------------------------------


def test_allow_list_with_a_gap_drops_what_is_between() -> None:
    allowed = LevelAllowList(["debug", "error"])
    assert [allowed.allows(n) for n in (10, 20, 30, 40, 50)] == [True, False, False, True, False]
    assert allowed.lowest == 1


def test_allow_list_names_ints_custom_levels_and_star() -> None:
    logging.addLevelName(25, "NOTICE")
    assert LevelAllowList(["NOTICE"]).allows(25)
    assert not LevelAllowList(["NOTICE"]).allows(20)
    assert LevelAllowList("notice").allows(25)
    assert LevelAllowList([45]).allows(45) and not LevelAllowList([45]).allows(40)
    assert LevelAllowList(["Critical", "WARN"]).allows(50)
    assert LevelAllowList("warning,error").allows(30)
    assert LevelAllowList("*").allows(5) and LevelAllowList("*").lowest == 0
    assert LevelAllowList(["fatal"]).lowest == 50


@pytest.mark.parametrize("bad", ["errror", ["error", "loud"], [True], [-1], [], None])
def test_unknown_levels_fail_at_configuration_with_a_clear_message(bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        PostHogHandler(levels=bad, client=lambda: None)
    message = str(info.value)
    assert "levels" in message
    if bad not in ([], None):
        assert "fatal, error, warning, log, info, debug" in message


def test_handler_level_is_the_lowest_allowed_level_even_if_set_lower() -> None:
    handler = PostHogHandler(levels=["warning", "error"], client=lambda: None, steps=False)
    assert handler.level == logging.WARNING
    handler.setLevel(logging.DEBUG)
    assert handler.level == logging.WARNING
    # With exception steps (the default), the lowest of the allow list and steps_levels.
    assert PostHogHandler(levels="error", client=lambda: None).level == logging.INFO
    stepping = PostHogHandler(levels="error", steps_levels="warning", client=lambda: None)
    assert stepping.level == logging.WARNING


def test_gap_allow_list_over_the_wire(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.gap")
    attach(logger, PostHogHandler(client=posthog_client, levels=["debug", "error"]), 1)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logger.log(level, "at level %s", logging.getLevelName(level))
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert sorted(e["properties"]["$exception_level"] for e in events) == ["debug", "error"]


# -- records --------------------------------------------------------------------------


def test_exception_record_becomes_an_event_of_that_exception(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.records")
    attach(logger, PostHogHandler(client=posthog_client), logging.INFO)
    try:
        raise_value_error()
    except ValueError:
        logger.exception("checkout failed for %s", "A-1", extra={"distinct_id": "u-9", "cart": 3})
    logging.getLogger("test.records").critical("boom", exc_info=KeyError("k"))
    assert posthog_errors.flush(5)
    first, second = sorted(
        capture_server.wait_for_events(2), key=lambda e: e["properties"]["$exception_level"]
    )
    props = first["properties"]
    assert first["distinct_id"] == "u-9"
    assert props["$exception_level"] == "error"
    assert props["$exception_source"] == "python.logging"
    assert props["$exception_handled"] is True
    assert props["log_message"] == "checkout failed for A-1"
    assert props["cart"] == 3 and props["logger"] == "test.records"
    assert "distinct_id" not in props
    entry = props["$exception_list"][0]
    assert (entry["type"], entry["value"]) == ("ValueError", "card declined")
    assert entry["mechanism"]["type"] == "logger"
    assert entry["stacktrace"]["frames"][-1]["function"] == "raise_value_error"
    assert second["properties"]["$exception_level"] == "fatal"
    assert second["properties"]["$exception_list"][0]["type"] == "KeyError"


def test_message_records_group_by_template_and_show_the_call_site(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.messages")
    attach(logger, PostHogHandler(client=posthog_client), logging.INFO)
    for order in ("A-1", "B-2"):
        logger.error("order %s failed", order)
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    values = sorted(e["properties"]["$exception_list"][0]["value"] for e in events)
    assert values == ["order A-1 failed", "order B-2 failed"]
    # One issue, grouped by PostHog itself: no manual fingerprint (it would override the
    # team's grouping rules), one synthetic type for the template, a readable name.
    assert not any("$exception_fingerprint" in e["properties"] for e in events)
    types = {e["properties"]["$exception_list"][0]["type"] for e in events}
    assert len(types) == 1 and re.fullmatch(r"LogMessage\[[0-9a-f]{12}\]", types.pop())
    assert {e["properties"]["$issue_name"] for e in events} == {"test.messages: order %s failed"}
    entry = events[0]["properties"]["$exception_list"][0]
    assert entry["mechanism"]["synthetic"] is True
    frames = entry["stacktrace"]["frames"]
    assert frames[-1]["function"] == "test_message_records_group_by_template_and_show_the_call_site"
    assert frames[-1]["context_line"].strip() == 'logger.error("order %s failed", order)'
    assert not any(f["module"] == "logging" for f in frames)


def test_capture_messages_false_sends_only_exceptions(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.nomessages")
    attach(logger, PostHogHandler(client=posthog_client, capture_messages="false"), 1)
    logger.error("just words")
    logger.error("with exception", exc_info=ValueError("x"))
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_list"][0]["type"] == "ValueError"
    assert posthog_errors.stats()["captured"] == 1


def test_bad_logging_arguments_never_raise_into_the_app(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.badargs")
    attach(logger, PostHogHandler(client=posthog_client), 1)
    logger.error("x %s %s", 1)  # one argument short
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert "x %s %s" in event["properties"]["$exception_list"][0]["value"]
    assert posthog_errors.stats()["invalid_input"] == 1


def test_structlog_event_dict_in_msg_is_read_as_an_event(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.structdict")
    attach(logger, PostHogHandler(client=posthog_client), 1)
    try:
        raise_value_error()
    except ValueError:
        logger.error({"event": "payment failed", "exc_info": True, "order": 7, "password": "x"})
    logger.error({"event": "no exception here", "distinct_id": "u-1"})
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    by_type = {kind(e): e for e in events}
    failed = by_type["ValueError"]["properties"]
    assert failed["log_message"] == "payment failed"
    assert failed["order"] == 7 and failed["password"] == "[Filtered]"
    message = by_type["LogMessage"]
    assert message["properties"]["$exception_list"][0]["value"] == "no exception here"
    assert message["distinct_id"] == "u-1"
    assert not any("{'event'" in e["properties"]["$exception_list"][0]["value"] for e in events)


def test_client_and_library_loggers_are_ignored(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    handler = PostHogHandler(client=posthog_client, ignore_loggers=["test.noisy"])
    names = ["posthog", "posthog.consumer", "backoff", "urllib3.connectionpool", "requests"]
    names += ["posthog_errors", "test.noisy", "test.noisy.child", "test.kept"]
    for name in names:
        attach(logging.getLogger(name), handler, 1)
        logging.getLogger(name).error("from %s", name)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["logger"] == "test.kept"


def test_before_send_and_ignore_by_dotted_name(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    def before_send(props: dict[str, Any]) -> dict[str, Any] | None:
        props["service"] = "checkout"
        return None if props["$exception_list"][0]["value"] == "drop" else props

    logger = logging.getLogger("test.filters")
    handler = PostHogHandler(
        client=posthog_client, before_send=before_send, ignore=["KeyError", "json.JSONDecodeError"]
    )
    attach(logger, handler, 1)
    for exc in (KeyError("k"), ValueError("drop"), ValueError("keep")):
        logger.error("failed", exc_info=exc)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["service"] == "checkout"
    assert posthog_errors.stats()["filtered"] == 2


def test_bad_options_fail_at_configuration() -> None:
    with pytest.raises(ValueError, match="capture_messages"):
        PostHogHandler(capture_messages="maybe")
    with pytest.raises(ValueError, match="ignore"):
        PostHogHandler(ignore=["NoSuchError"])
    with pytest.raises(ValueError, match="client"):
        PostHogHandler(client="no_such_module.client")
    with pytest.raises(ValueError, match="ignore_loggers"):
        PostHogHandler(ignore_loggers=[""])


# -- the docs' configuration examples, run verbatim ------------------------------------


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", [0, 1])
def test_dictconfig_examples_from_the_docs(
    index: int, capture_server: CaptureServer, myapp: None, logging_state: None
) -> None:
    examples = [block for block in doc_blocks("python") if "dictConfig(" in block]
    assert len(examples) == 2
    exec(examples[index], {})
    logger = logging.getLogger("myapp.checkout")
    logger.warning("stock low", exc_info=KeyError("sku-1"))  # warnings: only example 2
    logger.error("payment provider slow")  # message-only: only example 1
    try:
        raise_value_error()
    except ValueError:
        logger.exception("checkout failed")  # both
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    types = sorted(kind(e) for e in events)
    assert types == [["LogMessage", "ValueError"], ["KeyError", "ValueError"]][index]
    assert posthog_errors.stats()["sent"] == 2


def test_fileconfig_example_from_the_docs(
    tmp_path: Path, capture_server: CaptureServer, myapp: None, logging_state: None
) -> None:
    [ini] = doc_blocks("ini")
    path = tmp_path / "logging.ini"
    path.write_text(ini)
    logging.config.fileConfig(path)
    [handler] = logging.getLogger().handlers
    # INFO: the default steps_levels (INFO, WARNING) are below the allow list.
    assert isinstance(handler, PostHogHandler) and handler.level == logging.INFO
    # fileConfig disables loggers that existed before it, so log through the root logger.
    logging.getLogger().error("inventory %s out of sync", "sku-2")
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$issue_name"] == "root: inventory %s out of sync"
    assert "$exception_fingerprint" not in event["properties"]


def test_an_extra_fingerprint_wins_over_the_template(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, logging_state: None
) -> None:
    logger = logging.getLogger("test.fingerprint")
    attach(logger, PostHogHandler(client=posthog_client), logging.INFO)
    logger.error("payment %s declined", "A-1", extra={"$exception_fingerprint": "payments"})
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_fingerprint"] == "payments"
    assert event["properties"]["$issue_name"] == "test.fingerprint: payment A-1 declined"
