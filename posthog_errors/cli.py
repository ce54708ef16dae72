"""The ``posthog-errors`` command line (also ``python -m posthog_errors``).

- ``demo``: a sample app that fails through every door, against an embedded local capture
  server; prints what PostHog would have received.
- ``serve``: that capture server as a dev tool: point an app at it with ``POSTHOG_HOST``
  and every ``$exception`` and every PostHog Logs record prints as it arrives.
- ``test``: send one test exception to your PostHog project (and Sentry) and say what to
  look for.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from posthog_errors._render import Style, fingerprint_of, render_event, render_log_record

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from posthog_errors.demo import run_demo

        return run_demo(as_json=args.json)
    if args.command == "serve":
        return serve(args.port, as_json=args.json)
    if args.command == "test":
        return send_test_exception()
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posthog-errors", description="Python failures as PostHog $exception events."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a sample app that fails, against an embedded local capture server",
        description="Run a small sample app that fails through every door (logging, "
        "structlog, a thread, asyncio, a crashing child process, a manual capture), capture "
        "it with an embedded PostHog-compatible server on 127.0.0.1 (no network), and print "
        "what PostHog would have received.",
    )
    demo.add_argument("--json", action="store_true", help="print the raw events as JSON")
    serve_command = commands.add_parser(
        "serve",
        help="run a local capture server that prints the errors an app sends to it",
        description="Run a PostHog-compatible capture server on 127.0.0.1. Point an app at "
        "it (POSTHOG_HOST=http://127.0.0.1:PORT) and every $exception, and every log record "
        "sent to PostHog Logs (/i/v1/logs), prints as it arrives; other events are counted. "
        "Ctrl-C prints a count per fingerprint.",
    )
    serve_command.add_argument(
        "--port", type=int, default=8010, help="port to listen on (0: any free port)"
    )
    serve_command.add_argument(
        "--json", action="store_true", help="print events and log records as JSON lines"
    )
    commands.add_parser(
        "test",
        help="send one test exception to your PostHog project (and Sentry)",
        description="Send one test exception with a recognisable distinct ID to the project "
        "of POSTHOG_API_KEY (at POSTHOG_HOST), and say what to look for. With sentry-sdk "
        "installed and SENTRY_DSN set, send it through Sentry too and print both links "
        "(SENTRY_ORG, and SENTRY_URL_PREFIX for self-hosted Sentry, make the Sentry link).",
    )
    return parser


# -- serve ------------------------------------------------------------------------------


def serve(port: int, *, as_json: bool = False, out: TextIO | None = None) -> int:
    """Print every ``$exception`` and every PostHog Logs record an app sends to a local
    capture server, until Ctrl-C.

    With ``as_json`` the events and records are the only thing on ``out`` (stdout), one JSON
    object a line (an event has an ``"event"`` key, a log record a ``"body"``), so the output
    can be piped into ``jq`` and the like; the banner and the Ctrl-C summary then go to
    stderr. Otherwise everything goes to ``out``, rendered for people.
    """
    from posthog_errors.capture_server import CaptureServer

    stream = out or sys.stdout
    style = Style(stream)
    # What is not an event: on the events' stream for people, out of the JSON lines' way.
    notes = sys.stderr if as_json else stream
    notes_style = Style(notes)
    counts: collections.Counter[str] = collections.Counter()
    others = 0
    log_records = 0
    lock = threading.Lock()

    def write(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    def on_event(event: dict[str, Any]) -> None:
        nonlocal others
        with lock:
            if event.get("event") != "$exception":
                others += 1
                return
            counts[fingerprint_of(event)] += 1
            # json.dumps escapes newlines inside strings: one event, one line.
            write(json.dumps(event) if as_json else render_event(event, style) + "\n")

    def on_log_record(record: dict[str, Any]) -> None:
        nonlocal log_records
        with lock:
            log_records += 1
            write(json.dumps(record, default=str) if as_json else render_log_record(record, style))

    try:
        server = CaptureServer(port, on_event=on_event, on_log_record=on_log_record)
    except OSError as error:
        print(f"posthog-errors serve: cannot listen on 127.0.0.1:{port}: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    with server:
        notes.write(
            notes_style.bold(f"Listening on {server.url}") + "\n"
            f"Point an app at it: POSTHOG_HOST={server.url} (any API key). Ctrl-C to stop.\n\n"
        )
        notes.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    with lock:
        stream.flush()
        notes.write("\n" + notes_style.bold(f"{sum(counts.values())} $exception events") + "\n")
        for fingerprint, count in counts.most_common():
            notes.write(f"  {count:>5}  {fingerprint}\n")
        notes.write(f"{log_records} log records\n")
        notes.write(f"{others} other events\n")
        notes.flush()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# -- test -------------------------------------------------------------------------------


def send_test_exception(out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    api_key = os.environ.get("POSTHOG_API_KEY") or os.environ.get("POSTHOG_PROJECT_API_KEY")
    if not api_key:
        print(
            "posthog-errors test: set POSTHOG_API_KEY to your project API key "
            "(and POSTHOG_HOST for EU Cloud or self-hosted PostHog).",
            file=sys.stderr,
        )
        return 2
    import posthog

    import posthog_errors

    host = os.environ.get("POSTHOG_HOST") or "https://us.i.posthog.com"
    distinct_id = f"posthog-errors-test-{int(time.time())}"
    client = posthog.Posthog(api_key, host=host)
    reporter = posthog_errors._reporter.Reporter(client)
    try:
        raise PostHogErrorsTestException(f"test exception from posthog-errors ({distinct_id})")
    except PostHogErrorsTestException as error:
        reporter.capture(error, distinct_id=distinct_id, properties={"posthog_errors_test": True})
    sentry_lines = _through_sentry(client, distinct_id)
    delivered = posthog_errors.flush(15)
    client.shutdown()
    person_url = f"{host.rstrip('/')}/project/{api_key}/person/{distinct_id}"
    stream.write(
        f"{'Sent' if delivered else 'Could not confirm delivery of'} a test exception to "
        f"{host}.\n"
        f"In PostHog, look for a $exception event (Error tracking, or Activity) with\n"
        f"  distinct ID  {distinct_id}\n"
        f"  type         PostHogErrorsTestException\n"
        f"  person       {person_url}\n"
    )
    for line in sentry_lines:
        stream.write(line + "\n")
    return 0 if delivered else 1


class PostHogErrorsTestException(Exception):
    """The exception ``posthog-errors test`` sends: easy to find and to ignore."""


def _through_sentry(client: Any, distinct_id: str) -> list[str]:
    dsn = os.environ.get("SENTRY_DSN")
    if not dsn:
        return ["(Set SENTRY_DSN, with sentry-sdk installed, to test the Sentry link too.)"]
    try:
        import sentry_sdk

        from posthog_errors.sentry import POSTHOG_ID_TAG, PostHogIntegration
    except ImportError:
        return ["(SENTRY_DSN is set but sentry-sdk is not installed: Sentry was skipped.)"]
    organization = os.environ.get("SENTRY_ORG")  # for the link to the Sentry issue
    prefix = os.environ.get("SENTRY_URL_PREFIX") or "https://sentry.io/organizations/"
    integration = PostHogIntegration(client, organization=organization, prefix=prefix)
    sentry_sdk.init(dsn=dsn, integrations=[integration])
    with sentry_sdk.isolation_scope():
        sentry_sdk.set_tag(POSTHOG_ID_TAG, distinct_id)
        try:
            raise PostHogErrorsTestException(f"test exception through Sentry ({distinct_id})")
        except PostHogErrorsTestException as error:
            event_id = sentry_sdk.capture_exception(error)
    sentry_sdk.flush(10)
    link = integration.sentry_url(str(event_id), dsn) if event_id else None
    return [
        "In Sentry, look for the event",
        f"  event ID     {event_id}",
        f"  link         {link or '(set SENTRY_ORG for a direct link)'}",
        f"  tag          {POSTHOG_ID_TAG}={distinct_id} (and a 'PostHog Person URL' tag)",
        "and in PostHog for a second $exception with $sentry_event_id " + str(event_id) + ".",
    ]
