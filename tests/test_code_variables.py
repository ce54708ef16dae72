"""Code variables: opt-in, each exception's own locals, masked, bounded, within a budget."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

import posthog_errors
from posthog_errors import exception_properties
from posthog_errors._code_variables import MASKED, VariableBudget, serialize_locals
from posthog_errors._reporter import Reporter, set_default_reporter
from posthog_errors.capture_server import CaptureServer
from tests.conformance import assert_properties_conform

# At least 30 secret shapes: (variable name, value); each must not appear on the wire.
SECRET_NAMES = {
    "password": "correct horse",
    "db_password": "x1",
    "passwd": "x2",
    "pwd": "x3",
    "client_secret": "x4",
    "api_key": "x5",
    "apikey": "x6",
    "auth_header": "x7",
    "access_token": "x8",
    "refresh_token": "x9",
    "private_key": "x10",
    "aws_secret_access_key": "x11",
    "session_key": "x12",
    "cookie": "x13",
    "sentry_dsn": "x14",
    "jwt": "x15",
    "credentials": "x16",
    "stripe_sk_": "x17",
}
SECRET_VALUES = {
    "aws_id": "AKIAIOSFODNN7EXAMPLE",
    "stripe": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "stripe_test": "rk_test_51H8abcdefghijklmnop",
    "webhook": "whsec_1234567890abcdefghij",
    "a_jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    "github": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "slack": "xoxb-263594206564-2343455234-abcdefghijklmnop",
    "google": "AIzaSyD-1234567890abcdefghijklmnopqrstu",
    "gitlab": "glpat-abcdefghij0123456789",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...",
    "url": "postgres://app:hunter2hunter2@db:5432/shop",
    "a_sentry": "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42",
    "header": "Bearer abcdefghijklmnopqrstuvwxyz012345",
    "assignment": "password=letmein123",
    "card": "4111 1111 1111 1111",
    "posthog_personal": "phx_abcdefghijklmnopqrstuvwxyz0123",
}
HARMLESS = {"order_id": "order-1234", "count": 42, "ratio": 0.5, "flag": True, "note": "hello"}


def fail_with_locals() -> None:
    namespace: dict[str, Any] = {**SECRET_NAMES, **SECRET_VALUES, **HARMLESS}
    exec("def inner():\n    raise ValueError('with secrets around')\n", namespace)
    _locals_frame(**namespace)


def _locals_frame(**variables: Any) -> None:
    locals().update(variables)  # the kwargs dict itself is a local: its keys are checked
    password = "correct horse"
    order_id = "order-1234"
    raise ValueError("with secrets around")


def frames_with_variables(props: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        frame
        for entry in props["$exception_list"]
        for frame in entry.get("stacktrace", {}).get("frames", [])
        if "code_variables" in frame
    ]


def test_off_by_default_nothing_is_sent(capture_server: CaptureServer, reporter: Reporter) -> None:
    try:
        fail_with_locals()
    except ValueError as exc:
        posthog_errors.capture_exception(exc)
        props = exception_properties(exc)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    assert frames_with_variables(event["properties"]) == []
    assert frames_with_variables(props) == []


def test_secret_shapes_are_masked_on_the_wire(
    capture_server: CaptureServer, posthog_client: Any
) -> None:
    assert len(SECRET_NAMES) + len(SECRET_VALUES) >= 30
    set_default_reporter(Reporter(posthog_client, capture_code_variables=True))
    try:
        fail_with_locals()
    except ValueError as exc:
        posthog_errors.capture_exception(exc)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    wire = json.dumps(event)
    for value in (*SECRET_NAMES.values(), *SECRET_VALUES.values()):
        if len(value) > 3:
            assert value not in wire, value
    frames = frames_with_variables(event["properties"])
    [frame] = [f for f in frames if f["function"] == "_locals_frame"]
    variables = frame["code_variables"]
    assert variables["password"] == MASKED
    assert variables["order_id"] == "order-1234"
    assert "variables" in variables  # the kwargs dict, rendered by hand and masked inside
    rendered = variables["variables"]
    assert rendered.startswith("{'password': [Filtered], 'db_password': [Filtered]")
    assert rendered.endswith(", ...}")  # at most 10 items of a container


def test_each_chained_exception_carries_its_own_locals() -> None:
    def low_level() -> None:
        low_only = "from the cause"  # noqa: F841
        raise KeyError("missing")

    def high_level() -> None:
        high_only = "from the wrapper"  # noqa: F841
        try:
            low_level()
        except KeyError as error:
            raise RuntimeError("wrapped") from error

    try:
        high_level()
    except RuntimeError as exc:
        props = exception_properties(exc, capture_code_variables=True)
    assert_properties_conform(props)
    outer, cause = props["$exception_list"]
    outer_vars = outer["stacktrace"]["frames"][-1]["code_variables"]
    cause_vars = cause["stacktrace"]["frames"][-1]["code_variables"]
    assert outer_vars["high_only"] == "from the wrapper" and "low_only" not in outer_vars
    assert cause_vars["low_only"] == "from the cause" and "high_only" not in cause_vars


def test_only_in_app_frames_carry_variables() -> None:
    try:
        json.loads("{broken")
    except ValueError as exc:
        props = exception_properties(exc, capture_code_variables=True)
    for frame in props["$exception_list"][0]["stacktrace"]["frames"]:
        assert ("code_variables" in frame) == frame["in_app"], frame["filename"]


class Hostile:
    calls = 0

    def __repr__(self) -> str:
        Hostile.calls += 1
        while True:  # would never return
            pass

    __str__ = __repr__


def test_user_reprs_are_never_called_and_values_are_bounded() -> None:
    variables = {
        "hostile": Hostile(),
        "huge_list": list(range(100_000)),
        "long_text": "y" * 100_000,
        "nested": {"a": [1, 2, {"b": Hostile()}], "token": "abc"},
        "data": b"\x00" * 5000,
        "nan": float("nan"),
        "big": 2**100,
    }
    result = serialize_locals(variables, VariableBudget(64 * 1024))
    assert Hostile.calls == 0
    assert result["hostile"] == f"<{__name__}.Hostile object>"
    assert len(result["huge_list"]) <= 256 and result["huge_list"].startswith("[0, 1, 2")
    assert len(result["long_text"]) <= 256
    assert (
        result["nested"] == "{'a': [1, 2, {...}], 'token': [Filtered]}"
        or "token" in result["nested"]
    )
    assert MASKED in result["nested"]
    assert result["data"] == "<bytes of 5000>"
    assert result["nan"] == "nan" and result["big"] == str(2**100)


def test_the_per_event_budget_holds() -> None:
    def deep(level: int) -> None:
        padding_a = "a" * 200  # noqa: F841
        padding_b = "b" * 200  # noqa: F841
        if level == 0:
            raise ValueError("deep")
        deep(level - 1)

    try:
        deep(80)
    except ValueError as exc:
        props = exception_properties(exc, capture_code_variables=True)
    total = sum(len(json.dumps(f["code_variables"])) for f in frames_with_variables(props))
    assert 0 < total <= 16 * 1024 * 1.2  # the budget (plus per-name JSON overhead)
    innermost = props["$exception_list"][0]["stacktrace"]["frames"][-1]
    assert "code_variables" in innermost  # innermost frames are served first


@pytest.mark.skipif(os.name != "posix", reason="posix only")
def test_install_option_turns_them_on(capture_server: CaptureServer, posthog_client: Any) -> None:
    with posthog_errors.install(
        posthog_client, capture_code_variables=True, logs=False, excepthooks=False
    ):
        try:
            local_value = "visible"  # noqa: F841
            raise LookupError("with a local")
        except LookupError as exc:
            posthog_errors.capture_exception(exc)
    assert posthog_errors.flush(5)
    [event] = capture_server.wait_for_events(1)
    [frame] = frames_with_variables(event["properties"])
    assert frame["code_variables"]["local_value"] == "visible"
    assert frame["function"] == "test_install_option_turns_them_on"
