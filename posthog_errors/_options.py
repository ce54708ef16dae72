"""Validated payload options, checked once at configuration time.

Bad values fail here with a message that names the value and what is accepted, so that a
typo in ``dictConfig`` is an error at start-up rather than a silent gap in error reports.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterable

from posthog_errors._redact import Redactor, compile_patterns, key_words

__all__ = ["ENVIRONMENT_VARIABLES", "PayloadOptions", "as_names"]

# Where each of these options comes from when not given: the first variable set (and not
# blank). ``release`` as posthog-python reads it; ``service`` falls back to OpenTelemetry's
# standard variable, which PostHog's own apps set their ``service`` from.
ENVIRONMENT_VARIABLES: dict[str, tuple[str, ...]] = {
    "release": ("POSTHOG_RELEASE_ID",),
    "environment": ("POSTHOG_ENVIRONMENT",),
    "service": ("POSTHOG_SERVICE", "OTEL_SERVICE_NAME"),
}
# A name, not a text: longer is a mistake (a value pasted in the wrong option).
_MAX_NAME = 200


@dataclasses.dataclass(frozen=True)
class PayloadOptions:
    """How exceptions are turned into ``$exception`` properties.

    ``in_app_include`` / ``in_app_exclude`` are module prefixes (``"myapp"`` matches
    ``myapp.views``); include wins over exclude, and both win over the path rules.
    ``project_root``, when set, makes only code under that directory in-app.
    ``redact_secrets`` applies the redaction policy of ``_redact`` to everything sent
    (exception values, log messages, fingerprints, source lines, user properties at any
    depth, Sentry data); ``redact_keys`` adds key names and ``redact_patterns`` regexes to
    it (checked here). Code variables are masked whatever ``redact_secrets`` says.
    ``capture_code_variables`` (off by default)
    sends each in-app frame's locals, masked, within ``code_variables_budget`` bytes per
    event. ``max_value_length`` cuts each exception's value text (in characters) on the
    caller's thread, before anything else reads it: generously, as the payload cuts the
    value to the server's 10,000 UTF-8 bytes after redaction. ``max_event_bytes`` is the
    budget for the JSON of the whole properties (exception list and user properties); see
    ``_payload`` for the order in which an event over it is shrunk.
    """

    in_app_include: tuple[str, ...] = ()
    in_app_exclude: tuple[str, ...] = ()
    project_root: str | None = None
    context_lines: int = 5
    max_frames: int = 100
    max_exceptions: int = 50
    max_value_length: int = 20_000
    max_line_length: int = 1000
    max_event_bytes: int = 512 * 1024
    redact_secrets: bool = True
    redact_keys: tuple[str, ...] = ()
    redact_patterns: tuple[re.Pattern[str], ...] = ()
    capture_code_variables: bool = False
    code_variables_budget: int = 16 * 1024
    # Sent as $release_id (an explicit property wins); POSTHOG_RELEASE_ID when not given.
    release: str | None = None
    # Sent as ``environment`` and ``service`` on every event (an explicit property wins),
    # the names PostHog's own apps send them under (see ENVIRONMENT_VARIABLES for the
    # environment variables read when not given).
    environment: str | None = None
    service: str | None = None

    def __post_init__(self) -> None:
        for name, variables in ENVIRONMENT_VARIABLES.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {value!r}")
            value = (value or "").strip() or _from_environment(variables)
            if name != "release" and value is not None and len(value) > _MAX_NAME:
                raise ValueError(f"{name} must be at most {_MAX_NAME} characters, got {value!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "in_app_include", _modules("in_app_include", self.in_app_include))
        object.__setattr__(self, "in_app_exclude", _modules("in_app_exclude", self.in_app_exclude))
        if self.project_root is not None:
            if not isinstance(self.project_root, (str, os.PathLike)):
                raise TypeError(
                    f"project_root must be a path (str or os.PathLike) or None, "
                    f"got {self.project_root!r}"
                )
            root = os.path.abspath(os.fspath(self.project_root))
            object.__setattr__(self, "project_root", root.rstrip(os.sep) + os.sep)
        object.__setattr__(self, "redact_keys", key_words(self.redact_keys))
        object.__setattr__(self, "redact_patterns", compile_patterns(self.redact_patterns))
        for name, minimum in (
            ("context_lines", 0),
            ("max_frames", 2),
            ("max_exceptions", 1),
            ("max_value_length", 16),
            ("max_line_length", 16),
            ("max_event_bytes", 16 * 1024),
            ("code_variables_budget", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

    @functools.cached_property
    def redactor(self) -> Redactor:
        """The redaction policy for these options (built once)."""
        return Redactor(self.redact_keys, self.redact_patterns)

    @property
    def snapshot_value_length(self) -> int:
        """Characters of a value kept on the caller's thread: room to redact, then cut."""
        return 2 * self.max_value_length if self.redact_secrets else self.max_value_length


def _from_environment(variables: tuple[str, ...]) -> str | None:
    for variable in variables:
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return None


def as_names(value: Iterable[str] | str | None) -> tuple[str, ...]:
    """``"myapp"`` and ``["myapp"]`` alike (``tuple("myapp")`` would be five letters)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _modules(name: str, value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not item or item.startswith("."):
            raise ValueError(
                f"{name} takes module names such as 'myapp' or 'myapp.views', got {item!r}"
            )
    return tuple(items)
