"""install() and the app's own logging: a matrix of real logging setups, each run in a child
process twice, without and with posthog-errors. The app's console output must be the same
byte for byte, and the records at the allow list must arrive at the capture server.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from posthog_errors.capture_server import CaptureServer
from tests.sentry_server import SentryServer

PRELUDE = """
import logging, os, sys
import posthog, posthog_errors

WITH = os.environ["WITH_POSTHOG_ERRORS"] == "1"
client = posthog.Posthog("phc_test", host=sys.argv[1], flush_interval=0.01, max_retries=0)


def install(**options):
    if WITH:
        return posthog_errors.install(client, **options)


def done():
    # Everything delivered, and nothing dropped, before the output is compared.
    if WITH:
        assert posthog_errors.flush(10), posthog_errors.stats()
        stats = posthog_errors.stats()
        assert stats["dropped"] == stats["internal_errors"] == 0, stats


def app_logs(name):
    log = logging.getLogger(name)
    log.debug("debug detail")
    log.info("order %s placed", 1)
    log.warning("stock low for %s", "sku-1")
    log.error("payment %s declined", 2)
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed")
"""

# What app_logs(name) reports with the default allow list (error, fatal).
REPORTED = [("LogMessage", "payment 2 declined"), ("KeyError", "'missing'")]


@dataclasses.dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]


def run_twice(
    body: str,
    server: CaptureServer,
    *,
    env: dict[str, str] | None = None,
    expected_events: int,
    sentry: SentryServer | None = None,
) -> Run:
    """Run PRELUDE + body without, then with posthog-errors; compare the two runs' output
    and return the run with posthog-errors."""
    runs = []
    for with_library in ("0", "1"):
        server.clear()
        if sentry is not None:
            sentry.clear()
        child_env = {**os.environ, **(env or {}), "WITH_POSTHOG_ERRORS": with_library}
        child_env.pop("POSTHOG_ERRORS_STRICT", None)  # the app's view: production mode
        child_env["PYTHONFAULTHANDLER"] = "1"
        result = subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body), server.url],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env,
        )
        wanted = expected_events if with_library == "1" else 0
        events = server.wait_for_events(wanted, timeout=10) if wanted else []
        # Wait a little longer for any event too many.
        events = server.wait_for_events(wanted + 1, timeout=0.3)
        runs.append(Run(result.returncode, result.stdout, result.stderr, events))
    without, with_library_run = runs
    assert without.events == [], "an event arrived without posthog-errors installed"
    assert with_library_run.stderr == without.stderr
    assert with_library_run.stdout == without.stdout
    assert with_library_run.returncode == without.returncode
    return with_library_run


def reported(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(logger, exception type, value) of each event, sorted."""
    rows = []
    for event in events:
        props = event["properties"]
        entry = props["$exception_list"][0]
        # A message's type is LogMessage[<digest of logger and template>]: compared by name.
        rows.append((props.get("logger", ""), entry["type"].split("[")[0], entry["value"]))
    return sorted(rows)


def expected(*loggers: str) -> list[tuple[str, str, str]]:
    return sorted((name, kind, value) for name in loggers for kind, value in REPORTED)


def test_no_logging_config_keeps_pythons_last_resort_output(
    capture_server: CaptureServer,
) -> None:
    ours = run_twice(
        """
        import asyncio
        install()
        app_logs("shop")
        async def forgotten():
            raise ZeroDivisionError("never awaited")
        async def main():
            asyncio.get_running_loop().create_task(forgotten())
            await asyncio.sleep(0.01)
        asyncio.run(main())
        import gc; gc.collect()
        done()
        """,
        capture_server,
        expected_events=3,
    )
    assert "stock low for sku-1\npayment 2 declined\nlookup failed\nTraceback" in ours.stderr
    assert "Task exception was never retrieved" in ours.stderr
    assert "order 1 placed" not in ours.stderr  # last resort is at WARNING, as ever
    assert reported(ours.events) == sorted(
        [*expected("shop"), ("", "ZeroDivisionError", "never awaited")]
    )


@pytest.mark.parametrize("order", ["before", "after"])
def test_basic_config_before_or_after_install(capture_server: CaptureServer, order: str) -> None:
    configure = (
        'logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")'
    )
    first, second = (configure, "install()") if order == "before" else ("install()", configure)
    ours = run_twice(
        f"""
        {first}
        {second}
        app_logs("shop")
        done()
        """,
        capture_server,
        expected_events=2,
    )
    assert "INFO shop order 1 placed" in ours.stderr
    assert "ERROR shop lookup failed\nTraceback" in ours.stderr
    assert reported(ours.events) == expected("shop")


@pytest.mark.parametrize("disable_existing", [True, False])
def test_dict_config_with_a_root_section_after_install(
    capture_server: CaptureServer, disable_existing: bool
) -> None:
    ours = run_twice(
        f"""
        import logging.config
        install()
        early = logging.getLogger("early")      # exists before the config is applied
        logging.config.dictConfig({{
            "version": 1,
            "disable_existing_loggers": {disable_existing},
            "formatters": {{"plain": {{"format": "[%(name)s] %(levelname)s: %(message)s"}}}},
            "handlers": {{"console": {{"class": "logging.StreamHandler",
                                      "stream": "ext://sys.stdout", "formatter": "plain"}}}},
            "root": {{"handlers": ["console"], "level": "INFO"}},
        }})
        app_logs("early")
        app_logs("late")
        done()
        """,
        capture_server,
        expected_events=4 if not disable_existing else 2,
    )
    assert "[late] ERROR: payment 2 declined" in ours.stdout
    if disable_existing:
        # The app disabled "early": its records are neither printed nor reported.
        assert "[early]" not in ours.stdout
        assert reported(ours.events) == expected("late")
    else:
        assert "[early] ERROR: payment 2 declined" in ours.stdout
        assert reported(ours.events) == expected("early", "late")


def test_file_config_after_install(capture_server: CaptureServer, tmp_path: Path) -> None:
    ini = tmp_path / "logging.ini"
    ini.write_text(
        textwrap.dedent(
            """
            [loggers]
            keys=root

            [handlers]
            keys=console

            [formatters]
            keys=plain

            [logger_root]
            level=INFO
            handlers=console

            [handler_console]
            class=StreamHandler
            args=(sys.stdout,)
            formatter=plain

            [formatter_plain]
            format=%(levelname)s|%(name)s|%(message)s
            """
        )
    )
    ours = run_twice(
        """
        import logging.config
        install()
        logging.config.fileConfig(os.environ["LOGGING_INI"])
        app_logs("billing")
        done()
        """,
        capture_server,
        env={"LOGGING_INI": str(ini)},
        expected_events=2,
    )
    assert "ERROR|billing|payment 2 declined" in ours.stdout
    assert reported(ours.events) == expected("billing")


def test_a_non_propagating_logger_is_reported(capture_server: CaptureServer) -> None:
    ours = run_twice(
        """
        install()
        audit = logging.getLogger("audit")
        audit.propagate = False
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("audit> %(message)s"))
        audit.addHandler(handler)
        app_logs("audit")
        done()
        """,
        capture_server,
        expected_events=2,
    )
    assert "audit> payment 2 declined" in ours.stdout
    assert ours.stderr == ""  # nothing reached the last resort
    assert reported(ours.events) == expected("audit")


def test_django_logging_setting_applied_after_install_in_settings(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    (tmp_path / "shop_settings.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            import posthog, posthog_errors

            SECRET_KEY = "not-secret"
            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
            DATABASES = {}
            if os.environ["WITH_POSTHOG_ERRORS"] == "1":
                # As early as it can be: settings.py runs before Django configures logging.
                posthog_errors.install(posthog.Posthog(
                    "phc_django", host=sys.argv[1], flush_interval=0.01, max_retries=0))
            LOGGING = {
                "version": 1,
                "disable_existing_loggers": False,  # as Django's documentation advises
                "formatters": {"app": {"format": "django-app %(levelname)s %(name)s: %(message)s"}},
                "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "app"}},
                "root": {"handlers": ["console"], "level": "INFO"},
                "loggers": {"shop": {"level": "INFO"}},
            }
            """
        )
    )
    ours = run_twice(
        """
        import django
        django.setup()
        app_logs("shop")
        logging.getLogger("django.request").error("Internal Server Error: /checkout/")
        done()
        """,
        capture_server,
        env={
            "DJANGO_SETTINGS_MODULE": "shop_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        },
        expected_events=3,
    )
    assert "django-app ERROR shop: payment 2 declined" in ours.stderr
    assert "django-app INFO shop: order 1 placed" in ours.stderr
    assert reported(ours.events) == sorted(
        [*expected("shop"), ("django.request", "LogMessage", "Internal Server Error: /checkout/")]
    )


@pytest.mark.parametrize("order", ["sentry first", "posthog-errors first"])
def test_sentry_logging_integration_in_either_order(
    capture_server: CaptureServer, order: str
) -> None:
    # An event per error record from sentry-sdk's own logging patch: its default on 2.x, and
    # on 3.x (whose LoggingIntegration makes no events by default) only when asked for.
    sentry_init = (
        "sentry_sdk.init(dsn=os.environ['SENTRY_DSN'], release='r1', integrations=["
        "LoggingIntegration(event_level=logging.ERROR)])"
    )
    first, second = (sentry_init, "install()")
    if order != "sentry first":
        first, second = second, first
    with SentryServer() as sentry:
        ours = run_twice(
            f"""
            import sentry_sdk
            from sentry_sdk.integrations.logging import LoggingIntegration
            logging.basicConfig(format="%(levelname)s:%(message)s")
            {first}
            {second}
            app_logs("shop")
            done()
            sentry_sdk.flush(10)
            print(len(logging.getLogger().handlers), "root handler(s)")
            """,
            capture_server,
            env={"SENTRY_DSN": sentry.dsn},
            expected_events=2,
            sentry=sentry,
        )
        sentry_events = sentry.wait_for_events(2, timeout=10)
    assert ours.stdout == "1 root handler(s)\n"
    assert "ERROR:payment 2 declined" in ours.stderr
    assert reported(ours.events) == expected("shop")
    # Sentry's own integration still saw each error record once.
    assert sorted(e.get("logentry", {}).get("message", "") for e in sentry_events) == [
        "lookup failed",
        "payment %s declined",
    ]


def test_uninstall_stops_reporting_and_leaves_logging_as_it_was(
    capture_server: CaptureServer,
) -> None:
    ours = run_twice(
        """
        installation = install()
        logging.getLogger("before").error("reported")
        if installation is not None:
            installation.uninstall()
        logging.basicConfig(format="after uninstall: %(message)s")
        logging.getLogger("after").error("not reported")
        done()
        """,
        capture_server,
        expected_events=1,
    )
    assert ours.stderr == "reported\nafter uninstall: not reported\n"
    assert reported(ours.events) == [("before", "LogMessage", "reported")]


def test_logging_disable_is_honoured(capture_server: CaptureServer) -> None:
    ours = run_twice(
        """
        install()
        logging.disable(logging.ERROR)
        logging.getLogger("quiet").error("disabled by the app")
        logging.getLogger("quiet").critical("still on")
        done()
        """,
        capture_server,
        expected_events=1,
    )
    assert ours.stderr == "still on\n"
    assert reported(ours.events) == [("quiet", "LogMessage", "still on")]


def test_a_record_seen_by_the_hook_and_an_explicit_handler_is_one_event(
    capture_server: CaptureServer,
) -> None:
    ours = run_twice(
        """
        import logging.config
        install()
        handlers = {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}}
        if WITH:
            handlers["posthog"] = {"class": "posthog_errors.PostHogHandler",
                                   "levels": "warning,error", "client": "ext://__main__.client"}
        logging.config.dictConfig({
            "version": 1,
            "handlers": handlers,
            "root": {"handlers": list(handlers), "level": "INFO"},
        })
        app_logs("shop")
        done()
        """,
        capture_server,
        expected_events=3,
    )
    # The explicit handler's allow list adds the warning; nothing is sent twice.
    assert reported(ours.events) == sorted(
        [*expected("shop"), ("shop", "LogMessage", "stock low for sku-1")]
    )


def test_the_posthog_clients_own_warnings_still_reach_the_console(
    capture_server: CaptureServer,
) -> None:
    # Port 9 on loopback: nothing listens there, so every upload fails at once.
    ours = run_twice(
        """
        import time
        client = posthog.Posthog("phc_test", host="http://127.0.0.1:9", flush_interval=0.01,
                                 max_retries=0)
        install()
        client.capture("signed_up", distinct_id="u1")
        client.flush()
        time.sleep(0.2)
        if WITH:
            assert posthog_errors.stats()["captured"] == 0, posthog_errors.stats()
        """,
        capture_server,
        expected_events=0,
    )
    assert "[PostHog] error uploading" in ours.stderr
