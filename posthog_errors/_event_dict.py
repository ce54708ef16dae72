"""Reading a structlog event dict, for the structlog processor and for the logging handler.

Both doors meet these dicts: the processor in structlog's chain, and the handler when
``structlog.stdlib.ProcessorFormatter`` hands stdlib a record whose ``msg`` is the dict. One
reading keeps them consistent: the exception the way structlog resolves ``exc_info``, the
message from ``event``, the IDs, and the rest as properties. Secret-looking keys are not
dropped here: the one redaction policy (``_redact``) filters their values on the worker,
with the user's own ``redact_keys``, like every other property.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["EventDictView", "exception_from_exc_info", "read_event_dict"]

# Keys structlog and its stdlib bridge use for themselves; never sent as properties.
_RESERVED_KEYS = frozenset(
    {
        "event",
        "exc_info",
        "exception",
        "level",
        "log_level",
        "timestamp",
        "logger",
        "logger_name",
        "stack_info",
        "stack",
        "_record",
        "_from_structlog",
        "positional_args",
        "distinct_id",
        "session_id",
    }
)


@dataclasses.dataclass(frozen=True)
class EventDictView:
    message: str | None
    template: str | None
    exception: BaseException | None
    level: str | None
    distinct_id: Any
    session_id: Any
    properties: dict[str, Any]


def exception_from_exc_info(exc_info: object) -> BaseException | None:
    """``exc_info`` as structlog reads it: True, an exception, or a sys.exc_info() tuple."""
    if exc_info is None or exc_info is False:
        return None
    if isinstance(exc_info, BaseException):
        return exc_info
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    return None


def read_event_dict(event_dict: Mapping[str, Any]) -> EventDictView:
    event = event_dict.get("event")
    message = None if event is None else (event if isinstance(event, str) else str(event))
    positional = event_dict.get("positional_args")
    template = message
    if message is not None and positional:
        # structlog's PositionalArgumentsFormatter: the event is a %-template.
        with contextlib.suppress(Exception):
            message = message % tuple(positional)
    level = event_dict.get("level")
    properties = {
        key: value
        for key, value in event_dict.items()
        if isinstance(key, str) and key not in _RESERVED_KEYS
    }
    return EventDictView(
        message=message,
        template=template,
        exception=exception_from_exc_info(event_dict.get("exc_info")),
        level=level.lower() if isinstance(level, str) else None,
        distinct_id=event_dict.get("distinct_id"),
        session_id=event_dict.get("session_id"),
        properties=properties,
    )
