"""Bounded copies of the app's values, made on the caller's thread.

Two things the app hands the library outlive the call that handed them: a step's message
and properties (kept by the context's trail until an event sends them) and a queued
event's properties (kept until the worker builds the event). Kept as they came, they pin
whatever they reference (a 1 MiB request body, a cart that keeps changing, a proxy that
only works inside the request) and make the worker run the app's ``__str__``/``__repr__``
on its own thread, outside the app's context and locks, after the value changed.

So both are copied here, on the caller's thread, into plain values of bounded size:
``str`` and ``bytes`` are measured with ``len()`` before they are sliced, containers are
walked a bounded number of items deep, and any other object is shown by its own
``repr()`` (run now, in the app's context), cut. Nothing here builds the whole text of a
big ``str``, ``bytes`` or container; an object whose own ``__repr__`` returns a huge text
builds it once, transiently, and only its head is kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CUT_MARK",
    "CUT_VALUE",
    "MAX_QUEUED_TEXT",
    "MAX_QUEUED_VALUES",
    "QUEUED_BUDGET",
    "Shown",
    "bounded_arguments",
    "bounded_repr",
    "cut",
    "freeze_properties",
]

CUT_MARK = "..."  # the redactor's own mark: it filters a partial secret before it
# The worker's redaction reads at most 2 x 1,024 characters of a text before cutting it to
# 1,024 (``_redact.Redactor.text``); one more tells it the text was cut. So a queued text
# cut to this many characters is sent exactly as the whole text would have been.
MAX_QUEUED_TEXT = 2 * 1024 + 1
MAX_QUEUED_KEY = 2 * 200 + 1  # keys are cut to 200 characters on the worker
MAX_QUEUED_VALUES = 100  # items of one container (the worker sends at most 100)
MAX_QUEUED_DEPTH = 8  # the worker's depth
# What one queued event's properties may hold: characters of text, plus this much per
# value for the objects themselves. Past it, values are replaced by CUT_VALUE.
QUEUED_BUDGET = 64 * 1024
VALUE_COST = 64
CUT_VALUE = "[cut: queued event size limit]"
_MAX_INT_BITS = 256  # the worker sends a bigger int as text
_REPR_ITEMS = 10  # items of a container shown in a step's message
_REPR_DEPTH = 3

_SCALARS = (bool, int, float)


class Shown:
    """A value's bounded text standing in for it in ``%`` formatting: ``%s`` and ``%r`` both
    give the text (for a container, ``str()`` is its ``repr()`` anyway)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def cut(text: str, limit: int) -> str:
    """``text`` as a plain ``str`` of at most ``limit`` characters, marked when cut; a slice,
    so a huge text costs no more than a short one."""
    if type(text) is not str:
        text = str.__str__(text)
    if len(text) > limit:
        return text[: limit - len(CUT_MARK)] + CUT_MARK
    return text


def bounded_repr(value: object, limit: int, depth: int = 0) -> str:
    """``repr(value)`` in at most about ``limit`` characters, built without the whole repr of
    a big ``str``, ``bytes`` or plain container (reprlib's approach, with ``len()`` checks
    first). Any other object's own ``repr()`` runs (on the caller's thread) and is cut. A
    ``repr()`` that raises gives ``<unrepresentable T>``; exit exceptions pass through."""
    cls = type(value)
    if value is None or cls is bool or cls is float:
        return repr(value)
    if cls is int:
        bits = int.bit_length(value)  # type: ignore[arg-type]
        return int.__repr__(value) if bits <= _MAX_INT_BITS else f"<int with {bits} bits>"
    if cls is str or cls is bytes or cls is bytearray:
        size = len(value)  # type: ignore[arg-type]
        head = value[:limit] if size > limit else value  # type: ignore[index]
        text = repr(head)
        return text if size <= limit else text + CUT_MARK
    container = _container_kind(cls)
    if container is not None:
        return _container_repr(value, container, limit, depth)
    try:
        text = repr(value)
        if type(text) is not str:
            text = str.__str__(text) if isinstance(text, str) else f"<unrepresentable {_name(cls)}>"
    except Exception:
        text = f"<unrepresentable {_name(cls)}>"
    return cut(text, limit)


def _container_kind(cls: type) -> type | None:
    """The built-in container ``cls`` is, or derives from (by ``type()``: a proxy claiming
    another ``__class__`` is not walked)."""
    for base in (dict, list, tuple, set, frozenset):
        if issubclass(cls, base):
            return base
    return None


def _container_repr(value: Any, kind: type, limit: int, depth: int) -> str:
    if kind is dict:
        opening, closing = "{", "}"
    elif kind is list:
        opening, closing = "[", "]"
    elif kind is tuple:
        opening, closing = "(", ")"
    else:
        opening, closing = "{", "}"
        if not value:
            return f"{type(value).__name__}()"
    if depth >= _REPR_DEPTH:
        return f"{opening}...{closing}" if value else f"{opening}{closing}"
    parts: list[str] = []
    used = 0
    item_limit = max(16, limit // 4)
    try:
        items: Any = value.items() if kind is dict else value
        for item in itertools.islice(items, _REPR_ITEMS):
            if kind is dict:
                key, inner = item
                text = (
                    bounded_repr(key, item_limit, depth + 1)
                    + ": "
                    + bounded_repr(inner, item_limit, depth + 1)
                )
            else:
                text = bounded_repr(item, item_limit, depth + 1)
            parts.append(text)
            used += len(text) + 2
            if used > limit:
                break
        more = len(value) > len(parts)
    except Exception:
        return f"<unrepresentable {_name(type(value))}>"
    if more:
        parts.append("...")
    body = ", ".join(parts)
    if kind is tuple and len(parts) == 1 and not more:
        body += ","
    text = opening + body + closing
    cls = type(value)
    if (kind in (set, frozenset) and cls is not set) or cls.__repr__ is not kind.__repr__:
        # frozenset({...}), and a subclass printed as its container (OrderedDict({...})):
        # its own __repr__ might build a huge text.
        text = f"{_name(cls)}({text})"
    return cut(text, limit)


def _name(cls: type) -> str:
    name = getattr(cls, "__name__", None)
    return name if type(name) is str else "object"


def bounded_arguments(args: Any, limit: int) -> Any:
    """A log record's ``args`` for formatting now, each argument bounded: a long ``str``
    or ``bytes`` cut, a plain container shown by its bounded repr; any other object is left
    to its own ``__str__``/``__repr__``/``__format__``, which formatting runs now (the
    message is cut after). None when no argument needs it (format the record as it is)."""
    if type(args) is tuple:
        changed = [_bounded_argument(a, limit) for a in args]
        if all(new is old for new, old in zip(changed, args, strict=True)):
            return None
        return tuple(changed)
    if type(args) is dict:
        values = {k: _bounded_argument(a, limit) for k, a in args.items()}
        if all(values[k] is a for k, a in args.items()):
            return None
        return values
    return None


def _bounded_argument(value: Any, limit: int) -> Any:
    cls = type(value)
    if cls is str or cls is bytes or cls is bytearray:
        return value[:limit] if len(value) > limit else value
    if _container_kind(cls) is not None:
        return Shown(bounded_repr(value, limit))
    return value


def freeze_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """A bounded copy of a queued event's properties, made of plain values only: ``str``
    (cut to :data:`MAX_QUEUED_TEXT`), ``int``, ``float``, ``bool``, ``None``, ``bytes`` (cut)
    and dicts and lists of them, at most :data:`MAX_QUEUED_VALUES` items each and
    :data:`MAX_QUEUED_DEPTH` deep; any other object by its bounded repr. Everything past
    :data:`QUEUED_BUDGET` becomes :data:`CUT_VALUE`.

    The worker sends the copy as it would have sent the original: it redacts a text, then
    cuts it to 1,024 characters, reading at most 2,048; it sends at most 100 items of a
    container, 8 deep, and shows any other object by its repr."""
    walk = _Freeze()
    # Plain values first, so that one big structure cannot starve the small properties
    # after it (an order ID after a request body); the copy keeps the app's order.
    items = list(itertools.islice(properties.items(), MAX_QUEUED_VALUES))
    plain = {key: walk.value(item, 1) for key, item in items if _is_plain(item)}
    frozen = walk.mapping({key: plain.get(key, item) for key, item in items}, 0, plain)
    return frozen


def _is_plain(value: object) -> bool:
    cls = type(value)
    return value is None or cls is str or cls is int or cls is float or cls is bool


class _Freeze:
    __slots__ = ("budget", "cut")

    def __init__(self) -> None:
        self.budget = QUEUED_BUDGET
        self.cut = False  # a value was replaced by CUT_VALUE (or a text cut to the budget)

    def mapping(
        self, value: Mapping[Any, Any], depth: int, done: Mapping[Any, Any] | None = None
    ) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, item in itertools.islice(value.items(), MAX_QUEUED_VALUES):
            if done is not None:
                if key in done:
                    result[key] = item  # copied already: a plain value of the first pass
                    continue
                if type(key) is str and key.startswith("$"):
                    # PostHog's own keys may be typed: one cut here would arrive with a
                    # string in place of an object, so it is left out whole (as the worker
                    # removes a typed key too big for the event).
                    budget, self.cut = self.budget, False
                    frozen = self.value(item, depth + 1)
                    if self.cut:
                        self.budget = budget
                    else:
                        result[key] = frozen
                    continue
            if type(key) is str:
                if len(key) > MAX_QUEUED_KEY:
                    key = key[:MAX_QUEUED_KEY]
            elif key is None or type(key) in _SCALARS:
                pass
            else:
                key = (
                    bounded_repr(key, MAX_QUEUED_KEY)
                    if not isinstance(key, str)
                    else cut(key, MAX_QUEUED_KEY)
                )
            self.budget -= VALUE_COST + len(key) if type(key) is str else VALUE_COST
            result[key] = self.value(item, depth + 1)
        return result

    def value(self, value: Any, depth: int) -> Any:
        if self.budget <= 0:
            self.cut = True
            return CUT_VALUE
        cls = type(value)
        if value is None or cls is bool or cls is float:
            self.budget -= VALUE_COST
            return value
        if cls is int:
            self.budget -= VALUE_COST
            return value if int.bit_length(value) <= _MAX_INT_BITS else bounded_repr(value, 64)
        if cls is str or isinstance(value, str):
            text = value if cls is str else str.__str__(value)
            if len(text) > MAX_QUEUED_TEXT:
                text = text[:MAX_QUEUED_TEXT]
            if len(text) > self.budget:
                text, self.cut = text[: max(0, self.budget)], True
            self.budget -= VALUE_COST + len(text)
            return text
        if cls is bytes or cls is bytearray:
            head = bytes(value[:MAX_QUEUED_TEXT])
            self.budget -= VALUE_COST + len(head)
            return head
        if issubclass(cls, _SCALARS):  # an int or float subclass (IntEnum): its value
            self.budget -= VALUE_COST
            number = float.__float__(value) if issubclass(cls, float) else int.__int__(value)
            return self.value(number, depth)
        container = _container_kind(cls)
        if container is not None and depth < MAX_QUEUED_DEPTH:
            self.budget -= VALUE_COST
            try:
                if container is dict:
                    return self.mapping(value, depth)
                items = list(itertools.islice(value, MAX_QUEUED_VALUES))
            except Exception:
                return f"<unrepresentable {_name(cls)}>"
            return [self.value(item, depth + 1) for item in items]
        text = bounded_repr(value, MAX_QUEUED_TEXT)
        self.budget -= VALUE_COST + len(text)
        return text
