"""The level allow list: which log levels are reported, and as which PostHog level.

An allow list, not a threshold: ``["debug", "error"]`` reports DEBUG and ERROR records and
drops INFO and WARNING. It accepts PostHog/Sentry names (``fatal, error, warning, log,
info, debug``), Python names in any case (``CRITICAL``, ``WARN``...), ints, registered
custom level names, ``"*"`` for all, and a comma-separated string of those (for INI files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["LevelAllowList", "posthog_level", "severity_names"]

POSTHOG_LEVELS = ("fatal", "error", "warning", "log", "info", "debug")

# PostHog level -> the Python levels it covers, as [low, high).
_RANGES = {
    "fatal": (logging.CRITICAL, 10**9),
    "error": (logging.ERROR, logging.CRITICAL),
    "warning": (logging.WARNING, logging.ERROR),
    # Python has no separate "log" level; like console.log, it is info.
    "log": (logging.INFO, logging.WARNING),
    "info": (logging.INFO, logging.WARNING),
    "debug": (1, logging.INFO),
}
_PYTHON_NAMES = {
    "critical": "fatal",
    "fatal": "fatal",
    "error": "error",
    "warning": "warning",
    "warn": "warning",
    "info": "info",
    "debug": "debug",
    "log": "log",
}


def posthog_level(levelno: int) -> str:
    """Python level number -> PostHog level; custom levels go to the standard level below."""
    if levelno >= logging.CRITICAL:
        return "fatal"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class LevelAllowList:
    """A parsed allow list. ``allows(levelno)`` is a set lookup after the first call."""

    def __init__(self, levels: str | int | Iterable[str | int]) -> None:
        self.everything = False
        self._ranges: list[tuple[int, int]] = []
        self._exact: set[int] = set()
        for item in _items(levels):
            self._add(item)
        if not self.everything and not self._ranges and not self._exact:
            raise ValueError("levels is empty: name at least one level, or '*' for all")
        self._cache: dict[int, bool] = {}

    def _add(self, item: str | int) -> None:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(_unknown(item))
        if isinstance(item, int):
            if item < 0:
                raise ValueError(_unknown(item))
            self._exact.add(item)
            return
        name = item.strip()
        if name == "*":
            self.everything = True
            return
        known = _PYTHON_NAMES.get(name.lower())
        if known is not None:
            self._ranges.append(_RANGES[known])
            return
        custom = _registered_levels().get(name)
        if custom is None:
            custom = _registered_levels().get(name.upper())
        if custom is None:
            raise ValueError(_unknown(item))
        self._exact.add(custom)

    @property
    def lowest(self) -> int:
        """The lowest level allowed: the handler's own level, so lower records cost nothing."""
        if self.everything:
            return logging.NOTSET
        candidates = [low for low, _ in self._ranges] + list(self._exact)
        return min(candidates)

    def allows(self, levelno: int) -> bool:
        allowed = self._cache.get(levelno)
        if allowed is None:
            allowed = (
                self.everything
                or levelno in self._exact
                or any(low <= levelno < high for low, high in self._ranges)
            )
            if len(self._cache) < 256:
                self._cache[levelno] = allowed
        return allowed


def severity_names(
    levels: str | int | Iterable[str | int], *, option: str = "severity_allow_list"
) -> frozenset[str] | None:
    """A Sentry severity allow list, parsed as ``levels`` is: PostHog/Sentry names and
    Python names in any case (``critical`` is Sentry's ``fatal``), ints, ``"*"`` and comma
    strings. The set of Sentry level names, or None for all of them."""
    names: set[str] = set()
    for item in _items(levels, option):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(_unknown(item, option))
        if isinstance(item, int):
            if item < 0:
                raise ValueError(_unknown(item, option))
            names.add(posthog_level(item))
            continue
        name = item.strip()
        if name == "*":
            return None
        known = _PYTHON_NAMES.get(name.lower())
        if known is None:
            raise ValueError(_unknown(item, option))
        names.add(known)
    if not names:
        raise ValueError(f"{option} is empty: name at least one level, or '*' for all")
    return frozenset(names)


def _items(levels: str | int | Iterable[str | int], option: str = "levels") -> list[str | int]:
    if isinstance(levels, str):
        return [part for part in levels.split(",") if part.strip()] or [levels]
    if isinstance(levels, int):
        return [levels]
    try:
        return list(levels)
    except TypeError:
        raise ValueError(_unknown(levels, option)) from None


def _registered_levels() -> dict[str, int]:
    mapping = getattr(logging, "getLevelNamesMapping", None)
    if mapping is not None:
        names: dict[str, int] = mapping()
        return names
    return dict(logging._nameToLevel)


def _unknown(value: object, option: str = "levels") -> str:
    custom = sorted(
        name
        for name, number in _registered_levels().items()
        if name.lower() not in _PYTHON_NAMES and name != "NOTSET" and number
    )
    accepted = (
        "PostHog names (fatal, error, warning, log, info, debug), Python names in any case "
        "(CRITICAL, ERROR, WARNING, WARN, INFO, DEBUG), non-negative ints, '*' for all"
    )
    if custom:
        accepted += ", or registered custom levels (" + ", ".join(custom) + ")"
    return f"unknown level {value!r} in {option}; accepted: {accepted}"
