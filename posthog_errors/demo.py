"""``posthog-errors demo``: a small app that fails through every door, offline.

An embedded PostHog-compatible capture server listens on 127.0.0.1 and the real posthog
client sends to it, so what is printed is exactly what PostHog would have received: the
``$exception`` events, then the records the app logged at INFO and above, which
``install(send_logs="info")`` sends to PostHog Logs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import threading
from typing import Any, TextIO

import posthog

import posthog_errors
from posthog_errors._render import Style, door_of, render_event, render_log_record
from posthog_errors.capture_server import CaptureServer

__all__ = ["crash_in_child", "run_demo"]

# The sample app lives in this package, whose frames are otherwise not in-app.
IN_APP = [__name__]
logger = logging.getLogger("shop.checkout")


# -- the sample app ------------------------------------------------------------------


class PaymentError(Exception):
    """The sample app's domain error."""


def charge(order: dict[str, Any]) -> None:
    amount = order["amount"]
    if amount > 100:
        raise ValueError(f"amount {amount} exceeds the card limit")


def checkout(order: dict[str, Any]) -> None:
    logger.info("charging order %s", order["id"], extra={"amount": order["amount"]})
    try:
        charge(order)
    except ValueError as error:
        raise PaymentError(f"order {order['id']} failed") from error


def load_settings(raw: str) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(raw)
    return settings


def resize_images(batch: list[str]) -> None:
    for name in batch:
        if not name.endswith(".png"):
            raise OSError(f"cannot decode {name!r}")


async def send_receipt(order_id: str, customer: str) -> None:
    async with posthog_errors.bind(customer):
        await asyncio.sleep(0)
        raise ConnectionError(f"mail server refused the receipt for {order_id}")


def crash_in_child() -> None:
    """Run in a child process: an uncaught exception, reported by install()'s excepthook."""
    posthog_errors.install(in_app_include=IN_APP, logs=False)
    posthog_errors.set_distinct_id("user_7")
    load_settings("{not json")


# -- the doors ---------------------------------------------------------------------


# A browser session, as posthog-js would send it in X-POSTHOG-SESSION-ID.
DEMO_SESSION_ID = "01932f5e-9c1a-7b3d-8e2f-4a5b6c7d8e9f"


def _logging_door() -> None:
    with posthog_errors.bind("user_42", session_id=DEMO_SESSION_ID, properties={"plan": "pro"}):
        logger.info("cart loaded", extra={"items": 3})
        try:
            checkout({"id": "A-1001", "amount": 250})
        except PaymentError:
            logger.exception("checkout failed")


def _manual_door() -> None:
    try:
        load_settings("{'single': 'quotes'}")
    except ValueError as error:
        posthog_errors.capture_exception(error, level="warning")  # no ID: personless


def _structlog_door() -> bool:
    try:
        import structlog

        from posthog_errors.structlog import PostHogProcessor
    except ImportError:
        return False
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            PostHogProcessor(in_app_include=IN_APP),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),  # the demo prints events, not logs
    )
    try:
        structlog.contextvars.bind_contextvars(distinct_id="user_99")
        structlog.get_logger().error("inventory out of sync", sku="SKU-9")  # a message
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    return True


def _thread_door() -> None:
    with posthog_errors.bind("user_13"):  # carried into the thread by carry_context
        thread = threading.Thread(
            target=posthog_errors.carry_context(resize_images), args=(["a.png", "b.jpg"],)
        )
    thread.start()
    thread.join()


def _asyncio_door() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(send_receipt("A-1002", customer="user_21"))
        await asyncio.sleep(0.01)
        del task  # never awaited: "Task exception was never retrieved"
        gc.collect()

    asyncio.run(main())


def _child_process_door(url: str) -> None:
    env = {**os.environ, "POSTHOG_API_KEY": "phc_demo", "POSTHOG_HOST": url}
    subprocess.run(
        [sys.executable, "-c", "from posthog_errors.demo import crash_in_child; crash_in_child()"],
        env=env,
        capture_output=True,  # its traceback is the child's business
        timeout=60,
    )


# -- the command -----------------------------------------------------------------------


def run_demo(*, as_json: bool = False, out: TextIO | None = None) -> int:
    """Run the sample app against a local capture server; print what PostHog received."""
    out = out or sys.stdout
    style = Style(out)
    quiet_hook, previous_hook = (lambda args: None), threading.excepthook
    previous_level = logger.level
    logger.setLevel(logging.INFO)  # the app's INFO records are on: send_logs sends them
    with CaptureServer() as server:
        client = posthog.Posthog("phc_demo", host=server.url, flush_interval=0.05)
        threading.excepthook = quiet_hook  # the thread's traceback would clutter the demo
        # send_logs: the app's INFO records and up go to PostHog Logs too, each with the
        # person, session and trace of the code that logged it.
        installation = posthog_errors.install(client, in_app_include=IN_APP, send_logs="info")
        try:
            _logging_door()
            _manual_door()
            with_structlog = _structlog_door()
            _thread_door()
            _asyncio_door()
            _child_process_door(server.url)
            posthog_errors.flush(10)
            expected = 6 if with_structlog else 5
            events = server.wait_for_events(expected, timeout=10)
            log_records = server.log_records()
        finally:
            installation.uninstall()
            threading.excepthook = previous_hook
            logger.setLevel(previous_level)
            client.shutdown()
    if as_json:
        json.dump(events, out, indent=2)
        out.write("\n")
        return 0 if len(events) >= expected else 1
    sources = sorted({door_of(e["properties"]) for e in events})
    out.write(
        style.bold(
            f"PostHog received {len(events)} $exception events at {server.url}, "
            f"from {len(sources)} doors: {', '.join(sources)}\n\n"
        )
    )
    for event in sorted(events, key=lambda e: door_of(e["properties"])):
        out.write(render_event(event, style) + "\n\n")
    out.write(
        style.bold(
            f'PostHog Logs received {len(log_records)} records (send_logs="info"); a record '
            "that became an $exception event names it in posthogExceptionUuid\n\n"
        )
    )
    for record in log_records:
        out.write(render_log_record(record, style) + "\n")
    out.write("\n")
    if not with_structlog:
        out.write(style.dim("(structlog is not installed: its door was skipped)\n"))
    return 0 if len(events) >= expected else 1
