"""A PostHog event names a Sentry event only if Sentry sent it: every arrangement.

Each case is a real app in a child process: the real sentry-sdk sending to a loopback
envelope server, the real posthog client to the loopback capture server, posthog-errors
installed, the failure reaching both SDKs through their own doors. The cases cross:

- the order: ``posthog_errors.sentry`` imported before ``sentry_sdk.init()``, after it, or
  never by the app (loaded by ``install()``, with sentry-sdk imported before or after it);
- with and without ``PostHogIntegration``;
- what happens to the failure: logged then re-raised (Sentry's logging integration and
  both SDKs' excepthooks see the same exception), captured by Sentry then left uncaught,
  captured by posthog-errors then left uncaught, Sentry's ``before_send`` dropping
  everything, Sentry sampling at 0.

Asserted on both wires: the PostHog event for the failure exists once; it names a Sentry
event exactly when Sentry sent one, and then one that Sentry really sent; the Sentry event
carries the person.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from posthog_errors.capture_server import CaptureServer
from tests.sentry_server import SentryServer

ORDERS = {
    # posthog_errors.sentry imported by the app before sentry_sdk.init()
    "bridge-before-init": ("import sentry_sdk, posthog_errors.sentry", "install", "init"),
    # imported after init
    "bridge-after-init": ("import sentry_sdk", "init", "import posthog_errors.sentry", "install"),
    # never imported by the app: install() loads it (sentry_sdk already imported)
    "install-then-init": ("import sentry_sdk", "install", "init"),
    # never imported by the app, and sentry_sdk imported only after install()
    "install-then-import": ("install", "import sentry_sdk", "init"),
}
FAILURES = {
    "log-then-raise": """
        try:
            fail()
        except ValueError:
            logging.getLogger("shop").exception("checkout failed")
            raise
    """,
    "sentry-capture-then-raise": """
        try:
            fail()
        except ValueError as error:
            sentry_sdk.capture_exception(error)
            raise
    """,
    "posthog-capture-then-raise": """
        try:
            fail()
        except ValueError as error:
            posthog_errors.capture_exception(error)
            raise
    """,
    "sentry-before-send-drops": "fail()",
    "sentry-samples-at-zero": "fail()",
}
SENTRY_OPTIONS = {
    "sentry-before-send-drops": "before_send=lambda event, hint: None,",
    "sentry-samples-at-zero": "sample_rate=0.0,",
}


# sentry-sdk 3.0's defaults for logging: no events from log records (the logging
# integration off, or on with event_level=None). Only the excepthook then reports.
SENTRY_3_LOGGING = ("logging-disabled", "event-level-none")


def script(order: str, failure: str, integration: bool, logging_mode: str | None = None) -> str:
    steps = []
    for step in ORDERS[order]:
        if step == "install":
            steps.append("posthog_errors.install(client)")
        elif step == "init":
            integrations = ["PostHogIntegration(client)"] if integration else []
            options = SENTRY_OPTIONS.get(failure, "")
            if integration:
                steps.append("from posthog_errors.sentry import PostHogIntegration")
            if logging_mode is not None:
                steps.append("from sentry_sdk.integrations.logging import LoggingIntegration")
                if logging_mode == "event-level-none":
                    integrations.append("LoggingIntegration(event_level=None)")
                else:
                    options += "disabled_integrations=[LoggingIntegration],"
            steps.append(
                f"sentry_sdk.init(dsn=sys.argv[2], {options}"
                f" integrations=[{', '.join(integrations)}])"
            )
        else:
            steps.append(step)
    body = textwrap.dedent(FAILURES[failure])
    return "\n".join(
        [
            "import sys, logging, posthog, posthog_errors",
            'client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01,'
            " max_retries=0)",
            *steps,
            "def fail():",
            "    raise ValueError('card declined')",
            "posthog_errors.set_distinct_id('user-1')",
            body,
        ]
    )


@pytest.fixture
def sentry_server() -> Iterator[SentryServer]:
    with SentryServer(project_id=4242) as server:
        yield server


@pytest.mark.parametrize("integration", [False, True], ids=["bridge", "integration"])
@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("order", list(ORDERS))
def test_a_link_names_only_a_sent_sentry_event(
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    order: str,
    failure: str,
    integration: bool,
) -> None:
    run_and_check(capture_server, sentry_server, script(order, failure, integration), failure)


@pytest.mark.parametrize("integration", [False, True], ids=["bridge", "integration"])
@pytest.mark.parametrize("logging_mode", SENTRY_3_LOGGING)
@pytest.mark.parametrize("order", list(ORDERS))
def test_with_sentry_3_logging_defaults_a_link_is_never_wrong(
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    order: str,
    logging_mode: str,
    integration: bool,
) -> None:
    """No Sentry event for the log record: the PostHog event from the log does not wait for
    one. Sentry's excepthook reports the re-raised exception a moment later, with the
    person; the PostHog event names it if it was decided before the event went out, and
    never names anything else."""
    program = script(order, "log-then-raise", integration, logging_mode)
    run_and_check(capture_server, sentry_server, program, "log-then-raise", linked=False)
    [sentry_event] = sentry_server.events
    assert sentry_event["exception"]["values"][-1]["mechanism"]["type"] == "excepthook"
    [event] = capture_server.events
    assert event["properties"].get("$sentry_event_id") in (None, sentry_event["event_id"])


def run_and_check(
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    program: str,
    failure: str,
    *,
    linked: bool = True,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-c",
            program,
            capture_server.url,
            sentry_server.dsn,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr  # the failure was uncaught, as the app's
    assert "ValueError: card declined" in result.stderr
    logged = 1 if failure == "log-then-raise" else 0  # the app's own log line shows it too
    assert result.stderr.count("Traceback") == 1 + logged, result.stderr

    sent = {event["event_id"]: event for event in sentry_server.events}
    expect_sentry = failure not in SENTRY_OPTIONS
    assert (len(sent) == 1) is expect_sentry, list(sent)
    events = capture_server.wait_for_events(1, timeout=5)
    assert len(events) == 1, events  # one failure, one PostHog event, whichever door
    props = events[0]["properties"]
    assert events[0]["distinct_id"] == "user-1"
    if expect_sentry:
        [sentry_event] = sent.values()
        if linked:
            assert props.get("$sentry_event_id") == sentry_event["event_id"], props
        assert sentry_event["tags"]["posthog_distinct_id"] == "user-1"
        assert sentry_event["tags"]["PostHog Person URL"].endswith("/person/user-1")
    else:
        assert "$sentry_event_id" not in props and "$sentry_url" not in props
