"""``posthog-errors demo``: a small app that fails, captured by a local capture server.

Offline by design: the server listens on 127.0.0.1 and the real posthog client sends to it,
so what is printed is exactly what PostHog would have received.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import posthog

import posthog_errors
from posthog_errors import _reporter
from posthog_errors._render import Style, render_event
from posthog_errors.capture_server import CaptureServer

__all__ = ["run_demo"]


# -- the sample app ------------------------------------------------------------------


class PaymentError(Exception):
    """The sample app's domain error."""


def charge(order: dict[str, Any]) -> None:
    amount = order["amount"]
    if amount > 100:
        raise ValueError(f"amount {amount} exceeds the card limit")


def checkout(order: dict[str, Any]) -> None:
    try:
        charge(order)
    except ValueError as error:
        raise PaymentError(f"order {order['id']} failed") from error


def load_settings(raw: str) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(raw)
    return settings


def sample_app() -> int:
    """Fail in a few ways and report each failure; returns how many were reported."""
    reported = 0
    try:
        checkout({"id": "A-1001", "amount": 250})
    except PaymentError as error:
        reported += posthog_errors.capture_exception(error, distinct_id="user_42") is not None
    try:
        load_settings("{not json")
    except ValueError:
        # No distinct ID anywhere: the event is personless.
        reported += posthog_errors.capture_exception(level="warning") is not None
    return reported


# -- the command -----------------------------------------------------------------------


def run_demo(*, as_json: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    style = Style(out)
    with CaptureServer() as server:
        client = posthog.Posthog("phc_demo", host=server.url, flush_interval=0.05)
        # The sample app lives in this package, whose frames are otherwise not in-app.
        reporter = _reporter.Reporter(client, in_app_include=[__name__])
        previous = _reporter.set_default_reporter(reporter)
        try:
            reported = sample_app()
            posthog_errors.flush(10)
            events = server.wait_for_events(reported, timeout=10)
        finally:
            _reporter.set_default_reporter(previous)
            client.shutdown()
    if as_json:
        json.dump(events, out, indent=2)
        out.write("\n")
        return 0 if len(events) == reported else 1
    out.write(style.bold(f"PostHog received {len(events)} $exception event(s) at {server.url}\n\n"))
    for event in events:
        out.write(render_event(event, style=style) + "\n\n")
    return 0 if len(events) == reported else 1
