"""Credentials in exception values and log messages are filtered by default."""

from __future__ import annotations

import logging

import pytest

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._redact import redact
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer

SECRETS = [
    ("could not connect to postgres://app:s3cr3t-Pa55@db.internal:5432/shop", "s3cr3t-Pa55"),
    ("redis://:hunter2hunter2@cache:6379/0 refused", "hunter2hunter2"),
    ("fetch https://deploy-bot:ghp_abcdefghijklmnop1234@github.com/org/repo failed", "ghp_"),
    ("amqp://guest:guest@rabbit:5672// timed out", "guest@"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_abc123", "eyJhbGci"),
    ("header was 'Basic dXNlcjpwYXNzd29yZA=='", "dXNlcjpw"),
    ("got token 3f9a8b7c6d5e4f3a2b1c for tenant", "3f9a8b7c6d5e"),
    ("login failed: password=correct-horse-battery", "correct-horse"),
    ('config error: api_key: "sk_live_4eC39HqLyjWDarjtT1zdp7dc"', "sk_live_4eC39"),
    ("retry with secret='abc123def456'", "abc123def456"),
    ("PASSWORD = letmein123 was rejected", "letmein123"),
    ("auth_token=xoxb-1234-5678-abcdefgh expired", "xoxb-1234"),
]
HARMLESS = [
    "token expired, please sign in again",
    "GET https://example.com/api/orders?page=2 returned 500",
    "password is required",
    "the bearer of bad news",
    "ValueError: invalid literal for int() with base 10: 'abc'",
]


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_secret_shapes_are_filtered(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert "[Filtered]" in redacted


@pytest.mark.parametrize("text", HARMLESS)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_values_and_log_messages_are_redacted_on_the_wire(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    logger = logging.getLogger("test.redact")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        try:
            raise ConnectionError("cannot reach postgres://app:s3cr3t@db/shop")
        except ConnectionError:
            logger.exception("retrying with password=hunter22 soon")
        logger.error("upstream said: Authorization: Bearer abcdefghijklmnopqrstuv")
    finally:
        logger.handlers = []
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    sent_text = [e["properties"]["$exception_list"][0]["value"] for e in events]
    sent_text += [e["properties"].get("log_message", "") for e in events]
    raising_line = next(
        e["properties"]["$exception_list"][0]["stacktrace"]["frames"][-1]["context_line"]
        for e in events
        if e["properties"]["$exception_list"][0]["type"] == "ConnectionError"
    )
    sent_text.append(raising_line)  # source lines are redacted too
    for secret in ("s3cr3t", "hunter22", "abcdefghijklmnopqrstuv"):
        assert not any(secret in text for text in sent_text), sent_text
    assert "postgres://app:[Filtered]@db/shop" in raising_line


def test_redaction_can_be_turned_off(capture_server: CaptureServer, posthog_client: object) -> None:
    posthog_errors._reporter.set_default_reporter(Reporter(posthog_client, redact_secrets=False))
    posthog_errors.capture_exception(ValueError("postgres://app:kept@db"))
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_list"][0]["value"] == "postgres://app:kept@db"
