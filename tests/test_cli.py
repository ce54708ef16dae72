"""The command line: demo, serve and test, run as a newcomer would (child processes)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from posthog_errors._render import Style
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
    for door in ("python.logging", "python.threading_excepthook", "python.asyncio"):
        assert door in headline
    assert "python.sys_excepthook" in headline  # the crashing child process
    assert 'File "posthog_errors/demo.py"' in result.stdout  # frames, read like a traceback
    assert "\033[" not in result.stdout  # not a terminal: no colour


def test_demo_json_prints_the_raw_events() -> None:
    result = run_cli("demo", "--json", env=clean_env())
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert len(events) >= 5
    assert len({e["properties"]["$exception_source"] for e in events}) >= 5
    for event in events:
        assert_event_conforms(event)


@pytest.mark.parametrize("command", [[], ["demo"], ["serve"], ["test"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: posthog-errors" in result.stdout


def test_serve_prints_what_an_app_sends_and_a_summary_on_ctrl_c() -> None:
    serve = subprocess.Popen(
        [*CLI, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        url = first.split("Listening on ")[1].strip()
        app = textwrap.dedent(
            """
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
        )
        crashed = subprocess.run(
            [sys.executable, "-c", app],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(POSTHOG_HOST=url, POSTHOG_API_KEY="phc_any"),
        )
        assert crashed.returncode == 1
    finally:
        serve.send_signal(signal.SIGINT)
        output, errors = serve.communicate(timeout=30)
    assert serve.returncode == 0, errors
    assert "RuntimeError: served to the terminal" in output
    assert "distinct_id=served-user" in output
    assert "in handler" in output
    assert "1 $exception events" in output
    assert "1 other events" in output


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
