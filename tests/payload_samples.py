"""Sample failing functions for test_payload.py.

Lines that tests look up carry a ``# @name`` marker; :func:`marker_line` finds them, so the
tests never hard-code line numbers. Keep this module free of pytest imports: it is imported
as a plain module (no assertion rewriting), like user code would be.
"""

from __future__ import annotations

import builtins
import json
import textwrap
from typing import Any, cast

import requests

# ``ExceptionGroup`` is a builtin on 3.11+ only; tests using it are skipped on 3.10.
ExceptionGroup: Any = getattr(builtins, "ExceptionGroup", None)


def marker_line(marker: str, path: str = __file__) -> int:
    """The 1-based line number of the line in ``path`` ending with ``# @marker``."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.rstrip().endswith(f"# @{marker}"):
                return number
    raise LookupError(marker)


def source_line(lineno: int, path: str = __file__) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()[lineno - 1]


def simple() -> None:
    raise ValueError("simple failure")  # @simple


def level3() -> None:
    raise KeyError("deep")  # @level3


def level2() -> None:
    level3()  # @level2


def level1() -> None:
    level2()  # @level1


def explicit_cause() -> None:
    try:
        level1()  # @cause_call
    except KeyError as exc:
        raise RuntimeError("wrapped") from exc  # @cause


def implicit_context() -> None:
    try:
        simple()  # @context_call
    except ValueError:
        raise TypeError("while handling")  # noqa: B904  # @context


def suppressed_context() -> None:
    try:
        simple()
    except ValueError:
        raise LookupError("clean") from None  # @suppressed


def recurse(depth: int) -> None:
    """Recursion whose call line cycles with depth, so kept frames are identifiable."""
    if depth <= 0:
        raise ValueError("bottom")  # @bottom
    if depth % 3 == 0:
        recurse(depth - 1)  # @recurse0
    elif depth % 3 == 1:
        recurse(depth - 1)  # @recurse1
    else:
        recurse(depth - 1)  # @recurse2


def stdlib_failure() -> None:
    json.loads("{")  # @json


def top_level_stdlib_failure() -> None:
    textwrap.dedent(cast(Any, None))  # @textwrap


def site_packages_failure() -> None:
    requests.Request("GET", "not a url").prepare()  # @requests


def raise_group() -> None:
    """outer(ValueError raised in simple(), inner(KeyError, TypeError), OSError)."""
    try:
        simple()  # @group_member
    except ValueError as exc:
        raised_member = exc
    inner = ExceptionGroup("inner", [KeyError("k"), TypeError("t")])
    raise ExceptionGroup("outer", [raised_member, inner, OSError("o")])  # @group


def raise_group_with_context() -> None:
    try:
        simple()
    except ValueError:
        raise ExceptionGroup("grouped", [KeyError("a"), KeyError("b")])  # noqa: B904
