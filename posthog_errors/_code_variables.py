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
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from posthog_errors._frames import safe_text
from posthog_errors._redact import redact
from posthog_errors._stats import STATS

__all__ = ["MASKED", "UNREPRESENTABLE", "VariableBudget", "int_text", "serialize_locals"]

MASKED = "[Filtered]"
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

# Variable names that hold secrets.
_SECRET_NAME = re.compile(
    r"pass(word|wd)?|pwd|secret|token|api_?key|apikey|auth|credential|private_?key|"
    r"access_?key|session_?key|cookie|signature|dsn|jwt|sk_|conn(ection)?_?str|bearer|otp",
    re.IGNORECASE,
)
# Values that are secrets whatever their variable is called.
_SECRET_VALUE = re.compile(
    "|".join(
        [
            r"AKIA[0-9A-Z]{16}",  # AWS access key id
            r"ASIA[0-9A-Z]{16}",  # AWS temporary access key id
            r"\b(?:sk|pk|rk)_(?:live|test)_[0-9A-Za-z]{10,}",  # Stripe
            r"\bwhsec_[0-9A-Za-z]{10,}",  # Stripe webhook secret
            r"\beyJ[0-9A-Za-z_-]{5,}\.eyJ[0-9A-Za-z_-]{5,}\.[0-9A-Za-z_-]*",  # JWT
            r"\bgh[pousr]_[0-9A-Za-z]{20,}",  # GitHub tokens
            r"\bgithub_pat_[0-9A-Za-z_]{20,}",
            r"\bxox[abprs]-[0-9A-Za-z-]{10,}",  # Slack
            r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
            r"\bya29\.[0-9A-Za-z_-]{20,}",  # Google OAuth token
            r"\bglpat-[0-9A-Za-z_-]{20}",  # GitLab
            r"\bnpm_[0-9A-Za-z]{36}",  # npm
            r"\bSG\.[0-9A-Za-z_-]{16,}\.[0-9A-Za-z_-]{16,}",  # SendGrid
            r"\bphx_[0-9A-Za-z]{20,}",  # PostHog personal API key
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",  # PEM private keys
            r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:@/]*:[^\s@/]+@",  # URL with credentials
            r"\bhttps?://[0-9a-f]{32}@[^\s/]+/\d+",  # Sentry DSN
            r"(?i:\b(?:bearer|basic|token)\s+[A-Za-z0-9._~+/-]{12,}=*)",  # auth headers
            r"(?i:\b(?:password|passwd|pwd|secret|api_?key)\s*[=:]\s*\S+)",  # assignments
        ]
    )
)


class VariableBudget:
    """Bytes of code variables one event may still carry."""

    def __init__(self, total: int) -> None:
        self.remaining = total

    def take(self, cost: int) -> bool:
        if cost > self.remaining:
            self.remaining = 0
            return False
        self.remaining -= cost
        return True


def serialize_locals(variables: Mapping[str, Any], budget: VariableBudget) -> dict[str, Any]:
    """``name -> value`` for one frame: scalars first, so they survive a tight budget."""
    result: dict[str, Any] = {}
    # Exact str names only: a str subclass's methods (startswith, __hash__) never run.
    names = sorted(
        (name for name in variables if type(name) is str and not name.startswith("__")),
        key=lambda name: (not _is_scalar(variables[name]), name),
    )
    for name in names:
        value = MASKED if _SECRET_NAME.search(name) else _render_variable(variables[name])
        cost = len(name) + (len(value) if isinstance(value, str) else 8) + 6
        if not budget.take(cost):
            break
        result[safe_text(name, 100)] = value
    return result


def _render_variable(value: Any) -> Any:
    """One variable; a failure loses this variable's value, never the event."""
    try:
        return _render(value, 0)
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


def _render(value: Any, depth: int) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if abs(value) < 2**53 else _bounded(int_text(value))
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if kind is str:
        return _text(value)
    if kind in (bytes, bytearray):
        return _text(f"<{kind.__name__} of {len(value)}>")
    if kind in (list, tuple, set, frozenset, dict) and depth < _MAX_DEPTH:
        return _bounded(_container(value, depth))
    return _describe(value)


def _text(value: str) -> str:
    if len(value) > _MAX_TEXT + _SECRET_WINDOW:
        # Cut first: the patterns below then read a bounded window, never the whole value.
        window = value[: _MAX_TEXT + _SECRET_WINDOW]
        return MASKED if _SECRET_VALUE.search(window) else _bounded(redact(window))
    if _looks_secret(value):
        return MASKED
    return _bounded(redact(value))


def _container(value: Any, depth: int) -> str:
    iterable = value.items() if isinstance(value, dict) else value
    items = list(itertools.islice(iterable, _MAX_ITEMS + 1))
    more = len(items) > _MAX_ITEMS
    parts = []
    for item in items[:_MAX_ITEMS]:
        if isinstance(value, dict):
            key, inner = item
            shown = MASKED if isinstance(key, str) and _SECRET_NAME.search(key) else inner
            parts.append(f"{_inline(key, depth)}: {_inline(shown, depth)}")
        else:
            parts.append(_inline(item, depth))
    if more:
        parts.append("...")
    brackets: dict[type, tuple[str, str]] = {list: ("[", "]"), tuple: ("(", ")"), dict: ("{", "}")}
    opening, closing = brackets.get(type(value), (f"{type(value).__name__}({{", "})"))
    return opening + ", ".join(parts) + closing


def _inline(value: Any, depth: int) -> str:
    if type(value) is str and value == MASKED:
        return MASKED
    rendered = _render(value, depth + 1)
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


def _looks_secret(value: str) -> bool:
    """The whole value is a credential (short values only: see ``_text``)."""
    return bool(_SECRET_VALUE.search(value)) or _high_entropy(value)


def _high_entropy(value: str) -> bool:
    """A single long token of mixed character classes with high Shannon entropy."""
    if len(value) < 24 or len(value) > 256 or any(c.isspace() for c in value):
        return False
    classes = sum(
        (
            any(c.islower() for c in value),
            any(c.isupper() for c in value),
            any(c.isdigit() for c in value),
        )
    )
    if classes < 3:
        return False
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return entropy > 4.0
