"""Property-based: whatever the exception, the payload builder never raises, always meets
exception-event.md, and stays under the size budget."""

from __future__ import annotations

import builtins
import json
import sys
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posthog_errors import exception_properties
from tests.conformance import assert_properties_conform

# Any text, lone surrogates included.
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200) | st.text(
    alphabet=st.sampled_from(["\ud800", "\udfff", "a", "\x00", "é", "🙂", "\n"]), max_size=50
)
HUGE = st.integers(min_value=10_000, max_value=300_000).map(lambda n: "x" * n)


class Hostile(Exception):
    """An exception whose behaviours are drawn by hypothesis."""

    def __init__(self, behaviour: dict[str, Any]) -> None:
        super().__init__()
        self.behaviour = behaviour

    def __str__(self) -> str:
        mode = self.behaviour.get("str")
        if mode == "raise":
            raise RuntimeError("str failed")
        if mode == "non-str":
            return 42  # type: ignore[return-value]
        return str(self.behaviour.get("text", ""))

    def __repr__(self) -> str:
        if self.behaviour.get("repr") == "raise":
            raise RuntimeError("repr failed")
        return "Hostile()"


def raised(exc: BaseException, depth: int) -> BaseException:
    def recurse(n: int) -> None:
        if n <= 0:
            raise exc
        recurse(n - 1)

    try:
        recurse(depth)
    except BaseException as caught:  # the point is to catch anything
        return caught
    raise AssertionError("unreachable")


@st.composite
def exceptions(draw: st.DrawFn, depth: int = 0) -> BaseException:
    kind = draw(st.sampled_from(["plain", "hostile", "group", "huge"] if depth < 3 else ["plain"]))
    if kind == "hostile":
        exc: BaseException = Hostile(
            {
                "str": draw(st.sampled_from(["raise", "non-str", "text"])),
                "repr": draw(st.sampled_from(["raise", "ok"])),
                "text": draw(TEXT),
            }
        )
    elif kind == "group" and sys.version_info >= (3, 11):
        members = draw(st.lists(exceptions(depth + 1), min_size=1, max_size=4))
        group = vars(builtins)["ExceptionGroup"]  # Python 3.11+, checked above
        exc = group(
            draw(TEXT), [m for m in members if isinstance(m, Exception)] or [ValueError("member")]
        )
    elif kind == "huge":
        exc = ValueError(draw(HUGE))
    else:
        exc = draw(st.sampled_from([ValueError, KeyError, OSError, RuntimeError]))(draw(TEXT))
    if draw(st.booleans()):
        exc = raised(exc, draw(st.integers(min_value=0, max_value=40)))
    chain_length = draw(st.integers(min_value=0, max_value=3 if depth else 80))
    current = exc
    for _ in range(chain_length):
        cause = ValueError(draw(TEXT))
        if draw(st.booleans()):
            current.__cause__ = cause
            current.__suppress_context__ = draw(st.booleans())
        else:
            current.__context__ = cause
        current = cause
    if draw(st.booleans()):
        current.__context__ = exc  # a cycle
    return exc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exceptions())
def test_payload_builder_never_raises_and_always_conforms(exc: BaseException) -> None:
    props = exception_properties(exc)
    assert_properties_conform(props)
    encoded = json.dumps(props).encode("utf-8")
    assert len(encoded) < 900 * 1024
    for entry in props["$exception_list"]:
        assert len(entry["value"].encode("utf-8")) <= 10_000


def test_a_traceback_at_the_recursion_limit() -> None:
    def recurse() -> None:
        recurse()

    try:
        recurse()
    except RecursionError as exc:
        props = exception_properties(exc)
    assert_properties_conform(props)
    frames = props["$exception_list"][0]["stacktrace"]["frames"]
    assert len(frames) == 100
    assert frames[0]["function"] == "test_a_traceback_at_the_recursion_limit"
    assert frames[-1]["function"] == "recurse"
