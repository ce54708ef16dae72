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
  everything, Sentry sampling at 0;
- and, for a logged then re-raised failure, sentry-sdk's logging integration in the shapes
  that make no Sentry event of a record on 3.x: disabled, ``event_level=None``, and
  ``LoggingIntegration()`` (3.x: Sentry Logs, no events; 2.x: events from ERROR).

Asserted on both wires: the PostHog event for the failure exists once; it names a Sentry
event exactly when Sentry sent one, and then one that Sentry really sent; the Sentry event
carries the person. A PostHog event from a log record waits for Sentry (each child reports
it) exactly when the installed sentry-sdk makes an event of the record.

Each failure needs a process of its own (it ends uncaught, and the order is an import
order), so the cost is in starting children: each test runs the eight cases of one order
and one integration setting, two children at a time, each against its own pair of loopback
servers; the children leave sentry-sdk's auto-enabling integrations off (importing every
web framework installed here would triple each child's start; none of them is a door
here), and every wait returns as soon as what it waits for has arrived.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from sentry_sdk.consts import DEFAULT_OPTIONS

from posthog_errors.capture_server import CaptureServer
from tests.conformance import assert_event_conforms
from tests.sentry_server import SENTRY_SDK_MAJOR, SentryServer

PARALLEL = 2  # child processes at a time, per test
HELD = "posthog-errors held a log record's event for Sentry: "

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

# sentry-sdk's logging integration, for a logged then re-raised failure, in the shapes that
# make no Sentry event of the record on 3.x (its default is "logging-disabled").
LOGGING_MODES = ("logging-disabled", "event-level-none", "logging-integration-defaults")
# sentry-sdk 2.0 has no disabled_integrations option: the default integrations the cases
# use, without logging's, instead.
DISABLE_OPTION = "disabled_integrations" in DEFAULT_OPTIONS
WITHOUT_LOGGING = (
    "from sentry_sdk.integrations.atexit import AtexitIntegration",
    "from sentry_sdk.integrations.dedupe import DedupeIntegration",
    "from sentry_sdk.integrations.excepthook import ExcepthookIntegration",
)


@dataclass(frozen=True)
class Case:
    order: str
    integration: bool
    failure: str  # a FAILURES key
    logging_mode: str | None = None  # a LOGGING_MODES entry; None: the line's default

    @property
    def name(self) -> str:
        return self.logging_mode or self.failure

    @property
    def record_makes_sentry_event(self) -> bool:
        """Whether the installed sentry-sdk makes a Sentry event of the log record: its
        logging integration's default (2.x: on, events from ERROR; 3.x: off), or
        ``LoggingIntegration()`` (2.x: events from ERROR; 3.x: Sentry Logs only)."""
        if self.failure != "log-then-raise":
            return False
        if self.logging_mode in (None, "logging-integration-defaults"):
            return SENTRY_SDK_MAJOR < 3
        return False

    @property
    def sends_sentry_logs(self) -> bool:
        """3.x's LoggingIntegration, whatever its event_level, sends records from INFO to
        Sentry Logs; 2.x sends none unless asked to."""
        enabled = self.logging_mode in ("event-level-none", "logging-integration-defaults")
        return SENTRY_SDK_MAJOR >= 3 and enabled


def script(case: Case) -> str:
    steps = []
    for step in ORDERS[case.order]:
        if step == "install":
            steps.append("posthog_errors.install(client)")
        elif step == "init":
            integrations = ["PostHogIntegration(client)"] if case.integration else []
            options = SENTRY_OPTIONS.get(case.failure, "")
            if case.integration:
                steps.append("from posthog_errors.sentry import PostHogIntegration")
            if case.logging_mode is not None:
                steps.append("from sentry_sdk.integrations.logging import LoggingIntegration")
            if case.logging_mode == "event-level-none":
                integrations.append("LoggingIntegration(event_level=None)")
            elif case.logging_mode == "logging-integration-defaults":
                integrations.append("LoggingIntegration()")
            elif case.logging_mode == "logging-disabled" and DISABLE_OPTION:
                options += "disabled_integrations=[LoggingIntegration],"
            elif case.logging_mode == "logging-disabled":
                steps.extend(WITHOUT_LOGGING)
                options += "default_integrations=False,"
                integrations += [
                    "AtexitIntegration()",
                    "DedupeIntegration()",
                    "ExcepthookIntegration()",
                ]
            steps.append(
                f"sentry_sdk.init(dsn=sys.argv[2], {options}"
                " auto_enabling_integrations=False,"
                f" integrations=[{', '.join(integrations)}])"
            )
        else:
            steps.append(step)
    body = textwrap.dedent(FAILURES[case.failure])
    return "\n".join(
        [
            "import sys, logging, posthog, posthog_errors",
            "from posthog_errors import _extensions",
            'client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01,'
            " max_retries=0)",
            *steps,
            # After the bridge's own capture hook (loaded by now, in every order): whether
            # the event of a log record is held back for Sentry.
            "_extensions.add_capture_hook(lambda exception, snapshot: sys.stderr.write(",
            f"    {HELD!r} + str(snapshot.not_before > 0) + '\\n')",
            "    if snapshot.source == 'python.logging' else None)",
            "def fail():",
            "    raise ValueError('card declined')",
            "posthog_errors.set_distinct_id('user-1')",
            body,
        ]
    )


def cases(order: str, integration: bool) -> list[Case]:
    return [Case(order, integration, failure) for failure in FAILURES] + [
        Case(order, integration, "log-then-raise", mode) for mode in LOGGING_MODES
    ]


@pytest.mark.parametrize("integration", [False, True], ids=["bridge", "integration"])
@pytest.mark.parametrize("order", list(ORDERS))
def test_a_link_names_only_a_sent_sentry_event(order: str, integration: bool) -> None:
    """The eight cases of one order and integration setting; every case is checked, and the
    message names each one that failed."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(PARALLEL) as pool:
        started = []
        for case in cases(order, integration):
            capture = stack.enter_context(CaptureServer())
            sentry = stack.enter_context(SentryServer(project_id=4242))
            started.append((case, capture, sentry, pool.submit(run, case, capture, sentry)))
        problems = []
        for case, capture, sentry, result in started:
            try:
                check(case, capture, sentry, result.result(timeout=90))
            except AssertionError as error:
                problems.append(f"{case.name}: {error}")
    assert not problems, "\n\n".join(problems)


def run(
    case: Case, capture: CaptureServer, sentry: SentryServer
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script(case), capture.url, sentry.dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )


def check(
    case: Case,
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    result: subprocess.CompletedProcess[str],
) -> None:
    assert result.returncode == 1, result.stderr  # the failure was uncaught, as the app's
    assert "ValueError: card declined" in result.stderr
    logged = 1 if case.failure == "log-then-raise" else 0  # the app's own log line shows it
    assert result.stderr.count("Traceback") == 1 + logged, result.stderr
    # A log record's PostHog event waits for Sentry exactly when Sentry makes an event of
    # the record: never for one the installed sentry-sdk will not make.
    held = [line[len(HELD) :] for line in result.stderr.splitlines() if line.startswith(HELD)]
    assert held == [str(case.record_makes_sentry_event)] * logged, result.stderr

    # The child has exited: everything it sent has been received (and answered). What the
    # capture_server fixture checks of every test's server (tests/conftest.py) holds too.
    assert not [r for r in capture_server.requests if r.status in (400, 401)]
    for event in capture_server.exception_events():
        assert_event_conforms(event)
    sent = {event["event_id"]: event for event in sentry_server.events}
    expect_sentry = case.failure not in SENTRY_OPTIONS
    assert (len(sent) == 1) is expect_sentry, list(sent)
    events = capture_server.exception_events()
    assert len(events) == 1, events  # one failure, one PostHog event, whichever door
    props = events[0]["properties"]
    assert events[0]["distinct_id"] == "user-1"
    logs = [(log["body"], log["level"]) for log in sentry_server.logs]
    assert logs == ([("checkout failed", "error")] if case.sends_sentry_logs else []), logs
    if not expect_sentry:
        assert "$sentry_event_id" not in props and "$sentry_url" not in props
        return
    [sentry_event] = sent.values()
    assert sentry_event["tags"]["posthog_distinct_id"] == "user-1"
    assert sentry_event["tags"]["PostHog Person URL"].endswith("/person/user-1")
    mechanism = sentry_event["exception"]["values"][-1]["mechanism"]["type"]
    if case.failure != "log-then-raise" or case.record_makes_sentry_event:
        assert props.get("$sentry_event_id") == sentry_event["event_id"], props
        if case.failure == "log-then-raise":
            assert mechanism == "logging"  # the re-raise's event: dropped by Sentry's dedupe
        return
    # No Sentry event of the log record: Sentry's excepthook reports the re-raised
    # exception a moment later, with the person. The PostHog event of the record did not
    # wait for it: it names it if Sentry decided before the event went out, never another.
    assert mechanism == "excepthook"
    assert props.get("$sentry_event_id") in (None, sentry_event["event_id"]), props


SLOW_SENTRY = """
import sys, time, logging, posthog, posthog_errors, sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01, max_retries=0)
def slow(event, hint):  # Sentry building its event on a loaded machine: 0.6 s
    time.sleep(0.6)
    return event
from sentry_sdk.scope import add_global_event_processor
add_global_event_processor(slow)  # before the bridge's own processor
sentry_sdk.init(dsn=sys.argv[2], auto_enabling_integrations=False,
                integrations=[LoggingIntegration(event_level=logging.ERROR)])
posthog_errors.install(client)
posthog_errors.set_distinct_id("user-1")
try:
    raise ValueError("card declined")
except ValueError:
    logging.getLogger("shop").exception("checkout failed")
sentry_sdk.flush(10)
assert posthog_errors.flush(10)
"""


def test_a_logged_failure_links_a_sentry_event_that_took_longer_than_a_moment() -> None:
    """The PostHog event of a log record waits for Sentry's decision, which ends the wait
    as soon as it is made; a Sentry slow to get its event to the bridge (0.6 s here: the
    wait was a fixed 0.3 s once, and CI's load lost links) is still named."""
    with CaptureServer() as capture, SentryServer(project_id=4242) as sentry:
        result = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", SLOW_SENTRY, capture.url, sentry.dsn],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        [sentry_event] = sentry.events
        [event] = capture.exception_events()
    assert_event_conforms(event)
    assert event["properties"]["$sentry_event_id"] == sentry_event["event_id"]
    assert sentry_event["tags"]["posthog_distinct_id"] == "user-1"
