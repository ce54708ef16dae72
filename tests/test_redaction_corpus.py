"""The labelled corpus (``redaction_corpus``) through every door, scored on the wire.

Every secret text goes into every place text goes (exception value, notes, group members,
log message, extras at any depth and as dict keys, steps' messages and properties, code
variables, source lines, Sentry data), through ``capture_exception``, the logging handler,
``add_step``, structlog, loguru and the Sentry bridge, with the real posthog client and the
loopback capture server. The JSON that crossed the wire must hold no secret's distinctive
part, and every ordinary value must arrive exactly as it was. Many values share an event,
so the whole corpus costs a few seconds.
"""

from __future__ import annotations

import builtins
import importlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posthog
import pytest
import sentry_sdk
import structlog
from loguru import logger as loguru_logger

import posthog_errors
from posthog_errors import PostHogHandler, _rate_limit, _steps
from posthog_errors._redact import DEFAULT_REDACTOR, FILTERED
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.loguru import PostHogSink
from posthog_errors.sentry import PostHogIntegration
from posthog_errors.structlog import PostHogProcessor
from tests.redaction_corpus import (
    ORDINARY_KEYS,
    ORDINARY_TEXTS,
    SECRET_KEYS,
    SECRET_TEXTS,
    SECRET_TOKENS,
)
from tests.sentry_server import SentryServer, sentry_initialised

SECRETS = [s.text for s in SECRET_TEXTS]
PARTS = [(f"{s.label}/{s.form}", s.part) for s in SECRET_TEXTS]
PARTS += [(f"key {key}", value) for key, value in SECRET_KEYS.items()]
PARTS += [(f"dict key {label}", part) for label, _, part in SECRET_TOKENS]
DICT_KEYS = [value for _, value, _ in SECRET_TOKENS]
ORDINARY = [o.text for o in ORDINARY_TEXTS]
SINGLE_LINE_SECRETS = [text for text in SECRETS if "\n" not in text]
# A builtin on 3.11+ only.
ExceptionGroup: Any = getattr(builtins, "ExceptionGroup", None)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def wire(server: CaptureServer) -> str:
    return json.dumps([request.body for request in server.requests], ensure_ascii=False)


def leaks(text: str) -> list[str]:
    return [label for label, part in PARTS if part in text]


def events(server: CaptureServer, count: int) -> list[dict[str, Any]]:
    assert posthog_errors.flush(10)
    received = server.wait_for_events(count, timeout=10)
    assert len(received) == count
    return received


@pytest.fixture(autouse=True)
def _no_rate_limit() -> Iterator[None]:
    _rate_limit.configure(None)
    token = _steps.start_trail()
    yield
    _steps.end_trail(token)


def test_the_corpus_is_scored_like_a_classifier() -> None:
    caught = sum(s.part not in DEFAULT_REDACTOR.redact(s.text) for s in SECRET_TEXTS)
    keys = sum(DEFAULT_REDACTOR.is_secret_key(key) for key in SECRET_KEYS)
    masked = [o.label for o in ORDINARY_TEXTS if DEFAULT_REDACTOR.redact(o.text) != o.text]
    masked += [key for key in ORDINARY_KEYS if DEFAULT_REDACTOR.is_secret_key(key)]
    secrets, ordinary = len(SECRET_TEXTS) + len(SECRET_KEYS), len(ORDINARY) + len(ORDINARY_KEYS)
    print(
        f"\nredaction corpus: {secrets} secrets, {caught + keys} caught "
        f"(recall {(caught + keys) / secrets:.1%}); {ordinary} ordinary values, "
        f"{len(masked)} masked"
    )
    assert len(SECRET_TEXTS) >= 200 and len(ORDINARY) >= 150 and ordinary >= 200
    assert caught == len(SECRET_TEXTS) and keys == len(SECRET_KEYS)
    assert not masked, masked
    assert len({s.label for s in SECRET_TEXTS}) >= 100


def properties_for(texts: list[str]) -> dict[str, Any]:
    """Every secret text at several depths, secret keys, secret dict keys, and the
    ordinary values and keys beside them."""
    return {
        "texts": texts,
        "nested": {"a": [{"b": (texts, {"c": texts[:3]})}]},
        "by_token": dict.fromkeys(DICT_KEYS, 5001),
        "credentials_list": [(key, value) for key, value in SECRET_KEYS.items()][:5],
        "settings": dict(SECRET_KEYS),
        "ordinary": ORDINARY[:90],
        "ordinary_more": ORDINARY[90:],
        **ORDINARY_KEYS,
    }


def assert_ordinary(props: dict[str, Any]) -> None:
    assert props["ordinary"] + props["ordinary_more"] == ORDINARY
    for key, value in ORDINARY_KEYS.items():
        # (the log doors read a session_id extra as the event's $session_id)
        shown = props[key] if key in props else props.get("$session_id", key)
        assert shown == value, key


def fail(texts: list[str]) -> BaseException:
    """An exception group whose message, notes and members hold the texts (on 3.10, which
    has neither, one exception with the texts as its message)."""
    error = RuntimeError(" | ".join(texts + ORDINARY[:20]))
    if ExceptionGroup is None:
        return error
    for text in texts[:5]:
        error.add_note(text)
    try:
        raise ExceptionGroup("members", [error, *(ValueError(t) for t in texts)])
    except ExceptionGroup as group:
        return group  # type: ignore[no-any-return]


def test_capture_exception(capture_server: CaptureServer, reporter: Reporter) -> None:
    batches = chunks(SECRETS, 40)
    for texts in batches:
        posthog_errors.capture_exception(
            fail(texts), properties=properties_for(texts), fingerprint=texts[0]
        )
    sent = events(capture_server, len(batches))
    assert not leaks(wire(capture_server))
    for event in sent:
        assert_ordinary(event["properties"])
        assert event["properties"]["settings"]["password"] == FILTERED
    values = [entry["value"] for entry in sent[0]["properties"]["$exception_list"]]
    assert any(" | ".join(ORDINARY[:20]) in value for value in values)


def test_logging_handler_and_install(capture_server: CaptureServer, reporter: Reporter) -> None:
    log = logging.getLogger("test.redaction_corpus")
    log.handlers = [PostHogHandler(reporter=reporter)]
    log.propagate = False
    batches = chunks(SECRETS, 40)
    try:
        for texts in batches:
            log.error(" | ".join(texts), extra=properties_for(texts))
            try:
                raise fail(texts)
            except Exception:
                log.exception("failed: %s", texts[0], extra=dict(SECRET_KEYS))
    finally:
        log.handlers = []
    sent = events(capture_server, 2 * len(batches))
    assert not leaks(wire(capture_server))
    for event in sent[::2]:
        assert_ordinary(event["properties"])


def test_steps(capture_server: CaptureServer, reporter: Reporter) -> None:
    batches = chunks(SECRETS, 30)
    for texts in batches:
        for text in texts:
            posthog_errors.add_step(text, detail=text, ordinary=ORDINARY[len(text) % 100])
        posthog_errors.add_step("keys", **dict.fromkeys(DICT_KEYS[:14], 3), **ORDINARY_KEYS)
        posthog_errors.add_step("settings", **dict(list(SECRET_KEYS.items())[:16]))
        posthog_errors.add_step("ordinary", **{f"o{i}": text for i, text in enumerate(ORDINARY)})
        posthog_errors.capture_exception(ValueError("with steps"))
    sent = events(capture_server, len(batches))
    assert not leaks(wire(capture_server))
    steps = sent[0]["properties"]["$exception_steps"]
    assert any(step.get("session_count") == 3 for step in steps)
    shown = [v for step in steps for k, v in step.items() if k.startswith("o")]
    assert set(ORDINARY[:16]) <= set(shown)


def test_structlog(capture_server: CaptureServer, reporter: Reporter) -> None:
    structlog.reset_defaults()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            PostHogProcessor(reporter=reporter),
            structlog.processors.JSONRenderer(default=repr),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
        cache_logger_on_first_use=False,
    )
    log = structlog.get_logger("test.redaction_corpus.structlog")
    batches = chunks(SECRETS, 40)
    try:
        for texts in batches:
            log.error(" | ".join(texts), **properties_for(texts))
    finally:
        structlog.reset_defaults()
    sent = events(capture_server, len(batches))
    assert not leaks(wire(capture_server))
    for event in sent:
        assert_ordinary(event["properties"])


def test_loguru(capture_server: CaptureServer, reporter: Reporter) -> None:
    handler_id = loguru_logger.add(
        PostHogSink(reporter=reporter), level=0, format="{message}", catch=False
    )
    batches = chunks(SECRETS, 40)
    try:
        for texts in batches:
            loguru_logger.bind(**properties_for(texts)).error(" | ".join(texts))
    finally:
        loguru_logger.remove(handler_id)
    sent = events(capture_server, len(batches))
    assert not leaks(wire(capture_server))
    for event in sent:
        assert_ordinary(event["properties"])


def with_locals(texts: list[str], ordinary: list[str]) -> BaseException:
    """A frame whose locals are named plainly and hold the texts, are named as secrets,
    or are ordinary: a function compiled with one assignment per local."""
    values: dict[str, Any] = {f"v{i}": text for i, text in enumerate(texts)}
    values.update({f"o{i}": text for i, text in enumerate(ordinary)})
    values["pair"] = ("password", SECRET_KEYS["password"])
    values["card_as_int"] = int(next(s.part for s in SECRET_TEXTS if s.label == "card-visa"))
    values.update(
        {key.replace("-", "_").replace(".", "_"): value for key, value in SECRET_KEYS.items()}
    )
    body = "".join(f"    {name} = VALUES[{name!r}]\n" for name in values)
    namespace: dict[str, Any] = {"VALUES": values}
    exec(f"def with_locals():\n{body}    raise ValueError('with locals')\n", namespace)
    try:
        namespace["with_locals"]()
    except ValueError as exc:
        return exc
    raise AssertionError


def test_code_variables(capture_server: CaptureServer, posthog_client: posthog.Posthog) -> None:
    set_default_reporter(Reporter(posthog_client, capture_code_variables=True))
    batches = chunks(SECRETS, 25)
    ordinary = chunks(ORDINARY, 40)
    for index, texts in enumerate(batches):
        posthog_errors.capture_exception(with_locals(texts, ordinary[index % len(ordinary)]))
    sent = events(capture_server, len(batches))
    assert not leaks(wire(capture_server))
    for index, event in enumerate(sent[: len(ordinary)]):
        frames = event["properties"]["$exception_list"][0]["stacktrace"]["frames"]
        variables = frames[-1]["code_variables"]
        shown = [variables.get(f"o{i}") for i in range(len(ordinary[index]))]
        assert shown == ordinary[index]
        assert variables["password"] == FILTERED and variables["card_as_int"] == FILTERED


def test_source_lines(
    capture_server: CaptureServer, posthog_client: posthog.Posthog, tmp_path: Path
) -> None:
    set_default_reporter(Reporter(posthog_client, max_frames=200))
    # A module whose every function's context holds five secret comments and ordinary ones.
    lines = ["def f0():", "    f1()"]
    groups = chunks(SINGLE_LINE_SECRETS, 4)
    for index, group in enumerate(groups, start=1):
        lines.append(f"def f{index}():")
        lines += [f"    # {text}" for text in group]
        lines.append(f"    # {ORDINARY[index % len(ORDINARY)]}")
        call = f"f{index + 1}()" if index < len(groups) else "raise ValueError('deep')"
        lines.append(f"    {call}")
    (tmp_path / "redaction_corpus_site.py").write_text("\n".join(lines) + "\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("redaction_corpus_site")
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 2000))
        try:
            module.f0()
        except ValueError as exc:
            posthog_errors.capture_exception(exc)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("redaction_corpus_site", None)
    [event] = events(capture_server, 1)
    assert not leaks(wire(capture_server))
    frames = event["properties"]["$exception_list"][0]["stacktrace"]["frames"]
    context = [line for f in frames for line in f["pre_context"]]
    assert f"    # {ORDINARY[1]}" in context and f"    # {ORDINARY[2]}" in context


@pytest.fixture
def sentry_server() -> Iterator[SentryServer]:
    with SentryServer(project_id=4343) as server:
        yield server


def test_sentry_bridge(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = PostHogIntegration(posthog_client, capture_code_variables=True)
    batches = chunks(SECRETS, 40)
    with sentry_initialised(sentry_server.dsn, integrations=[integration]):
        for texts in batches:
            sentry_sdk.set_context("corpus", {"texts": texts, "ordinary": ORDINARY[:20]})
            sentry_sdk.capture_exception(with_locals(texts, ORDINARY[:20]))
            sentry_sdk.capture_message(" | ".join(texts), level="error")
    events(capture_server, 2 * len(batches))
    assert not leaks(wire(capture_server))


def test_redaction_off_sends_everything(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    # The same door with the switch off: the assertions above can fail.
    set_default_reporter(Reporter(posthog_client, redact_secrets=False))
    texts = SECRETS[:40]
    posthog_errors.capture_exception(fail(texts), properties=properties_for(texts))
    events(capture_server, 1)
    assert len(leaks(wire(capture_server))) >= 40
