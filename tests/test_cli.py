"""The command line: demo, serve and test, run as a newcomer would (child processes)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from posthog_errors._render import Style, render_event
from posthog_errors.capture_server import CaptureServer
from tests.conformance import assert_event_conforms
from tests.sentry_server import SentryServer

CLI = [sys.executable, "-m", "posthog_errors"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env or dict(os.environ)
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTHOG_", "SENTRY_"))}
    env.update(extra)
    return env


def test_demo_shows_events_from_at_least_five_doors() -> None:
    result = run_cli("demo", env=clean_env())
    assert result.returncode == 0, result.stderr
    headline = result.stdout.splitlines()[0]
    assert "from 6 doors" in headline or "from 5 doors" in headline
    doors = ("python.logging", "python.threading_excepthook", "python.asyncio_exception_handler")
    for door in (*doors, "manual capture"):
        assert door in headline
    assert "python.sys_excepthook" in headline  # the crashing child process
    assert 'File "posthog_errors/demo.py"' in result.stdout  # frames, read like a traceback
    assert "\033[" not in result.stdout  # not a terminal: no colour
    # The failure with its logs: the INFO records before it, sent to PostHog Logs with the
    # person and session of the request, and the failure's own record naming its event.
    logs = result.stdout.split("PostHog Logs received ")[1].splitlines()
    cart = next(i for i, line in enumerate(logs) if "INFO    shop.checkout  cart loaded" in line)
    assert "distinct_id=user_42" in logs[cart + 1] and "items=3" in logs[cart + 1]
    failed = next(i for i, line in enumerate(logs) if "ERROR   shop.checkout  checkout" in line)
    assert "posthogExceptionUuid=" in logs[failed + 1]


def test_demo_json_prints_the_raw_events() -> None:
    result = run_cli("demo", "--json", env=clean_env())
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert len(events) >= 5
    # Six doors; the manual capture's event names no source (PostHog's SDK event spec).
    assert len({e["properties"].get("$exception_source") for e in events}) >= 5
    for event in events:
        assert_event_conforms(event)


@pytest.mark.parametrize("command", [[], ["demo"], ["serve"], ["test"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: posthog-errors" in result.stdout


def _ctrl_c_interrupts() -> None:
    """In the server's process: SIGINT raises KeyboardInterrupt, as Ctrl-C at a terminal
    does. A run started in the background by a non-interactive shell (``make test &``)
    inherits SIGINT ignored, and Python then never installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serve_while(app: str, *flags: str, **env: str) -> tuple[int, str, str]:
    """Run ``posthog-errors serve`` (with ``flags``), run the Python ``app`` against it, then
    Ctrl-C the server: (its exit code, stdout, stderr). The banner, and so the URL, is on
    stdout for people and on stderr with ``--json``."""
    # Files, not pipes: the server writes every event as it arrives, and events with their
    # frames can fill a pipe nobody reads until the server exits (it would block for ever).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        serve = subprocess.Popen(
            [*CLI, "serve", "--port", "0", *flags], stdout=out, stderr=err, text=True,
            env=clean_env(), preexec_fn=_ctrl_c_interrupts,
        )  # fmt: skip
        try:
            banner_file = err if "--json" in flags else out
            deadline = time.monotonic() + 30
            banner = ""
            while "Listening on " not in banner and time.monotonic() < deadline:
                time.sleep(0.05)
                banner_file.seek(0)
                banner = banner_file.readline()
            url = banner.split("Listening on ")[1].strip()
            ran = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(app)],
                capture_output=True,
                text=True,
                timeout=60,
                env=clean_env(POSTHOG_HOST=url, POSTHOG_API_KEY="phc_any", **env),
            )
            assert ran.returncode in (0, 1), ran.stderr
        finally:
            serve.send_signal(signal.SIGINT)
            serve.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        return serve.returncode, out.read(), err.read()


def test_serve_prints_what_an_app_sends_and_a_summary_on_ctrl_c() -> None:
    app = """
        import os, posthog, posthog_errors
        analytics = posthog.Posthog("phc_any", host=os.environ["POSTHOG_HOST"])
        analytics.capture("signed_up", distinct_id="u1")   # not an error: counted only
        analytics.flush()
        posthog_errors.install()            # key and host from the environment
        posthog_errors.set_distinct_id("served-user")
        def handler():
            raise RuntimeError("served to the terminal")
        handler()
        """
    returncode, output, errors = serve_while(app)
    assert returncode == 0, errors
    assert output.startswith("Listening on http://127.0.0.1:")
    assert "RuntimeError: served to the terminal" in output
    assert "distinct_id=served-user" in output
    assert "in handler" in output
    assert "1 $exception events" in output
    assert "1 other events" in output


# One event with a person and a session, one personless (captured with no distinct ID),
# and one analytics event that serve only counts.
SESSION_APP = """
    import os, posthog, posthog_errors
    analytics = posthog.Posthog("phc_any", host=os.environ["POSTHOG_HOST"])
    analytics.capture("signed_up", distinct_id="u1")
    analytics.flush()
    posthog_errors.install()
    with posthog_errors.bind("served-user", session_id="served-session-1"):
        try:
            raise RuntimeError("in a session")
        except RuntimeError as error:
            posthog_errors.capture_exception(error)
    try:
        raise ValueError("nobody's")
    except ValueError as error:
        posthog_errors.capture_exception(error)
    assert posthog_errors.flush(15)
    """


@pytest.mark.parametrize("capture_mode", ["v0", "v1"])
def test_serve_shows_each_events_session_and_whether_it_is_personless(capture_mode: str) -> None:
    returncode, output, errors = serve_while(SESSION_APP, POSTHOG_CAPTURE_MODE=capture_mode)
    assert returncode == 0, errors
    blocks = {block.splitlines()[0]: block for block in output.split("\n\n") if block.strip()}
    in_session = blocks["RuntimeError: in a session"]
    assert "distinct_id=served-user" in in_session
    assert "session_id=served-session-1" in in_session
    assert "personless" not in in_session
    personless = blocks["ValueError: nobody's"]
    assert "personless (no distinct id)" in personless
    assert "distinct_id=" not in personless
    assert "session_id=" not in personless
    assert "2 $exception events" in output


@pytest.mark.parametrize("capture_mode", ["v0", "v1"])
def test_serve_json_keeps_stdout_to_one_json_event_per_line(capture_mode: str) -> None:
    returncode, output, errors = serve_while(
        SESSION_APP, "--json", POSTHOG_CAPTURE_MODE=capture_mode
    )
    assert returncode == 0, errors
    events = [json.loads(line) for line in output.splitlines()]  # every line, nothing else
    assert output.endswith("\n")
    assert len(events) == 2
    for event in events:
        assert event["event"] == "$exception"
        assert_event_conforms(event)
    by_value = {e["properties"]["$exception_list"][0]["value"]: e for e in events}
    assert by_value["in a session"]["properties"]["$session_id"] == "served-session-1"
    assert by_value["nobody's"]["properties"]["$process_person_profile"] is False
    # The banner and the Ctrl-C summary, out of the JSON's way.
    assert errors.startswith("Listening on http://127.0.0.1:")
    assert "2 $exception events" in errors
    assert "1 other events" in errors
    assert "\033[" not in output + errors  # not a terminal: no colour


# An app that sends its logs to PostHog Logs: two records before a failure, and the
# failure's own record, which also becomes the $exception event.
LOGS_APP = """
    import logging, posthog_errors
    logging.basicConfig(level=logging.INFO)
    posthog_errors.install(send_logs="info")
    log = logging.getLogger("shop.checkout")
    with posthog_errors.bind("served-user", session_id="served-session-1"):
        log.info("loading cart %s", "C-7", extra={"items": 3})
        log.warning("card declined once, retrying")
        try:
            raise RuntimeError("payment failed")
        except RuntimeError:
            log.exception("checkout failed")
    log.debug("below send_logs: not sent")
    assert posthog_errors.flush(15)
    """


def test_serve_prints_each_log_record_with_its_person_and_session() -> None:
    returncode, output, errors = serve_while(LOGS_APP)
    assert returncode == 0, errors
    lines = output.splitlines()
    loading = next(i for i, line in enumerate(lines) if "loading cart C-7" in line)
    assert "INFO" in lines[loading] and "shop.checkout" in lines[loading]
    assert "distinct_id=served-user" in lines[loading + 1]
    assert "session=served-session-1" in lines[loading + 1]
    assert "items=3" in lines[loading + 1]
    assert any("WARN" in line and "card declined once, retrying" in line for line in lines)
    failed = next(i for i, line in enumerate(lines) if "ERROR   shop.checkout  checkout" in line)
    assert "posthogExceptionUuid=" in lines[failed + 1]  # the record points at its event
    assert "RuntimeError: payment failed" in output  # and the event itself
    assert "below send_logs" not in output
    assert "3 log records" in output
    assert "1 $exception events" in output


def test_serve_json_prints_a_json_line_per_log_record() -> None:
    returncode, output, errors = serve_while(LOGS_APP, "--json")
    assert returncode == 0, errors
    lines = [json.loads(line) for line in output.splitlines()]  # every line, nothing else
    records = [line for line in lines if "body" in line]
    events = [line for line in lines if "event" in line]
    assert [r["body"] for r in records] == [
        "loading cart C-7",
        "card declined once, retrying",
        "checkout failed",
    ]
    assert {r["attributes"]["posthogDistinctId"] for r in records} == {"served-user"}
    assert {r["attributes"]["sessionId"] for r in records} == {"served-session-1"}
    assert records[2]["severity_text"] == "ERROR"
    assert records[2]["severity_number"] == 17
    assert records[2]["attributes"]["posthogExceptionUuid"] == events[0]["uuid"]
    assert len(events) == 1
    assert_event_conforms(events[0])
    assert "3 log records" in errors


def test_render_event_shows_the_session_and_a_personless_event() -> None:
    style = Style(io.StringIO())
    frames = {"frames": [{"filename": "app.py", "lineno": 3, "function": "f", "in_app": True}]}
    exception = {"type": "KeyError", "value": "'sku'", "stacktrace": frames}
    in_session = render_event(
        {
            "event": "$exception",
            "distinct_id": "user_1",
            "properties": {"$exception_list": [exception], "$session_id": "sess-42"},
        },
        style,
    )
    assert "distinct_id=user_1" in in_session
    assert "session_id=sess-42" in in_session
    assert "personless" not in in_session
    personless = render_event(
        {
            "event": "$exception",
            "distinct_id": "0193a1b2-random-uuid",
            "properties": {"$exception_list": [exception], "$process_person_profile": False},
        },
        style,
    )
    assert "personless (no distinct id)" in personless
    assert "0193a1b2-random-uuid" not in personless
    assert "session_id=" not in personless


def test_demo_shows_sessions_and_personless_events() -> None:
    result = run_cli("demo", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "session_id=01932f5e-9c1a-7b3d-8e2f-4a5b6c7d8e9f" in result.stdout  # logging door
    assert "personless (no distinct id)" in result.stdout  # the manual capture, no ID


def test_test_command_without_a_key_explains_in_one_line() -> None:
    result = run_cli("test", env=clean_env())
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "POSTHOG_API_KEY" in result.stderr


def test_test_command_sends_a_recognisable_exception_to_posthog_and_sentry() -> None:
    with CaptureServer() as posthog_server, SentryServer() as sentry_server:
        result = run_cli(
            "test",
            env=clean_env(
                POSTHOG_API_KEY="phc_test",
                POSTHOG_HOST=posthog_server.url,
                SENTRY_DSN=sentry_server.dsn,
                SENTRY_ORG="my-org",
            ),
        )
        assert result.returncode == 0, result.stderr
        events = posthog_server.wait_for_events(2)
        [sentry_event] = sentry_server.wait_for_events(1)
    distinct_id = result.stdout.split("distinct ID", 1)[1].split()[0]
    assert distinct_id.startswith("posthog-errors-test-")
    assert {e["distinct_id"] for e in events} == {distinct_id}
    assert {e["properties"]["$exception_list"][0]["type"] for e in events} == {
        "PostHogErrorsTestException"
    }
    assert sentry_event["tags"]["posthog_distinct_id"] == distinct_id
    assert sentry_event["event_id"] in result.stdout
    link = f"https://sentry.io/organizations/my-org/issues/?project=42&query={sentry_event['event_id']}"
    assert link in result.stdout
    linked = [e for e in events if e["properties"].get("$sentry_url") == link]
    assert len(linked) == 1


def test_colour_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert Style(Terminal()).enabled
    assert not Style(io.StringIO()).enabled
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Style(Terminal()).enabled
