"""One redaction policy for everything sent, through every door, asserted on the wire.

A corpus of secret shapes (key names, assignments in text, vendor token formats, URL
credentials, auth header values, PEM blocks) is sent with default
settings through capture_exception (value, properties, fingerprint, code variables),
logging (message, extra, exception value), structlog (event-dict keys and values) and
bind(properties=...); the whole JSON the capture server received is searched for each
secret's distinctive part. Ordinary values (ids, uuids, git SHAs, paths, URLs, prose)
must arrive as they were. Token-shaped values are assembled at run time, so that this file
holds no string that a secret scanner would flag.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import random
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posthog
import pytest
import sentry_sdk
import structlog

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._redact import DEFAULT_REDACTOR, FILTERED, Redactor, compile_patterns
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.sentry import PostHogIntegration
from posthog_errors.structlog import PostHogProcessor
from tests.sentry_server import SentryServer, sentry_initialised

_rng = random.Random(1234)
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
UPPER_DIGITS = string.ascii_uppercase + string.digits


def body(alphabet: str, n: int) -> str:
    """A deterministic random token body; each one distinct."""
    return "".join(_rng.choice(alphabet) for _ in range(n))


def tok(*parts: str) -> str:
    return "".join(parts)


# (label, text holding the secret, the secret's distinctive part that must never be sent)
SECRET_TEXTS: list[tuple[str, str, str]] = []


def secret(label: str, text: str, distinctive: str) -> None:
    assert distinctive in text, label
    SECRET_TEXTS.append((label, text, distinctive))


def _corpus() -> None:
    pw = body(ALNUM, 14)
    secret("url-credentials", f"could not connect to postgres://app:{pw}@db.internal/shop", pw)
    pw = body(ALNUM, 12)
    secret("redis-password-only", f"redis://:{pw}@cache:6379/0 refused", pw)
    pw = body(ALNUM, 10)
    secret("url-password-with-at", f"amqp://guest:{pw}@x@rabbit:5672// timed out", pw)
    gh = tok("gh", "p_", body(ALNUM, 36))
    secret("token-as-url-user", f"fetch https://{gh}@github.com/org/repo failed", gh[4:])
    jwt = tok("eyJ", body(ALNUM, 20), ".eyJ", body(ALNUM, 30), ".", body(ALNUM, 20))
    secret("bearer-jwt-header", f"Authorization: Bearer {jwt}", jwt[4:20])
    basic = body(ALNUM, 20) + "=="
    secret("basic-auth", f"header was 'Basic {basic}'", basic[:16])
    hexed = body(HEX, 24)
    secret("token-scheme", f"got token {hexed} for tenant", hexed)
    short = body(ALNUM, 4) + "7"
    secret("short-bearer-in-header", f"Authorization: Bearer {short}", short)
    pw = body(ALNUM, 15)
    secret("password-assignment", f"login failed: password={pw}", pw)
    pw = body(ALNUM, 13)
    secret("env-style-prefix", f"DB_PASSWORD={pw} in environment", pw)
    pw = body(ALNUM, 16)
    secret("client-secret", f"oauth: client_secret={pw}&grant_type=x", pw)
    pw = body(ALNUM, 18)
    secret("settings-quoted", f"SECRET_KEY = 'django-insecure-{pw}'", pw)
    pw = body(ALNUM, 11)
    secret("dict-repr", f"bad config {{'user': 'app', 'password': 'pw {pw}'}}", pw)
    pw = body(ALNUM, 19)
    secret("json", f'payload {{"api_key": "{pw}", "region": "eu"}}', pw)
    pw = body(ALNUM, 17)
    secret("api-key-header", f"x-api-key: {pw}", pw)
    pw, pw2 = body(HEX, 20), body(ALNUM, 20)
    secret("cookie-header", f"Cookie: sessionid={pw}; csrftoken={pw2}", pw)
    secret("cookie-header-second", f"Cookie: theme=dark; csrftoken={pw2}", pw2)
    pw = body(ALNUM, 22)
    secret("passphrase-with-spaces", f'passphrase: "correct horse {pw}"', pw)
    pw = body(ALNUM, 40)
    secret("aws-secret-assignment", f"aws_secret_access_key={pw}", pw)
    aws = tok("AK", "IA", body(UPPER_DIGITS, 16))
    secret("aws-access-key-id", f"key id {aws} denied", aws[4:])
    for prefix in ("gh" + "p_", "gh" + "o_", "gh" + "s_", "gh" + "u_"):
        value = tok(prefix, body(ALNUM, 36))
        secret(f"github-{prefix}", f"git said {value} is revoked", value[4:])
    value = tok("github", "_pat_", body(ALNUM, 22), "_", body(ALNUM, 59))
    secret("github-fine-grained", f"using {value}", value[11:30])
    for prefix in ("sk" + "_live_", "rk" + "_live_", "sk" + "_test_"):
        value = tok(prefix, body(ALNUM, 24))
        secret(f"stripe-{prefix}", f"stripe key {value} rejected", value[8:])
    value = tok("wh", "sec_", body(ALNUM, 32))
    secret("stripe-webhook", f"signing with {value}", value[6:])
    for prefix in ("xo" + "xb-", "xo" + "xp-"):
        value = tok(prefix, body(string.digits, 12), "-", body(ALNUM, 24))
        secret(f"slack-{prefix}", f"slack token {value}", value[5:])
    jwt = tok("eyJ", body(ALNUM, 24), ".eyJ", body(ALNUM, 40), ".", body(ALNUM, 43))
    secret("jwt-bare", f"cannot decode {jwt}", jwt[30:60])
    pem_body = body(ALNUM, 64)
    pem = tok(
        "-----BEGIN RSA PRIVATE KEY-----\n", pem_body, "\n", body(ALNUM, 64),
        "\n-----END RSA PRIVATE KEY-----",
    )  # fmt: skip
    secret("pem-block", f"bad key:\n{pem}\nend", pem_body[:20])
    key = body(HEX, 32)
    secret("sentry-dsn", f"sentry at https://{key}@o123.ingest.sentry.io/42", key)
    value = tok("da", "pi", body(HEX, 32))
    secret("databricks", f"databricks {value}", value[4:])
    for prefix in ("sh" + "pat_", "sh" + "pss_"):
        value = tok(prefix, body(HEX, 32))
        secret(f"shopify-{prefix}", f"shopify {value}", value[6:])
    value = tok("NR", "AK-", body(UPPER_DIGITS, 27))
    secret("new-relic", f"newrelic {value}", value[5:])
    value = tok(body(HEX, 32), "-us12")
    secret("mailchimp", f"mailchimp {value}", value[:32])
    value = tok("AI", "za", body(ALNUM + "_-", 35))
    secret("google-api-key", f"maps {value}", value[4:])
    value = tok("ya", "29.", body(ALNUM, 40))
    secret("google-oauth", f"google {value}", value[5:])
    value = tok("sk", "-proj-", body(ALNUM, 48))
    secret("openai", f"openai {value}", value[8:])
    value = tok("sk", "-ant-api03-", body(ALNUM, 40))
    secret("anthropic", f"anthropic {value}", value[11:])
    value = tok("gl", "pat-", body(ALNUM, 20))
    secret("gitlab", f"gitlab {value}", value[6:])
    value = tok("np", "m_", body(ALNUM, 36))
    secret("npm", f"npm {value}", value[4:])
    value = tok("hf", "_", body(string.ascii_letters, 34))
    secret("hugging-face", f"hf {value}", value[3:])
    value = tok("SG", ".", body(ALNUM, 22), ".", body(ALNUM, 43))
    secret("sendgrid", f"sendgrid {value}", value[3:])
    value = tok("ph", "x_", body(ALNUM, 40))
    secret("posthog-personal", f"personal key {value}", value[4:])
    value = tok("sn", "trys_", body(ALNUM, 40))
    secret("sentry-auth-token", f"sentry-cli {value}", value[7:])
    value = tok("pypi", "-AgE", body(ALNUM, 60))
    secret("pypi", f"twine {value}", value[8:])
    # (No entropy rule: a random 40-character run in prose is as likely a request ID; see
    # redaction_corpus.py, where such IDs must stay readable.)


_corpus()

# Property keys whose values are filtered whole, whatever the value.
SECRET_KEYS = [
    "password", "db_password", "DB_PASSWORD", "passwd", "pwd", "client_secret", "SECRET_KEY",
    "api_key", "apiKey", "X-Api-Key", "Authorization", "HTTP_AUTHORIZATION", "cookie",
    "Set-Cookie", "session", "session_key", "credentials", "sentry_dsn", "private_key",
    "auth_token", "refresh_token", "accessToken", "jwt", "csrftoken", "conn_str",
]  # fmt: skip
KEY_VALUES = {key: f"plainvalue{index:03d}" for index, key in enumerate(SECRET_KEYS)}

# Ordinary values that must arrive exactly as they were.
READABLE_TEXTS = [
    "order-1234",
    "550e8400-e29b-41d4-a716-446655440000",
    "commit 3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a broke the build",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "/srv/app/src/MyProject2/Views/Home12/index.py",
    "GET https://example.com/api/v2/Orders?page=2 returned 500",
    "token expired, please sign in again",
    "token verification failed",
    "password is required",
    "Basic Authentication required",
    "the author said so",
    "order pi_3MtwBwLkdIwHu7ix28a3tqPa failed",
    "project key phc_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ABCDE",
    "MyVeryLongClassNameFactoryBuilder2Impl3",
    "test_values_and_log_messages_are_redacted_on_the_wire_2024",
    "KeyError: 'user_id'",
    "cache_key=user:42:profile",
    "keyboard=qwerty",
    "alice@example.com from 10.0.0.1:5432",
    "HTTPConnectionPool(host='api.stripe.com', port=443): Max retries exceeded",
]
READABLE_PROPERTIES: dict[str, Any] = {
    "$session_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "parent_session_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
    "$ai_input_tokens": 1234,
    "max_tokens": 512,
    "tokenizer": "cl100k_base",
    "author": "bob",
    "user_id": 42,
    "is_authenticated": True,
    "has_password": False,
    "password_reset_requested": None,
}


def nested_properties() -> dict[str, Any]:
    """Every secret text and key, nested in dicts, lists and tuples, beside readable ones."""
    texts = [text for _, text, _ in SECRET_TEXTS]
    return {
        "note": texts[0],
        "request": {
            "headers": {"Authorization": KEY_VALUES["Authorization"], "Accept": "text/html"},
            "body": {"deep": {"deeper": [{"deepest": texts[1:10]}]}},
        },
        "items": [texts[10:20], (texts[20:30], {"x": texts[30:]})],
        "keys": {key: value for key, value in KEY_VALUES.items() if key != "Authorization"},
        "readable": list(READABLE_TEXTS),
        **READABLE_PROPERTIES,
    }


def wire(server: CaptureServer) -> str:
    """Everything the capture server received, as one JSON text."""
    return json.dumps([request.body for request in server.requests], ensure_ascii=False)


def assert_no_leaks(text: str) -> None:
    leaked = [label for label, _, part in SECRET_TEXTS if part in text]
    leaked += [key for key, value in KEY_VALUES.items() if value in text]
    assert not leaked, leaked


def assert_readable(props: dict[str, Any]) -> None:
    for key, value in READABLE_PROPERTIES.items():
        assert props[key] == value, key


# -- the corpus, unit by unit -------------------------------------------------------------


def test_the_corpus_is_large() -> None:
    assert len(SECRET_TEXTS) >= 40
    assert len(SECRET_TEXTS) + len(SECRET_KEYS) >= 60


@pytest.mark.parametrize(("label", "text", "part"), SECRET_TEXTS, ids=[s[0] for s in SECRET_TEXTS])
def test_each_secret_shape_is_filtered(label: str, text: str, part: str) -> None:
    redacted = DEFAULT_REDACTOR.redact(text)
    assert part not in redacted
    assert FILTERED in redacted


@pytest.mark.parametrize("text", READABLE_TEXTS)
def test_ordinary_text_stays_readable(text: str) -> None:
    assert DEFAULT_REDACTOR.redact(text) == text


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key: str) -> None:
    assert DEFAULT_REDACTOR.is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [*(k for k, v in READABLE_PROPERTIES.items() if v is not None and not isinstance(v, bool)),
     "session_id", "sessionId", "$window_id", "logger", "authority",
     "$ai_output_tokens", "token_count", "order_id", "$exception_fingerprint", "monkey"],
)  # fmt: skip
def test_ordinary_keys(key: str) -> None:
    assert not DEFAULT_REDACTOR.is_secret_key(key)


def test_redaction_is_idempotent() -> None:
    for _, text, _ in SECRET_TEXTS:
        once = DEFAULT_REDACTOR.redact(text)
        assert DEFAULT_REDACTOR.redact(once) == once


# -- redact first, then cut -----------------------------------------------------------------


def straddling(limit: int, secret_text: str, at: int) -> str:
    """Filler, then ``secret_text`` starting ``at`` characters before ``limit``."""
    filler = ("lorem ipsum " * (limit // 12 + 2))[: limit - at - 1] + " "
    return filler + secret_text + " trailing words" * 10


@pytest.mark.parametrize("label", ["github-ghp_", "url-credentials", "bearer-jwt-header", "json"])
@pytest.mark.parametrize("at", [3, 10, 25])
def test_a_secret_straddling_the_cut_is_filtered_whole(label: str, at: int) -> None:
    _, text, part = next(s for s in SECRET_TEXTS if s[0] == label)
    shown = DEFAULT_REDACTOR.text(straddling(1000, text, at), 1000)
    assert len(shown) <= 1000 and shown.endswith("...")
    for n in range(4, len(part) + 1):  # no prefix of the secret's distinctive part
        assert part[:n] not in shown, (n, shown[-60:])


@pytest.mark.parametrize("label", ["github-ghp_", "url-credentials", "aws-access-key-id"])
def test_a_text_cut_on_the_callers_thread_loses_its_partial_secret(label: str) -> None:
    # What the caller's thread left: cut mid-secret and marked "...".
    _, text, part = next(s for s in SECRET_TEXTS if s[0] == label)
    cut_at = text.index(part) + len(part) // 2
    shown = DEFAULT_REDACTOR.text(text[:cut_at] + "...", 8192)
    assert part[: len(part) // 2] not in shown
    assert shown.endswith("...")


def test_a_long_single_run_is_cut_not_masked() -> None:
    assert DEFAULT_REDACTOR.text("m" * 100_000, 8192) == "m" * 8189 + "..."
    # and the work is bounded: only twice the limit is read
    assert DEFAULT_REDACTOR.text("a b " * 5_000_000, 100).endswith("...")


def test_fingerprints_keep_their_digest() -> None:
    value = tok("gh", "p_", body(ALNUM, 36))
    head = ("x " * 45) + value[:12]  # the template's head, cut mid-token by fingerprint()
    fingerprint = f"app.logger:{head}...0123456789abcdef"
    redacted = DEFAULT_REDACTOR.fingerprint(fingerprint)
    assert value[4:12] not in redacted
    assert redacted.endswith("...0123456789abcdef")


# -- user options ---------------------------------------------------------------------------


def test_user_keys_and_patterns() -> None:
    redactor = Redactor(
        keys=["ssn", "iban_number"],
        patterns=compile_patterns([r"CUST-\d{6}", r"pin=(?P<value>\d{4})"]),
    )
    assert redactor.is_secret_key("customer_SSN")
    assert redactor.is_secret_key("IbanNumber")
    assert not DEFAULT_REDACTOR.is_secret_key("customer_ssn")
    assert redactor.redact("ssn=123-45-6789 and IBAN-NUMBER: DE89370400440532013000") == (
        f"ssn={FILTERED} and IBAN-NUMBER: {FILTERED}"
    )
    assert redactor.redact("customer CUST-123456 pin=1234 ok") == (
        f"customer {FILTERED} pin={FILTERED} ok"
    )


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"redact_patterns": ["(unclosed"]}, ValueError, "not a valid regex"),
        ({"redact_patterns": ["x*"]}, ValueError, "matches the empty string"),
        ({"redact_patterns": [42]}, TypeError, "redact_patterns takes regexes"),
        ({"redact_keys": [""]}, ValueError, "redact_keys takes key names"),
        ({"redact_keys": [None]}, ValueError, "redact_keys takes key names"),
    ],
)
def test_bad_options_fail_at_configuration(
    options: dict[str, Any], error: type[Exception], message: str, posthog_client: Any
) -> None:
    with pytest.raises(error, match=message):
        Reporter(posthog_client, **options)
    with pytest.raises(error, match=message):
        PostHogHandler(client=posthog_client, **options)
    with pytest.raises(error, match=message):
        PostHogProcessor(posthog_client, **options)
    with pytest.raises(error, match=message):
        posthog_errors.install(posthog_client, **options)
    assert posthog_errors._install.active_installation() is None


def test_user_options_reach_the_wire_from_a_config_file_handler(
    capture_server: CaptureServer, posthog_client: Any
) -> None:
    # As logging.config.fileConfig passes them: plain strings.
    handler = PostHogHandler(
        client=posthog_client, redact_keys="ssn", redact_patterns=r"CUST-\d{6}"
    )
    logger = logging.getLogger("test.redaction.config")
    logger.handlers = [handler]
    logger.propagate = False
    try:
        logger.error("customer CUST-482913 failed", extra={"ssn": "123-45-6789"})
    finally:
        logger.handlers = []
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    text = wire(capture_server)
    assert "482913" not in text and "123-45-6789" not in text
    assert event["properties"]["ssn"] == FILTERED


# -- through every door, on the wire ----------------------------------------------------------


def _values_of_secret_texts() -> str:
    return " | ".join(text for _, text, _ in SECRET_TEXTS)


def fail_with_secrets_in_locals() -> None:
    password = KEY_VALUES["password"]  # noqa: F841
    api_key = KEY_VALUES["api_key"]  # noqa: F841
    texts = [text for _, text, _ in SECRET_TEXTS]  # noqa: F841
    config = {"password": KEY_VALUES["db_password"], "host": "db"}  # noqa: F841
    token_value = next(text for label, text, _ in SECRET_TEXTS if label == "github-ghp_")  # noqa: F841
    order_id = "order-1234"  # noqa: F841
    raise RuntimeError(_values_of_secret_texts())


def test_capture_exception_with_properties_fingerprint_and_code_variables(
    capture_server: CaptureServer, posthog_client: posthog.Posthog
) -> None:
    set_default_reporter(Reporter(posthog_client, capture_code_variables=True))
    # (named as a secret: this frame's own locals are sent too)
    login_password = next(p for label, _, p in SECRET_TEXTS if label == "password-assignment")
    try:
        fail_with_secrets_in_locals()
    except RuntimeError as exc:
        assert posthog_errors.capture_exception(
            exc, properties=nested_properties(), fingerprint=f"login password={login_password}"
        )
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert_no_leaks(wire(capture_server))
    props = event["properties"]
    assert_readable(props)
    assert props["readable"] == READABLE_TEXTS
    assert props["keys"]["password"] == FILTERED
    assert props["$exception_fingerprint"] == f"login password={FILTERED}"
    frames = props["$exception_list"][0]["stacktrace"]["frames"]
    variables = frames[-1]["code_variables"]
    assert variables["order_id"] == "order-1234"
    assert variables["password"] == FILTERED
    assert variables["token_value"] == FILTERED


def test_logging_message_extra_and_exception_value(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    logger = logging.getLogger("test.redaction.logging")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    secrets_text = _values_of_secret_texts()
    try:
        try:
            raise ConnectionError(secrets_text)
        except ConnectionError:
            logger.exception(f"retrying: {secrets_text}", extra=nested_properties())
        # An f-string message: the text is the fingerprint's template too.
        logger.error(f"upstream said: {secrets_text}", extra=nested_properties())
        logger.error("upstream said: %s", secrets_text, extra={"headers": dict(KEY_VALUES)})
    finally:
        logger.handlers = []
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(3)
    assert len(events) == 3
    assert_no_leaks(wire(capture_server))
    for event in events[:2]:
        assert_readable(event["properties"])
        assert event["properties"]["readable"] == READABLE_TEXTS
    assert any("log_message" in e["properties"] for e in events)
    assert any(FILTERED in e["properties"].get("$issue_name", "") for e in events)


def test_structlog_event_dict_keys_and_values(
    capture_server: CaptureServer, reporter: Reporter
) -> None:
    structlog.reset_defaults()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            PostHogProcessor(reporter=reporter),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=io.StringIO()),
        cache_logger_on_first_use=False,
    )
    log = structlog.get_logger("test.redaction.structlog")
    try:
        try:
            raise ValueError(_values_of_secret_texts())
        except ValueError:
            log.exception("failed", **KEY_VALUES, **nested_properties())
        log.error(f"message {_values_of_secret_texts()}", **KEY_VALUES)
    finally:
        structlog.reset_defaults()
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert len(events) == 2
    assert_no_leaks(wire(capture_server))
    props = next(e["properties"] for e in events if "readable" in e["properties"])
    # (_event_dict leaves out keys that look secret by a rule of its own, "max_tokens" too)
    assert props["readable"] == READABLE_TEXTS and props["user_id"] == 42
    assert props["pwd"] == FILTERED and props["keys"]["password"] == FILTERED


def test_bound_properties(capture_server: CaptureServer, reporter: Reporter) -> None:
    with posthog_errors.bind("user-1", properties=nested_properties()):
        try:
            raise ValueError("bound")
        except ValueError as exc:
            posthog_errors.capture_exception(exc, properties={"extra": KEY_VALUES})
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert_no_leaks(wire(capture_server))
    assert_readable(event["properties"])
    assert event["properties"]["extra"]["cookie"] == FILTERED


def test_values_straddling_every_cut_on_the_wire(
    capture_server: CaptureServer, reporter: Reporter, tmp_path: Path
) -> None:
    _, text, part = next(s for s in SECRET_TEXTS if s[0] == "github-ghp_")
    # A source line of over 1,000 characters with the token crossing column 1,000.
    prefix = "    raise ValueError('x')  # "
    line = straddling(1000 - len(prefix), text, 30).replace("'", "")
    module_path = tmp_path / "redaction_longline.py"
    module_path.write_text(f"def fail():\n{prefix}{line}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("redaction_longline")
    finally:
        sys.path.remove(str(tmp_path))
    logger = logging.getLogger("test.redaction.cuts")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        try:
            module.fail()
        except ValueError as exc:
            posthog_errors.capture_exception(exc, properties={"note": straddling(1024, text, 8)})
        try:
            raise ValueError(straddling(8192, text, 6))  # cut on the caller's thread
        except ValueError as exc:
            posthog_errors.capture_exception(exc)
        logger.error(straddling(8192, text, 9))  # a message: redacted, then cut
    finally:
        logger.handlers = []
        sys.modules.pop("redaction_longline", None)
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(3)
    assert len(events) == 3
    sent = wire(capture_server)
    for n in range(4, len(part) + 1):
        assert part[:n] not in sent, n
    lines = [
        frame["context_line"]
        for event in events
        for frame in event["properties"]["$exception_list"][0]
        .get("stacktrace", {})
        .get("frames", [])
        if frame["function"] == "fail" and frame["context_line"]
    ]
    assert lines and len(lines[0]) == 1000 and FILTERED in lines[0]


def test_redaction_off_sends_everything_as_it_was(
    capture_server: CaptureServer, posthog_client: Any
) -> None:
    # The same doors with the switch off: the assertions above can fail.
    set_default_reporter(Reporter(posthog_client, redact_secrets=False))
    try:
        raise ValueError(_values_of_secret_texts())
    except ValueError as exc:
        posthog_errors.capture_exception(exc, properties=nested_properties())
    assert posthog_errors.flush(5)
    capture_server.wait_for_events(1)
    text = wire(capture_server)
    assert all(part in text for _, _, part in SECRET_TEXTS)
    assert all(value in text for value in KEY_VALUES.values())


# -- Sentry ----------------------------------------------------------------------------------


@pytest.fixture
def sentry_server() -> Iterator[SentryServer]:
    with SentryServer(project_id=4242) as server:
        yield server


def sentry_failure() -> ValueError:
    password = KEY_VALUES["password"]  # noqa: F841
    order_id = "order-1234"  # noqa: F841
    note = next(text for label, text, _ in SECRET_TEXTS if label == "stripe-sk_live_")  # noqa: F841
    try:
        raise ValueError(_values_of_secret_texts())
    except ValueError as exc:
        return exc


def sentry_exception_text(props: dict[str, Any]) -> str:
    """``$sentry_exception`` as sent: JSON down to the frames' variables."""
    return json.dumps(props["$sentry_exception"])


def test_sentry_data_is_redacted_and_locals_dropped(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = PostHogIntegration(posthog_client)
    with sentry_initialised(sentry_server.dsn, integrations=[integration]):
        sentry_sdk.capture_exception(sentry_failure())
        sentry_sdk.capture_message(f"no exception: {_values_of_secret_texts()}", level="error")
    sentry_events = sentry_server.wait_for_events(2)
    # sentry-sdk itself sent the locals (its own business): the test can fail.
    assert any("vars" in json.dumps(e.get("exception")) for e in sentry_events)
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert len(events) == 2
    assert_no_leaks(wire(capture_server))
    props = next(e["properties"] for e in events if e["properties"].get("$sentry_exception"))
    assert FILTERED in props["$sentry_exception_message"]
    sent = sentry_exception_text(props)
    assert "fail_with" not in sent and "sentry_failure" in sent  # the frames are there
    assert '"vars":' not in sent and '"order_id":' not in sent  # but not their locals
    message_event = next(e for e in events if not e["properties"].get("$sentry_exception"))
    assert FILTERED in message_event["properties"]["$exception_list"][0]["value"]
    assert FILTERED in message_event["properties"]["$sentry_exception_message"]


def test_sentry_locals_are_kept_and_redacted_with_code_variables_on(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = PostHogIntegration(posthog_client, capture_code_variables=True)
    with sentry_initialised(sentry_server.dsn, integrations=[integration]):
        sentry_sdk.capture_exception(sentry_failure())
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert_no_leaks(wire(capture_server))
    sent = sentry_exception_text(event["properties"])
    assert '"vars":' in sent and '"order_id":' in sent
    assert f'"password": "{FILTERED}"' in sent
    # Real JSON, not a repr string: the frames are objects PostHog can read.
    [value] = event["properties"]["$sentry_exception"]["values"]
    assert isinstance(value["stacktrace"]["frames"][-1]["vars"], dict)
