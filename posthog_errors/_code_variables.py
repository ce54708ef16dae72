"""Code variables: each in-app frame's locals, masked and bounded. Opt-in, off by default.

Locals are copied on the caller's thread when the exception is captured (a shallow copy
per in-app frame, only when the option is on) and turned into text here, on the worker.

Nothing here ever calls an object's own ``__repr__``: a hostile or slow ``__repr__`` could
run for ever, and a ``__repr__`` is where secrets leak. Builtin scalars and containers are
rendered by hand, with bounds; any other object shows as ``<module.Class object>``.
Names and values that look like secrets are masked, and an event gets a byte budget.

Hostile values are bounded before anything reads them: a string is cut to a window of
``_MAX_TEXT + _SECRET_WINDOW`` characters before the secret patterns run (a secret that
straddles the shown part is still seen whole, and a 50 MB string costs what a short one
does), containers are read ``_MAX_ITEMS`` items at most, and an int too big for ``str()``
(Python's 4,300-digit limit, or anything over 256 characters) shows as
``<int with N bits>``. A variable whose rendering fails anyway shows as
``<unrepresentable>`` (counted as ``invalid_input``); the event keeps the others.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from posthog_errors._frames import safe_text
from posthog_errors._redact import DEFAULT_REDACTOR, FILTERED, Redactor, is_card_number
from posthog_errors._stats import STATS

__all__ = ["MASKED", "UNREPRESENTABLE", "VariableBudget", "int_text", "serialize_locals"]

MASKED = FILTERED
UNREPRESENTABLE = "<unrepresentable>"
_MAX_TEXT = 256
_MAX_ITEMS = 10
_MAX_DEPTH = 2
# Characters read past the shown part of a string, so that a secret crossing the cut is
# matched (and masked) whole rather than shown in part.
_SECRET_WINDOW = 512
# Over this many bits, an int's decimal form is over _MAX_TEXT characters (and from about
# 14,000 bits str() refuses it): it is shown by size.
_MAX_INT_BITS = 800


class VariableBudget:
    """Bytes of code variables one event may still carry, and the event's redaction
    policy (the reporter's ``Redactor``, with the user's keys and patterns)."""

    def __init__(self, total: int, redactor: Redactor = DEFAULT_REDACTOR) -> None:
        self.remaining = total
        self.redactor = redactor

    def take(self, cost: int) -> bool:
        if cost > self.remaining:
            self.remaining = 0
            return False
        self.remaining -= cost
        return True


def serialize_locals(variables: Mapping[str, Any], budget: VariableBudget) -> dict[str, Any]:
    """``name -> value`` for one frame: scalars first, so they survive a tight budget."""
    redactor = budget.redactor
    result: dict[str, Any] = {}
    # Exact str names only: a str subclass's methods (startswith, __hash__) never run.
    names = sorted(
        (name for name in variables if type(name) is str and not name.startswith("__")),
        key=lambda name: (not _is_scalar(variables[name]), name),
    )
    for name in names:
        value = (
            MASKED if redactor.is_secret_key(name) else _render_variable(variables[name], redactor)
        )
        cost = len(name) + (len(value) if isinstance(value, str) else 8) + 6
        if not budget.take(cost):
            break
        result[safe_text(name, 100)] = value
    return result


def _render_variable(value: Any, redactor: Redactor) -> Any:
    """One variable; a failure loses this variable's value, never the event."""
    try:
        return _render(value, 0, redactor)
    except Exception:
        STATS.add("invalid_input")
        return UNREPRESENTABLE


def int_text(value: int) -> str:
    """An int as text without ``str()`` for a huge one (which may raise, and is slow)."""
    bits = int.bit_length(value)
    if bits <= _MAX_INT_BITS:
        return int.__repr__(value)
    return f"<int with {bits} bits>"


def _is_scalar(value: object) -> bool:
    return value is None or type(value) in (bool, int, float, str)


def _render(value: Any, depth: int, redactor: Redactor) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        if 10**12 <= abs(value) < 10**19 and is_card_number(int.__repr__(abs(value))):
            return MASKED  # a card number held as an int
        return value if abs(value) < 2**53 else _bounded(int_text(value))
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if kind is str:
        return _text(value, redactor)
    if kind in (bytes, bytearray):
        return _text(f"<{kind.__name__} of {len(value)}>", redactor)
    if kind in (list, tuple, set, frozenset, dict) and depth < _MAX_DEPTH:
        return _bounded(_container(value, depth, redactor))
    return _describe(value)


def _text(value: str, redactor: Redactor) -> str:
    """A string variable: masked whole when it is (or holds) a credential, else redacted
    and cut. Only a bounded window is ever read: a string too long to scan is shown by
    its scanned head, redacted, never raw."""
    window = value[: _MAX_TEXT + _SECRET_WINDOW]
    if redactor.has_credential(window):
        return MASKED
    if len(value) > len(window):
        # Cut first: the patterns then read a bounded window, never the whole value; the
        # cut window is marked, so a partial secret at its end is filtered too.
        return _bounded(redactor.text(window, _MAX_TEXT))
    redacted = redactor.text(value, _MAX_TEXT)
    if len(value) <= _MAX_TEXT and redacted != value:
        return MASKED  # a short value holding an assignment or auth value: masked whole
    return _bounded(redacted)


def _container(value: Any, depth: int, redactor: Redactor) -> str:
    iterable = value.items() if isinstance(value, dict) else value
    items = list(itertools.islice(iterable, _MAX_ITEMS + 1))
    more = len(items) > _MAX_ITEMS
    parts = []
    pair = (
        type(value) in (tuple, list)
        and len(items) == 2
        and type(items[0]) is str
        and items[1] is not None
        and type(items[1]) is not bool
        and redactor.is_secret_key(items[0])
    )
    if pair:  # ("password", value)
        items = [items[0], MASKED]
    for item in items[:_MAX_ITEMS]:
        if isinstance(value, dict):
            key, inner = item
            secret = type(key) is str and redactor.is_secret_key(key)
            shown = MASKED if secret else inner
            parts.append(f"{_inline(key, depth, redactor)}: {_inline(shown, depth, redactor)}")
        else:
            parts.append(_inline(item, depth, redactor))
    if more:
        parts.append("...")
    brackets: dict[type, tuple[str, str]] = {list: ("[", "]"), tuple: ("(", ")"), dict: ("{", "}")}
    opening, closing = brackets.get(type(value), (f"{type(value).__name__}({{", "})"))
    return opening + ", ".join(parts) + closing


def _inline(value: Any, depth: int, redactor: Redactor) -> str:
    if type(value) is str and value == MASKED:
        return MASKED
    rendered = _render(value, depth + 1, redactor)
    if type(value) is str and rendered != MASKED:
        return "'" + str(rendered) + "'"
    return str(rendered)


def _describe(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "?")
    name = getattr(cls, "__qualname__", "object")
    return f"<{module}.{name} object>" if isinstance(name, str) else "<object>"


def _bounded(text: str) -> str:
    return safe_text(text, _MAX_TEXT)
