"""Sentry both ways, with the real sentry-sdk sending to a loopback envelope server and the
real posthog client sending to a loopback capture server: both sides' JSON is checked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import posthog
import pytest
import sentry_sdk

import posthog_errors
from posthog_errors import PostHogHandler
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer
from posthog_errors.sentry import PostHogIntegration, app_host, sentry_integration
from tests.conftest import API_KEY
from tests.scripts import run_script
from tests.sentry_server import SENTRY_SDK_MAJOR, SentryServer, sentry_initialised


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
    assert props["$exception_source"] == "sentry.event_processor"
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
from posthog_errors.sentry import PostHogIntegration, app_host, sentry_integration
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


# sentry-sdk's logging integration, as an app may set it up: the line's default, 3.x's
# LoggingIntegration() (records to Sentry Logs), and events from ERROR asked explicitly.
LOGGING_SETUPS = {
    "default": "[]",
    "LoggingIntegration()": "[LoggingIntegration()]",
    "event_level=ERROR": "[LoggingIntegration(event_level=logging.ERROR)]",
}


def test_logger_exception_with_sentrys_logging_integration(
    capture_server: CaptureServer, sentry_server: SentryServer
) -> None:
    """A logged exception is linked when the installed sentry-sdk makes a Sentry event of
    the record (2.x by default, any line with ``event_level`` set); otherwise (3.x's
    defaults) its PostHog event is sent at once, unlinked, and never held back. One child,
    re-initialising Sentry for each setup (its logging patch reads the current client)."""
    result = run_with_sentry(
        f"""
        import json
        from posthog_errors import _extensions
        from sentry_sdk.integrations.logging import LoggingIntegration

        posthog_errors.install(client)
        held = {{}}
        _extensions.add_capture_hook(
            lambda exc, snapshot: held.setdefault(str(exc), snapshot.not_before > 0))
        for setup, extra in {{
            {", ".join(f"{name!r}: {code}" for name, code in LOGGING_SETUPS.items())}
        }}.items():
            sentry_sdk.init(dsn=sys.argv[2], release="t", integrations=[
                PostHogIntegration(client, organization="my-org"), *extra])
            with posthog_errors.bind("logged-user"):
                try:
                    raise ValueError(f"order {{setup}}")
                except ValueError:
                    logging.getLogger("shop").exception("checkout failed")
            sentry_sdk.flush(5)
        assert posthog_errors.flush(5)
        print(json.dumps(held))
        """,
        capture_server,
        sentry_server,
    )
    assert result.returncode == 0, result.stderr
    held = json.loads(result.stdout.splitlines()[-1])
    makes_events = {
        setup: setup == "event_level=ERROR" or SENTRY_SDK_MAJOR < 3 for setup in LOGGING_SETUPS
    }
    assert held == {f"order {setup}": makes for setup, makes in makes_events.items()}
    sentry_events = {
        event["exception"]["values"][-1]["value"]: event for event in sentry_server.events
    }
    assert sorted(sentry_events) == sorted(f"order {s}" for s, m in makes_events.items() if m)
    posthog_events = {
        event["properties"]["$exception_list"][0]["value"]: event
        for event in capture_server.wait_for_events(len(LOGGING_SETUPS))
    }
    assert sorted(posthog_events) == sorted(f"order {setup}" for setup in LOGGING_SETUPS)
    for message, event in posthog_events.items():
        props = event["properties"]
        assert event["distinct_id"] == "logged-user"
        assert props["$exception_source"] == "python.logging"
        sentry_event = sentry_events.get(message)
        if sentry_event is None:
            assert "$sentry_event_id" not in props and "$sentry_url" not in props, props
            continue
        assert sentry_event["logger"] == "shop"
        assert sentry_event["tags"]["posthog_distinct_id"] == "logged-user"
        assert props["$sentry_event_id"] == sentry_event["event_id"]
        assert props["$sentry_url"].endswith(f"query={sentry_event['event_id']}")
    # 3.x's LoggingIntegration() sends records to Sentry Logs (level INFO and up, whatever
    # event_level says); 2.x sends no logs unless asked to.
    logs = [(log["body"], log["level"]) for log in sentry_server.logs]
    if SENTRY_SDK_MAJOR >= 3:
        assert logs == [("checkout failed", "error")] * 2
    else:
        assert logs == []


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


# -- the seed's API -----------------------------------------------------------------------


def test_the_function_form_and_the_class_tag(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    integration = sentry_integration(posthog_client, organization="my-org", project_id=12345)
    assert isinstance(integration, PostHogIntegration)
    assert PostHogIntegration.POSTHOG_ID_TAG == "posthog_distinct_id"
    with (
        sentry_initialised(sentry_server.dsn, integrations=[integration]),
        sentry_sdk.isolation_scope(),
    ):
        sentry_sdk.set_tag(PostHogIntegration.POSTHOG_ID_TAG, "user_123")
        event_id = sentry_sdk.capture_exception(caught("Test exception from integration"))
    assert one_sentry_event(sentry_server)["tags"]["posthog_distinct_id"] == "user_123"
    props = one_posthog_event(capture_server)["properties"]
    # The seed's property list, both its own names and the $sentry_ ones.
    assert props["$exception_message"] == "Test exception from integration"
    assert props["$exception_type"] == "ValueError"
    assert props["$sentry_exception_message"] == "Test exception from integration"
    assert props["$sentry_exception_type"] == "ValueError"
    assert props["$sentry_url"].endswith(f"project=12345&query={event_id}")


def test_the_distinct_id_from_set_context(
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    posthog_client: posthog.Posthog,
    reporter: Reporter,
) -> None:
    """The seed's third way: ``Sentry.setContext('posthog', {posthog_distinct_id: ...})``."""
    with sentry_initialised(sentry_server.dsn, integrations=[PostHogIntegration(posthog_client)]):
        with sentry_sdk.isolation_scope():
            sentry_sdk.set_context("posthog", {PostHogIntegration.POSTHOG_ID_TAG: "ctx-user"})
            sentry_sdk.capture_exception(caught())
        with sentry_sdk.isolation_scope():  # posthog-errors' own captures read it too
            sentry_sdk.set_context("posthog", {"posthog_distinct_id": "ctx-user-2"})
            posthog_errors.capture_exception(caught("ours"))
    assert one_sentry_event(sentry_server)["tags"]["posthog_distinct_id"] == "ctx-user"
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert sorted(e["distinct_id"] for e in events) == ["ctx-user", "ctx-user-2"]


@pytest.mark.parametrize(
    ("allow", "sent_levels"),
    [
        ("ERROR", ["error"]),
        ("critical", ["fatal"]),
        ("error,fatal", ["error", "fatal"]),
        (["Warning", "ERROR"], ["warning", "error"]),
        ("*", ["info", "warning", "error", "fatal"]),
    ],
)
def test_severity_allow_list_is_parsed_as_levels_are(
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    posthog_client: posthog.Posthog,
    allow: object,
    sent_levels: list[str],
) -> None:
    integration = PostHogIntegration(posthog_client, severity_allow_list=allow)  # type: ignore[arg-type]
    with sentry_initialised(sentry_server.dsn, integrations=[integration]):
        for level in ("info", "warning", "error", "fatal"):
            sentry_sdk.capture_message(f"at {level}", level=level)  # type: ignore[arg-type]
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(len(sent_levels))
    assert sorted(e["properties"]["$exception_level"] for e in events) == sorted(sent_levels)


def test_severity_allow_list_refuses_what_levels_refuse() -> None:
    for bad in (["eror"], "error,nope", [], 3.5):
        with pytest.raises(ValueError, match="severity_allow_list"):
            PostHogIntegration(severity_allow_list=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown options"):
        PostHogIntegration(befor_send=None)


# -- the Person URL opens the PostHog app -----------------------------------------------


@pytest.mark.parametrize(
    ("host", "app"),
    [
        ("https://us.i.posthog.com", "https://us.posthog.com"),
        ("https://eu.i.posthog.com/", "https://eu.posthog.com"),
        ("https://app.posthog.com", "https://app.posthog.com"),
        ("https://posthog.example.com", "https://posthog.example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ],
)
def test_app_host(host: str, app: str) -> None:
    assert app_host(host) == app


@pytest.mark.parametrize("project", [None, 12345])
def test_person_url_tag_points_at_the_app(sentry_server: SentryServer, project: int | None) -> None:
    # send=False: the client never sends (no network), but has the cloud host.
    client = posthog.Posthog(API_KEY, host="https://eu.i.posthog.com", send=False)
    integration = PostHogIntegration(
        client, posthog_project_id=project, send_exceptions_to_posthog=False
    )
    with (
        sentry_initialised(sentry_server.dsn, integrations=[integration]),
        sentry_sdk.isolation_scope(),
    ):
        sentry_sdk.set_tag(posthog_errors.POSTHOG_ID_TAG, "user/7")
        sentry_sdk.capture_exception(caught())
    expected = f"https://eu.posthog.com/project/{project or API_KEY}/person/user%2F7"
    assert one_sentry_event(sentry_server)["tags"]["PostHog Person URL"] == expected


# -- one set of PostHog options -----------------------------------------------------------


def test_the_integration_uses_installs_options_unless_given_its_own(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    def mark(properties: dict) -> dict:  # type: ignore[type-arg]
        properties["checked_by"] = "install"
        return properties

    with posthog_errors.install(
        posthog_client, before_send=mark, ignore=[KeyError], logs=False, excepthooks=False
    ):
        inherits = PostHogIntegration(posthog_client)
        with sentry_initialised(sentry_server.dsn, integrations=[inherits]):
            sentry_sdk.capture_exception(caught("inherits"))
            try:
                raise KeyError("ignored by install()")
            except KeyError as error:
                sentry_sdk.capture_exception(error)
        event = one_posthog_event(capture_server)
        assert event["properties"]["checked_by"] == "install"
        assert event["properties"]["$exception_list"][0]["value"] == "inherits"
        capture_server.clear()

        own = PostHogIntegration(posthog_client, ignore=[ValueError])
        with sentry_initialised(sentry_server.dsn, integrations=[own]):
            sentry_sdk.capture_exception(caught("ignored by its own options"))
            try:
                raise KeyError("its own options do not ignore this")
            except KeyError as error:
                sentry_sdk.capture_exception(error)
        event = one_posthog_event(capture_server)
        assert event["properties"]["$exception_list"][0]["type"] == "KeyError"
        assert "checked_by" not in event["properties"]  # install()'s before_send not used


# -- the seed's filter: before_send deleting the PostHog tag ------------------------------


def test_before_send_deleting_the_tag_keeps_the_event_out_of_posthog(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    class ValidationError(Exception):
        pass

    def before_send(event: dict, hint: dict) -> dict:  # type: ignore[type-arg]
        if event["exception"]["values"][0]["type"].endswith("ValidationError"):
            del event["tags"][PostHogIntegration.POSTHOG_ID_TAG]
        return event

    integration = PostHogIntegration(posthog_client)
    with (
        sentry_initialised(sentry_server.dsn, integrations=[integration], before_send=before_send),
        sentry_sdk.isolation_scope(),
    ):
        sentry_sdk.set_tag(PostHogIntegration.POSTHOG_ID_TAG, "user_1")
        try:
            raise ValidationError("bad input")
        except ValidationError as error:
            sentry_sdk.capture_exception(error)
        sentry_sdk.capture_exception(caught("a real failure"))
    sentry_events = {
        e["exception"]["values"][0]["type"].rpartition(".")[2]: e
        for e in sentry_server.wait_for_events(2)
    }
    assert "PostHog Person URL" not in sentry_events["ValidationError"]["tags"]
    assert "posthog_distinct_id" not in sentry_events["ValidationError"]["tags"]
    assert "PostHog Person URL" in sentry_events["ValueError"]["tags"]
    event = one_posthog_event(capture_server)
    assert event["properties"]["$exception_list"][0]["type"] == "ValueError"


def test_before_send_deleting_the_tag_filters_our_own_capture_too(
    capture_server: CaptureServer, sentry_server: SentryServer, reporter: Reporter
) -> None:
    def before_send(event: dict, hint: dict) -> dict:  # type: ignore[type-arg]
        event["tags"].pop(PostHogIntegration.POSTHOG_ID_TAG, None)
        return event

    with sentry_initialised(sentry_server.dsn, before_send=before_send):
        exc = caught("kept out of PostHog by Sentry's before_send")
        with posthog_errors.bind("user-9"):
            posthog_errors.capture_exception(exc)
            sentry_sdk.capture_exception(exc)
    assert "PostHog Person URL" not in one_sentry_event(sentry_server)["tags"]
    assert posthog_errors.flush(5)
    assert capture_server.wait_for_events(1, timeout=1) == []
    assert posthog_errors.stats()["filtered"] == 1


# -- sentry-sdk 3.0 readiness: no wait for an event Sentry will not make ----------------


@pytest.mark.parametrize(
    ("logging_integration", "waits"),
    [
        ("event_level=ERROR", True),
        ("event_level=CRITICAL", False),
        ("event_level=None", False),
        ("disabled", False),
        # 2.x: events from ERROR by default; 3.x: Sentry Logs, and no events by default
        ("LoggingIntegration()", SENTRY_SDK_MAJOR < 3),
    ],
)
def test_a_log_record_waits_only_if_sentry_makes_an_event_of_it(
    capture_server: CaptureServer,
    sentry_server: SentryServer,
    reporter: Reporter,
    logging_integration: str,
    waits: bool,
) -> None:
    from sentry_sdk.integrations.logging import LoggingIntegration

    from posthog_errors import _extensions

    integrations = {
        "event_level=ERROR": [LoggingIntegration(event_level=logging.ERROR)],
        "event_level=CRITICAL": [LoggingIntegration(event_level=logging.CRITICAL)],
        "event_level=None": [LoggingIntegration(event_level=None)],
        "disabled": [],
        "LoggingIntegration()": [LoggingIntegration()],
    }[logging_integration]
    held_back: list[bool] = []
    _extensions.add_capture_hook(lambda exc, snapshot: held_back.append(snapshot.not_before > 0))
    # sentry-sdk's LoggingIntegration patches logging for the rest of the process: put the
    # method back after, so later tests see the logging they expect.
    call_handlers = logging.Logger.callHandlers
    logger = logging.getLogger("test.sentry.wait")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        with sentry_initialised(sentry_server.dsn, integrations=integrations):
            if integrations and logging.Logger.callHandlers is call_handlers:
                # sentry-sdk patches once per process, and an earlier case put logging
                # back: patch again, with sentry-sdk's own setup.
                LoggingIntegration.setup_once()
            try:
                fail("logged")
            except ValueError:
                logger.exception("logged")
    finally:
        logger.handlers = []
        _extensions._capture_hooks.pop()
        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
    assert held_back == [waits]
    # What crossed the wires agrees: a Sentry event exactly when the PostHog event waited
    # for one, and then PostHog's names it.
    props = one_posthog_event(capture_server)["properties"]
    if waits:
        sentry_event = one_sentry_event(sentry_server)
        assert props["$sentry_event_id"] == sentry_event["event_id"]
    else:
        assert sentry_server.events == []
        assert "$sentry_event_id" not in props


# -- Sentry's frames: line numbers and columns PostHog takes --------------------------------

# Every value of a frame's lineno/colno that is not an unsigned 32-bit integer: PostHog's
# legacy pipeline rejects an event with one, v2 never resolves that stack.
BAD_NUMBERS: list[object] = [True, False, -1, 2**32, 2**64, 12.0, 1.5, "12", None, [3], {"n": 3}]


def _sentry_frames() -> list[dict[str, object]]:
    frames: list[dict[str, object]] = [
        {"filename": "app/bad.py", "function": f"bad_{i}", "lineno": bad, "colno": bad}
        for i, bad in enumerate(BAD_NUMBERS)
    ]
    frames.append({"filename": "app/good.py", "function": "edge", "lineno": 2**32 - 1, "colno": 0})
    frames.append({"filename": "app/good.py", "function": "good", "lineno": 7, "colno": 3})
    return frames


def test_exception_list_drops_line_numbers_and_columns_that_are_not_u32() -> None:
    from posthog_errors.integrations._sentry_events import exception_list

    event = {
        "exception": {
            "values": [
                {"type": "ValueError", "value": "bad", "stacktrace": {"frames": _sentry_frames()}}
            ]
        }
    }
    [entry] = exception_list(event)
    frames = entry["stacktrace"]["frames"]
    assert len(frames) == len(BAD_NUMBERS) + 2
    for frame in frames[: len(BAD_NUMBERS)]:
        assert frame["lineno"] is None, frame
        assert "colno" not in frame, frame
    assert (frames[-2]["lineno"], frames[-2]["colno"]) == (2**32 - 1, 0)
    assert (frames[-1]["lineno"], frames[-1]["colno"]) == (7, 3)
    # a frame that is not a dict is left out instead of failing the whole event
    event["exception"]["values"][0]["stacktrace"]["frames"] = ["junk", _sentry_frames()[-1]]
    assert [f["function"] for f in exception_list(event)[0]["stacktrace"]["frames"]] == ["good"]


def test_bad_line_numbers_from_sentry_are_dropped_on_the_wire(
    capture_server: CaptureServer, sentry_server: SentryServer, posthog_client: posthog.Posthog
) -> None:
    """An event with no live exception (re-sent, or built by hand) goes through
    exception_list(): what reaches PostHog has only u32 line numbers and columns."""
    with sentry_initialised(sentry_server.dsn, integrations=[PostHogIntegration(posthog_client)]):
        sentry_sdk.capture_event(
            {
                "level": "error",
                "exception": {
                    "values": [
                        {
                            "type": "ValueError",
                            "value": "bad frames",
                            "mechanism": {"type": "generic", "handled": True},
                            "stacktrace": {"frames": _sentry_frames()},
                        }
                    ]
                },
            }
        )
    sent = one_sentry_event(sentry_server)["exception"]["values"][0]["stacktrace"]["frames"]
    assert [f.get("lineno") for f in sent[:2]] == [True, False]  # Sentry's side keeps them
    props = one_posthog_event(capture_server)["properties"]
    frames = props["$exception_list"][0]["stacktrace"]["frames"]
    by_function = {frame["function"]: frame for frame in frames}
    for index in range(len(BAD_NUMBERS)):
        frame = by_function[f"bad_{index}"]
        assert frame["lineno"] is None, frame
        assert "colno" not in frame, frame
    assert (by_function["edge"]["lineno"], by_function["edge"]["colno"]) == (2**32 - 1, 0)
    assert (by_function["good"]["lineno"], by_function["good"]["colno"]) == (7, 3)
