"""Who hit the failure: the distinct ID, session ID and bound properties.

Values live in context variables, so they are per thread and per asyncio task. Resolution,
on the caller's thread, for each event:

1. the value passed for this event (``distinct_id=``, ``extra={"distinct_id": ...}``);
2. the binding the exception remembers from the ``bind()`` block it escaped (innermost wins);
3. the current ``bind()`` / ``set_distinct_id()``;
4. posthog-python's own context (``posthog.identify_context`` inside ``posthog.new_context``);
5. structlog's context variables (key ``distinct_id``);
6. the Sentry scope tag ``posthog_distinct_id``;
7. none: the event is personless.

Steps 4 to 6 are consulted only when their library is already imported, so each costs a
``sys.modules`` lookup when it is not.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from posthog_errors import _steps

__all__ = [
    "Binding",
    "as_id",
    "bind",
    "carry_context",
    "current_binding",
    "current_ids_and_span",
    "current_span",
    "get_distinct_id",
    "get_session_id",
    "remember_binding",
    "reset",
    "resolve",
    "set_distinct_id",
    "set_session_id",
    "use_binding",
]

SENTRY_ID_TAG = "posthog_distinct_id"
SENTRY_CONTEXT = "posthog"  # sentry_sdk.set_context("posthog", {SENTRY_ID_TAG: ...})
_REMEMBERED_ATTR = "__posthog_errors_binding"

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Binding:
    """What ``bind()`` set: immutable, so an exception can keep it after the block ends."""

    distinct_id: str | None = None
    session_id: str | None = None
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_EMPTY = Binding()
_binding: contextvars.ContextVar[Binding] = contextvars.ContextVar(
    "posthog_errors_binding", default=_EMPTY
)


class bind:
    """Bind a distinct ID, session ID and properties for the code inside.

    A context manager and a decorator (sync and async functions). Bindings nest: inner
    values override outer ones, properties merge, and leaving the block restores the outer
    values. An exception that escapes the block remembers the binding, so whatever captures
    it later, outside the block, still attributes it to that person.
    """

    def __init__(
        self,
        distinct_id: Any = None,
        *,
        session_id: Any = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        if properties is not None and not isinstance(properties, Mapping):
            raise TypeError(f"properties must be a mapping, got {properties!r}")
        self._distinct_id = _as_id(distinct_id)
        self._session_id = _as_id(session_id)
        self._properties = dict(properties) if properties else {}
        self._tokens: list[contextvars.Token[Binding]] = []

    def __enter__(self) -> Binding:
        outer = _binding.get()
        binding = Binding(
            distinct_id=self._distinct_id or outer.distinct_id,
            session_id=self._session_id or outer.session_id,
            properties={**outer.properties, **self._properties}
            if self._properties
            else outer.properties,
        )
        self._tokens.append(_binding.set(binding))
        return binding

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        token = self._tokens.pop()
        if exc is not None:
            remember_binding(exc, token.var.get())
        _binding.reset(token)

    async def __aenter__(self) -> Binding:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self._copy():
                    return await function(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._copy():
                return function(*args, **kwargs)

        return wrapper

    def _copy(self) -> bind:
        # A decorated function may run in many threads at once: each call needs its own
        # token stack.
        return bind(self._distinct_id, session_id=self._session_id, properties=self._properties)


def current_binding() -> Binding:
    """What ``bind()`` and ``set_distinct_id()`` hold here (immutable: safe to hand to
    another thread, as an executor job takes its submitter's)."""
    return _binding.get()


def use_binding(binding: Binding) -> contextvars.Token[Binding]:
    """Make ``binding`` current (a job runs with its submitter's); ``reset(token)``."""
    return _binding.set(binding)


def remember_binding(exc: BaseException, binding: Binding) -> None:
    """Attach ``binding`` to ``exc`` unless an inner block already did (innermost wins)."""
    if binding is _EMPTY:
        return
    try:
        if getattr(exc, _REMEMBERED_ATTR, None) is None:
            setattr(exc, _REMEMBERED_ATTR, binding)
    except Exception:
        pass  # an exception that refuses attributes keeps no binding


def set_distinct_id(distinct_id: Any) -> contextvars.Token[Binding]:
    """Set the distinct ID for the rest of this context; ``reset(token)`` undoes it."""
    current = _binding.get()
    return _binding.set(dataclasses.replace(current, distinct_id=_as_id(distinct_id)))


def set_session_id(session_id: Any) -> contextvars.Token[Binding]:
    """Set the session ID for the rest of this context; ``reset(token)`` undoes it."""
    current = _binding.get()
    return _binding.set(dataclasses.replace(current, session_id=_as_id(session_id)))


def reset(token: contextvars.Token[Binding]) -> None:
    """Undo a ``set_distinct_id``/``set_session_id``, for middleware-style code."""
    _binding.reset(token)


def get_distinct_id() -> str | None:
    """The distinct ID an event captured here and now would carry (None: personless)."""
    return resolve(None, None, None)[0]


def get_session_id() -> str | None:
    """The session ID an event captured here and now would carry (None: no session)."""
    return resolve(None, None, None)[1]


def resolve(
    exc: BaseException | None, distinct_id: Any, session_id: Any
) -> tuple[str | None, str | None, Mapping[str, Any]]:
    """(distinct ID, session ID, bound properties) for an event, by the chain above."""
    remembered = getattr(exc, _REMEMBERED_ATTR, None) if exc is not None else None
    current = _binding.get()
    found_id = _as_id(distinct_id)
    found_session = _as_id(session_id)
    properties: Mapping[str, Any] = current.properties
    if isinstance(remembered, Binding):
        found_id = found_id or remembered.distinct_id
        found_session = found_session or remembered.session_id
        properties = remembered.properties
    found_id = found_id or current.distinct_id
    found_session = found_session or current.session_id
    if found_id is None or found_session is None:
        found_id, found_session = _with_fallbacks(found_id, found_session)
    return found_id, found_session, properties


def current_ids_and_span() -> tuple[str | None, str | None, int, int]:
    """(distinct ID, session ID, trace id, span id) here and now: :func:`resolve` for no
    exception and no explicit ids, and :func:`current_span` (zeros for none). Read for
    every PostHog Logs record, so the same chain at the least cost: one call, where nothing
    can be known (no id bound, no fallback library with a context, no span) a few lookups.
    """
    current = _binding.get()
    found_id, found_session = current.distinct_id, current.session_id
    modules = _modules
    if found_id is None or found_session is None:
        contexts = modules.get("posthog.contexts")
        # posthog's stack empty (outside new_context()): _get_current_context() is None.
        stack = None if contexts is None else getattr(contexts, "_context_stack", None)
        if not (
            (contexts is None or (type(stack) is contextvars.ContextVar and stack.get() is None))
            and "structlog.contextvars" not in modules
            and "sentry_sdk" not in modules
        ):
            found_id, found_session = _with_fallbacks(found_id, found_session)
    if "opentelemetry.trace" not in modules:
        return found_id, found_session, 0, 0
    # current_span()'s no-span case, inline (see there); else current_span() decides.
    runtime = getattr(modules.get("opentelemetry.context"), "_RUNTIME_CONTEXT", None)
    source = _otel_source
    if runtime is source[0] and source[1] is not None:
        context = source[1].get()
        if isinstance(context, dict) and context.get(source[2]) is None:
            return found_id, found_session, 0, 0
    span = current_span()
    if span is None:
        return found_id, found_session, 0, 0
    return found_id, found_session, span[0], span[1]


_modules = sys.modules


def _with_fallbacks(
    found_id: str | None, found_session: str | None
) -> tuple[str | None, str | None]:
    """What the integrations' contexts know (``_FALLBACKS``, in order) of the ids not found."""
    for lookup in _FALLBACKS:
        if found_id is not None and lookup in _ID_ONLY:
            continue  # it can only tell the distinct ID, which is known
        fallback_id, fallback_session = lookup()
        found_id = found_id or fallback_id
        found_session = found_session or fallback_session
        if found_id is not None and found_session is not None:
            break
    return found_id, found_session


def _from_posthog() -> tuple[str | None, str | None]:
    contexts = sys.modules.get("posthog.contexts")
    if contexts is None:
        return None, None
    try:
        # Outside any new_context() (most code, read for every PostHog Logs record): one
        # call says so, where the two public getters would each look it up.
        current = getattr(contexts, "_get_current_context", None)
        if current is not None and current() is None:
            return None, None
        return _as_id(contexts.get_context_distinct_id()), _as_id(contexts.get_context_session_id())
    except Exception:
        return None, None


def _from_structlog() -> tuple[str | None, str | None]:
    module = sys.modules.get("structlog.contextvars")
    if module is None:
        return None, None
    try:
        variables = module._CONTEXT_VARS
        prefix = module.STRUCTLOG_KEY_PREFIX
        values = []
        for key in ("distinct_id", "session_id"):
            variable = variables.get(prefix + key)
            value = variable.get(Ellipsis) if variable is not None else Ellipsis
            values.append(None if value is Ellipsis else _as_id(value))
        return values[0], values[1]
    except Exception:
        return None, None


def _from_sentry() -> tuple[str | None, str | None]:
    sentry_sdk = sys.modules.get("sentry_sdk")
    if sentry_sdk is None:
        return None, None
    try:
        # Scope.get_*_scope(): in every 2.x and 3.x (the top-level functions came in 2.x)
        scopes = (sentry_sdk.Scope.get_current_scope(), sentry_sdk.Scope.get_isolation_scope())
        for scope in scopes:
            value = scope._tags.get(SENTRY_ID_TAG)
            if value is None:  # the seed's third way: set_context("posthog", {tag: id})
                context = scope._contexts.get(SENTRY_CONTEXT)
                value = context.get(SENTRY_ID_TAG) if isinstance(context, dict) else None
            if value is not None:
                return _as_id(value), None
    except Exception:
        pass
    return None, None


_FALLBACKS = (_from_posthog, _from_structlog, _from_sentry)
_ID_ONLY = (_from_sentry,)  # lookups that never find a session ID


def caller_properties() -> dict[str, Any] | None:
    """What only the caller's thread knows, read when an exception is captured (the worker
    that builds the event has none of it): posthog-python's context tags (``posthog.tag()``
    inside ``new_context()``, and the request tags its own middlewares set), and the active
    OpenTelemetry span as ``$trace_id``/``$span_id``. Neither library is imported here."""
    properties: dict[str, Any] = {}
    contexts = sys.modules.get("posthog.contexts")
    if contexts is not None:
        try:
            tags = contexts.get_tags()
            if isinstance(tags, dict):
                properties.update(tags)
        except Exception:
            pass  # a posthog without context tags
    span = current_span()
    if span is not None:
        properties["$trace_id"] = format(span[0], "032x")
        properties["$span_id"] = format(span[1], "016x")
    return properties or None


def current_span() -> tuple[int, int] | None:
    """(trace id, span id) of the active OpenTelemetry span, or None: read only when the app
    imported ``opentelemetry.trace``. The ``$exception`` events and PostHog Logs both read
    it here, so a log and the failure of the same span point at each other."""
    modules = sys.modules
    trace = modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        # No span here (a log outside a traced request, the common case): read straight
        # from the ContextVar of OpenTelemetry's default runtime context, what
        # get_current_span() reads through three calls (PostHog Logs read it per record).
        runtime = getattr(modules.get("opentelemetry.context"), "_RUNTIME_CONTEXT", None)
        source = _otel_source
        if runtime is not source[0]:
            source = _read_otel_source(runtime)
        variable = source[1]
        if variable is not None:
            current = variable.get()
            if isinstance(current, dict) and current.get(source[2]) is None:
                return None
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            return int(span.trace_id), int(span.span_id)
    except Exception:
        pass  # an opentelemetry-api we cannot read
    return None


# (OpenTelemetry's runtime context, the ContextVar it keeps the current Context in, the key
# the current span is stored under), read once by _read_otel_source().
_otel_source: tuple[Any, Any, Any] = (None, None, None)


def _read_otel_source(runtime: Any) -> tuple[Any, Any, Any]:
    """Where ``runtime`` keeps the current span, when it is opentelemetry-api's default
    (``ContextVarsRuntimeContext``); else (runtime, None, None): an other runtime context,
    or an opentelemetry-api laid out otherwise, is read the public way only."""
    global _otel_source
    variable = getattr(runtime, "_current_context", None)
    key = getattr(sys.modules.get("opentelemetry.trace.propagation"), "_SPAN_KEY", None)
    if (
        type(runtime).__name__ != "ContextVarsRuntimeContext"
        or type(variable) is not contextvars.ContextVar
        or type(key) is not str
    ):
        variable = key = None
    _otel_source = (runtime, variable, key)
    return _otel_source


def carry_context(function: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``function`` to run in a copy of the current context, wherever it is called:
    the IDs, the bound properties and the exception steps of the caller.

    New threads start with an empty context (from Python 3.14 with
    ``-X thread_inherit_context=1``, the starter's IDs but no steps), and
    ``ThreadPoolExecutor`` workers with their own, so what the caller bound is lost there.
    Wrap the target::

        threading.Thread(target=posthog_errors.carry_context(work)).start()
        executor.submit(posthog_errors.carry_context(work), item)
    """
    captured = contextvars.copy_context()

    @functools.wraps(function)
    def run_in_captured_context(*args: P.args, **kwargs: P.kwargs) -> R:
        # A copy per call: one Context cannot be entered by two threads at once.
        result: R = captured.copy().run(_remembering, function, *args, **kwargs)
        return result

    return run_in_captured_context


def _remembering(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function``; an exception escaping it remembers the carried binding, as if it
    had escaped a ``bind()`` block (the thread's excepthook runs outside the carried
    context). The carried steps become this thread's (a trail is per thread)."""
    _steps.adopt()
    try:
        return function(*args, **kwargs)
    except BaseException as exc:
        remember_binding(exc, _binding.get())
        raise


def as_id(value: Any) -> str | None:
    """An id as events carry it: a non-empty bounded string, or None."""
    return _as_id(value)


def _as_id(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        return None
    return text or None
