"""Code variables with hostile values: each is bounded, and none loses the event."""

from __future__ import annotations

from typing import Any

import posthog
import pytest

import posthog_errors
from posthog_errors import exception_properties
from posthog_errors._code_variables import MASKED, UNREPRESENTABLE
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer

FIFTY_MB = 50 * 1024 * 1024


@pytest.fixture
def code_variables_reporter(posthog_client: posthog.Posthog) -> Reporter:
    reporter = Reporter(posthog_client, capture_code_variables=True)
    set_default_reporter(reporter)
    return reporter


def innermost_variables(event: dict[str, Any]) -> dict[str, Any]:
    frames = event["properties"]["$exception_list"][0]["stacktrace"]["frames"]
    variables: dict[str, Any] = frames[-1]["code_variables"]
    return variables


def send(failing: Any, *args: Any) -> None:
    try:
        failing(*args)
    except Exception as exc:
        assert posthog_errors.capture_exception(exc) is not None


def fail_with_a_huge_int() -> None:
    huge = 7**20000  # about 17,000 digits: str() refuses it
    order_id = "order-1234"  # noqa: F841
    raise ValueError(f"overflow after {huge.bit_length()} bits")


def test_an_int_too_big_for_str_is_shown_by_size_and_the_event_arrives(
    capture_server: CaptureServer, code_variables_reporter: Reporter
) -> None:
    send(fail_with_a_huge_int)
    assert posthog_errors.flush(10)

    [event] = capture_server.exception_events()
    variables = innermost_variables(event)
    assert variables["huge"] == f"<int with {(7**20000).bit_length()} bits>"
    assert variables["order_id"] == "order-1234"
    stats = posthog_errors.stats()
    assert (stats["sent"], stats["dropped"], stats["internal_errors"]) == (1, 0, 0)


def test_ints_inside_containers_and_moderately_big_ints() -> None:
    def fail() -> None:
        pair = (1, 3**30000)  # noqa: F841
        medium = 2**100  # noqa: F841
        raise ValueError("x")

    try:
        fail()
    except ValueError as exc:
        props = exception_properties(exc, capture_code_variables=True)
    variables = props["$exception_list"][0]["stacktrace"]["frames"][-1]["code_variables"]
    assert variables["pair"] == f"(1, <int with {(3**30000).bit_length()} bits>)"
    assert variables["medium"] == str(2**100)


def fail_with_a_huge_string() -> None:
    # A token assignment that crosses the cut (the shown part ends at 256 characters): it
    # is filtered before the value is cut, so no part of the token shows.
    head = "request failed: " + "." * 200 + " access_token="
    blob = head + "t0ken-value-that-crosses-the-cut " + "x" * FIFTY_MB  # noqa: F841
    raise RuntimeError("import failed")


def test_a_50_mb_string_is_cut_and_redacted(
    capture_server: CaptureServer, code_variables_reporter: Reporter
) -> None:
    send(fail_with_a_huge_string)
    assert posthog_errors.flush(10)

    [event] = capture_server.exception_events()
    shown = innermost_variables(event)["blob"]
    assert len(shown) == 256
    assert shown.startswith("request failed: ....")
    assert "access_token=[Filtered] xxx" in shown
    assert shown.endswith("xxx...")
    assert "t0ken" not in shown


def test_a_huge_string_holding_a_credential_shape_is_masked_whole() -> None:
    def fail() -> None:
        key_file = "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEow" * 1_000_000  # noqa: F841
        dsn = "postgres://app:hunter2hunter2@db:5432/shop " + "x" * FIFTY_MB  # noqa: F841
        raise RuntimeError("bad key")

    try:
        fail()
    except RuntimeError as exc:
        props = exception_properties(exc, capture_code_variables=True)
    variables = props["$exception_list"][0]["stacktrace"]["frames"][-1]["code_variables"]
    assert variables["key_file"] == MASKED
    assert variables["dsn"] == MASKED


class HostileModule(type):
    @property
    def __module__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("hostile __module__")


class Hostile(metaclass=HostileModule):
    pass


def fail_with_a_hostile_value() -> None:
    hostile = Hostile()  # noqa: F841
    in_a_list = [Hostile()]  # noqa: F841
    order_id = "order-1234"  # noqa: F841
    raise ValueError("with a hostile local")


def test_one_unrenderable_variable_never_loses_the_event(
    capture_server: CaptureServer, code_variables_reporter: Reporter
) -> None:
    send(fail_with_a_hostile_value)
    assert posthog_errors.flush(10)

    [event] = capture_server.exception_events()
    variables = innermost_variables(event)
    assert variables["hostile"] == UNREPRESENTABLE
    assert variables["in_a_list"] == UNREPRESENTABLE
    assert variables["order_id"] == "order-1234"
    stats = posthog_errors.stats()
    assert (stats["sent"], stats["invalid_input"], stats["internal_errors"]) == (1, 2, 0)


class EvilName(str):
    """A variable name whose methods raise (possible in a module-level frame's locals)."""

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        raise RuntimeError("hostile startswith")

    def __len__(self) -> int:
        raise RuntimeError("hostile len")


def test_a_hostile_variable_name_is_skipped(
    capture_server: CaptureServer, code_variables_reporter: Reporter
) -> None:
    # A module-level frame: its locals are its namespace, keys and all.
    namespace: dict[str, Any] = {EvilName("evil"): 1, "plain": 2}
    send(exec, "raise ValueError('from exec')", namespace)
    assert posthog_errors.flush(10)

    [event] = capture_server.exception_events()
    variables = innermost_variables(event)
    assert variables["plain"] == 2
    assert "evil" not in variables
