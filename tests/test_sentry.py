"""Sentry both ways, with the real sentry-sdk sending to a loopback envelope server and the
real posthog client sending to a loopback capture server: both sides' JSON is checked."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import posthog
import pytest
import sentry_sdk

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.sentry import PostHogIntegration
from tests.conftest import API_KEY
from tests.scripts import run_script
from tests.sentry_server import SentryServer, sentry_initialised


@pytest.fixture
def sentry_server() -> Iterator[SentryServer]:
    with SentryServer(project_id=4242) as server:
        yield server


def fail(message: str = "card declined") -> None:
    raise ValueError(message)


def caught(message: str = "card declined") -> ValueError:
    try:
        fail(message)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def one_posthog_event(server: CaptureServer) -> dict:  # type: ignore[type-arg]
    assert posthog_errors.flush(5)
    events = server.wait_for_events(1)
    assert len(events) == 1, events
    return events[0]


def one_sentry_event(server: SentryServer) -> dict:  # type: ignore[type-arg]
    events = server.wait_for_events(1)
    assert len(events) == 1, events
    return events[0]


def person_url(server: CaptureServer, distinct_id: str) -> str:
    return f"{server.url}/project/{API_KEY}/person/{distinct_id}"


# -- PostHogIntegration -----------------------------------------------------------------


def test_integration_links_both_sides_for_capture_exception(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = PostHogIntegration(posthog_client, organization="my-org", project_id=12345)
    with (
        sentry_initialised(sentry_server.dsn, integrations=[integration]),
        sentry_sdk.isolation_scope(),
    ):
        sentry_sdk.set_tag(posthog_errors.POSTHOG_ID_TAG, "user_123")
        event_id = sentry_sdk.capture_exception(caught())
    sentry_event = one_sentry_event(sentry_server)
    assert sentry_event["event_id"] == event_id
    assert sentry_event["tags"]["posthog_distinct_id"] == "user_123"
    assert sentry_event["tags"]["PostHog Person URL"] == person_url(capture_server, "user_123")

    event = one_posthog_event(capture_server)
    props = event["properties"]
    assert event["distinct_id"] == "user_123"
    assert props["$exception_source"] == "sentry"
    assert props["$sentry_event_id"] == event_id
    assert props["$sentry_url"] == (
        f"https://sentry.io/organizations/my-org/issues/?project=12345&query={event_id}"
    )
    assert props["$sentry_exception_type"] == "ValueError"
    assert props["$sentry_exception_message"] == "card declined"
    assert props["$sentry_exception"]["values"][0]["type"] == "ValueError"
    assert props["$sentry_tags"]["posthog_distinct_id"] == "user_123"
    [entry] = props["$exception_list"]
    assert entry["stacktrace"]["frames"][-1]["function"] == "fail"


def test_project_id_comes_from_the_dsn_and_prefix_makes_self_hosted_links(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = PostHogIntegration(
        posthog_client, organization="acme", prefix="https://sentry.acme.dev/organizations/"
    )
    with sentry_initialised(sentry_server.dsn, integrations=[integration]):
        event_id = sentry_sdk.capture_exception(caught())
    props = one_posthog_event(capture_server)["properties"]
    assert props["$sentry_url"] == (
        f"https://sentry.acme.dev/organizations/acme/issues/?project=4242&query={event_id}"
    )


def test_severity_allow_list(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    only_errors = PostHogIntegration(posthog_client)
    with sentry_initialised(sentry_server.dsn, integrations=[only_errors]):
        sentry_sdk.capture_message("just a warning", level="warning")
        sentry_sdk.capture_message("a real error", level="error")
    assert sentry_server.wait_for_events(2)
    event = one_posthog_event(capture_server)
    assert event["properties"]["$exception_list"][0]["value"] == "a real error"
    assert event["properties"]["$exception_level"] == "error"
    capture_server.clear()
    with sentry_initialised(
        sentry_server.dsn,
        integrations=[PostHogIntegration(posthog_client, severity_allow_list="*")],
    ):
        sentry_sdk.capture_message("now warnings go too", level="warning")
    assert one_posthog_event(capture_server)["properties"]["$exception_level"] == "warning"
    with pytest.raises(ValueError, match="severity_allow_list"):
        PostHogIntegration(posthog_client, severity_allow_list=["eror"])


def test_send_exceptions_to_posthog_false_only_tags_sentry(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = PostHogIntegration(posthog_client, send_exceptions_to_posthog=False)
    with (
        sentry_initialised(sentry_server.dsn, integrations=[integration]),
        posthog_errors.bind("tagged-only"),
    ):
        sentry_sdk.capture_exception(caught())
    assert one_sentry_event(sentry_server)["tags"]["posthog_distinct_id"] == "tagged-only"
    assert posthog_errors.flush(5)
    assert capture_server.wait_for_events(1, timeout=1) == []


@pytest.mark.parametrize("drop", ["before_send", "sample_rate"])
def test_a_dropped_sentry_event_is_never_linked(
    drop: str,
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    posthog_client: posthog.Posthog,
) -> None:
    options = (
        {"before_send": lambda event, hint: None} if drop == "before_send" else {"sample_rate": 0.0}
    )
    integration = PostHogIntegration(posthog_client, organization="my-org")
    with sentry_initialised(sentry_server.dsn, integrations=[integration], **options):
        assert sentry_sdk.capture_exception(caught()) is None
    props = one_posthog_event(capture_server)["properties"]
    assert "$sentry_event_id" not in props and "$sentry_url" not in props
    assert props["$sentry_exception_type"] == "ValueError"
    assert sentry_server.wait_for_events(1, timeout=0.5) == []


def test_user_before_send_still_runs_and_can_change_the_event(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    def before_send(event: dict, hint: dict) -> dict:  # type: ignore[type-arg]
        event.setdefault("tags", {})["reviewed"] = "yes"
        return event

    integration = PostHogIntegration(posthog_client)
    with sentry_initialised(sentry_server.dsn, integrations=[integration], before_send=before_send):
        event_id = sentry_sdk.capture_exception(caught())
    assert one_sentry_event(sentry_server)["tags"]["reviewed"] == "yes"
    assert one_posthog_event(capture_server)["properties"]["$sentry_event_id"] == event_id


def test_one_failure_is_one_posthog_event_through_every_door(
    capture_server: CaptureServer, sentry_server: SentryServer, reporter: Reporter
) -> None:
    logger = logging.getLogger("test.sentry.doors")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    integration = PostHogIntegration(reporter.client_source.resolve())
    try:
        with sentry_initialised(sentry_server.dsn, integrations=[integration]):
            try:
                fail("seen everywhere")
            except ValueError as exc:
                logger.exception("logged")
                event_id = sentry_sdk.capture_exception(exc)
                assert posthog_errors.capture_exception(exc) is None
    finally:
        logger.handlers = []
    event = one_posthog_event(capture_server)
    assert event["properties"]["$exception_source"] == "python.logging"
    assert event["properties"]["$sentry_event_id"] == event_id  # linked although logged first
    assert posthog_errors.stats()["deduplicated"] >= 2


# -- the bridge, without the integration ------------------------------------------------


def test_library_first_then_sentry_links_both_sides(
    capture_server: CaptureServer, sentry_server: SentryServer, reporter: Reporter
) -> None:
    with sentry_initialised(sentry_server.dsn):
        exc = caught("library first")
        with posthog_errors.bind("user-7"):
            posthog_errors.capture_exception(exc)
        event_id = sentry_sdk.capture_exception(exc)  # outside the bind: the link carries it
        later_id = sentry_sdk.capture_message("an unrelated event afterwards", level="error")
    events = {e["event_id"]: e for e in sentry_server.wait_for_events(2)}
    assert events[event_id]["tags"]["posthog_distinct_id"] == "user-7"
    assert events[event_id]["tags"]["PostHog Person URL"] == person_url(capture_server, "user-7")
    assert "posthog_distinct_id" not in (events[later_id].get("tags") or {})  # no leak
    event = one_posthog_event(capture_server)
    assert event["distinct_id"] == "user-7"
    assert event["properties"]["$sentry_event_id"] == event_id
    assert "$sentry_url" not in event["properties"]  # no organization known


def test_sentry_first_then_library_links_both_sides(
    capture_server: CaptureServer, sentry_server: SentryServer, reporter: Reporter
) -> None:
    with sentry_initialised(sentry_server.dsn):
        exc = caught("sentry first")
        with posthog_errors.bind("user-8"):
            event_id = sentry_sdk.capture_exception(exc)
        posthog_errors.capture_exception(exc, distinct_id="user-8")
    assert one_sentry_event(sentry_server)["tags"]["posthog_distinct_id"] == "user-8"
    assert one_posthog_event(capture_server)["properties"]["$sentry_event_id"] == event_id


def test_without_sentry_events_nothing_waits_or_links(
    capture_server: CaptureServer, sentry_server: SentryServer, reporter: Reporter
) -> None:
    with sentry_initialised(sentry_server.dsn):
        posthog_errors.capture_exception(caught("never seen by sentry"))
    props = one_posthog_event(capture_server)["properties"]
    assert "$sentry_event_id" not in props


# -- real sentry-sdk integrations, in child processes (they patch logging for good) -------


SCRIPT_PRELUDE = """
import logging, sentry_sdk
from posthog_errors.sentry import PostHogIntegration
sentry_sdk.init(dsn=sys.argv[2], release="t", integrations=[
    PostHogIntegration(client, organization="my-org")])
"""


def run_with_sentry(body: str, capture: CaptureServer, sentry: SentryServer):  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import textwrap

    from tests.scripts import PRELUDE

    return subprocess.run(
        [
            sys.executable,
            "-c",
            PRELUDE + SCRIPT_PRELUDE + textwrap.dedent(body),
            capture.url,
            sentry.dsn,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_logger_exception_with_sentrys_logging_integration(
    capture_server: CaptureServer, sentry_server: SentryServer
) -> None:
    result = run_with_sentry(
        """
        posthog_errors.install(client)
        with posthog_errors.bind("logged-user"):
            try:
                raise KeyError("order 9")
            except KeyError:
                logging.getLogger("shop").exception("checkout failed")
        sentry_sdk.flush(5)
        """,
        capture_server,
        sentry_server,
    )
    assert result.returncode == 0, result.stderr
    sentry_event = one_sentry_event(sentry_server)
    assert sentry_event["tags"]["posthog_distinct_id"] == "logged-user"
    [event] = capture_server.wait_for_events(1)
    assert event["distinct_id"] == "logged-user"
    assert event["properties"]["$exception_source"] == "python.logging"
    assert event["properties"]["$sentry_event_id"] == sentry_event["event_id"]
    assert event["properties"]["$sentry_url"].endswith(f"query={sentry_event['event_id']}")


def test_uncaught_exception_in_a_child_process(
    capture_server: CaptureServer, sentry_server: SentryServer
) -> None:
    result = run_with_sentry(
        """
        posthog_errors.install(client)
        posthog_errors.set_distinct_id("crashing-user")
        raise RuntimeError("fatal crash")
        """,
        capture_server,
        sentry_server,
    )
    assert result.returncode == 1
    assert "RuntimeError: fatal crash" in result.stderr
    sentry_event = one_sentry_event(sentry_server)
    assert sentry_event["tags"]["posthog_distinct_id"] == "crashing-user"
    [event] = capture_server.wait_for_events(1)
    assert event["properties"]["$exception_level"] == "fatal"
    assert event["properties"]["$sentry_event_id"] == sentry_event["event_id"]


def test_importing_the_package_never_imports_sentry_and_a_missing_sdk_is_explained(
    capture_server: CaptureServer,
) -> None:
    result = run_script(
        """
        assert "sentry_sdk" not in sys.modules and "structlog" not in sys.modules
        sys.modules["sentry_sdk"] = None          # as if not installed
        try:
            import posthog_errors.sentry
        except ImportError as error:
            print("error:", error)
        """,
        capture_server.url,
    )
    assert result.returncode == 0, result.stderr
    assert "error: posthog_errors.sentry needs sentry-sdk: pip install" in result.stdout
