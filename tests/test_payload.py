"""``exception_properties``: the ``$exception`` payload, checked against exception-event.md.

Every payload built here goes through ``tests.conformance.assert_properties_conform`` (see
:func:`build`), and the tests assert concrete values: types, values, order, ids, parent
ids, sources, line numbers and context lines. Sample failing functions live in
``tests/payload_samples.py``; lines the tests look up carry ``# @marker`` comments.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import linecache
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import pytest
from posthog.exception_utils import exceptions_from_error_tuple

from posthog_errors import exception_properties
from tests import payload_samples as samples
from tests.conformance import assert_properties_conform

SAMPLES = samples.__file__
HERE = __file__
REPO_ROOT = str(Path(__file__).resolve().parents[1])
THIS_MODULE = __name__  # "tests.test_payload"
THIS_FILENAME = "tests/test_payload.py"
SAMPLES_FILENAME = "tests/payload_samples.py"
ROOT_MECHANISM = {"type": "generic", "handled": True, "synthetic": False, "exception_id": 0}
needs_groups = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="ExceptionGroup is built in from Python 3.11"
)


# -- helpers ---------------------------------------------------------------------------------


def build(exc: BaseException, **options: Any) -> dict[str, Any]:
    """``exception_properties`` plus the wire-contract check every payload must pass."""
    props = exception_properties(exc, **options)
    assert_properties_conform(props)
    return props


def catch(func: Callable[..., object], *args: object) -> BaseException:
    try:
        func(*args)  # @catch
    except BaseException as exc:
        return exc
    raise AssertionError(f"{func!r} did not raise")


def entries(props: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = props["$exception_list"]
    return result


def frames(entry: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = entry["stacktrace"]["frames"]
    return result


def where(entry: dict[str, Any]) -> list[tuple[str, int | None]]:
    """(function, lineno) per frame, oldest call first."""
    return [(f["function"], f["lineno"]) for f in frames(entry)]


def sample_line(marker: str) -> int:
    return samples.marker_line(marker)


def here_line(marker: str) -> int:
    return samples.marker_line(marker, HERE)


def chain_summary(props: dict[str, Any]) -> list[tuple[str, str, int, int | None, str | None]]:
    """(type, value, exception_id, parent_id, source) per entry."""
    return [
        (
            e["type"],
            e["value"],
            e["mechanism"]["exception_id"],
            e["mechanism"].get("parent_id"),
            e["mechanism"].get("source"),
        )
        for e in entries(props)
    ]


def load_module(name: str, path: Path) -> ModuleType:
    """Import ``path`` as module ``name`` without registering it in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def linked_chain(count: int) -> BaseException:
    """A raised ValueError("0") whose ``__context__`` chain runs "1", "2", ... count-1."""
    chain = [ValueError(str(i)) for i in range(count)]
    for outer, inner in itertools.pairwise(chain):
        outer.__context__ = inner
    return catch(_raise, chain[0])


def _raise(exc: BaseException) -> None:
    raise exc  # @reraise


# -- chains ----------------------------------------------------------------------------------


def test_raise_from_lists_the_cause_after_the_outer_exception() -> None:
    props = build(catch(samples.explicit_cause))

    assert props["$exception_level"] == "error"
    assert "$exception_source" not in props  # a manual capture names no integration
    assert props["$exception_handled"] is True
    outer, cause = entries(props)
    assert (outer["type"], outer["value"], outer["module"]) == ("RuntimeError", "wrapped", None)
    assert outer["mechanism"] == ROOT_MECHANISM
    assert where(outer) == [("catch", here_line("catch")), ("explicit_cause", sample_line("cause"))]
    assert (cause["type"], cause["value"], cause["module"]) == ("KeyError", "'deep'", None)
    assert cause["mechanism"] == {
        "type": "chained",
        "synthetic": False,
        "exception_id": 1,
        "parent_id": 0,
        "source": "cause",
    }
    assert where(cause) == [
        ("explicit_cause", sample_line("cause_call")),
        ("level1", sample_line("level1")),
        ("level2", sample_line("level2")),
        ("level3", sample_line("level3")),
    ]


def test_implicit_context_is_listed_with_source_context() -> None:
    props = build(catch(samples.implicit_context))

    outer, context = entries(props)
    assert (outer["type"], outer["value"]) == ("TypeError", "while handling")
    assert outer["mechanism"] == ROOT_MECHANISM
    assert where(outer)[-1] == ("implicit_context", sample_line("context"))
    assert (context["type"], context["value"]) == ("ValueError", "simple failure")
    assert context["mechanism"] == {
        "type": "chained",
        "synthetic": False,
        "exception_id": 1,
        "parent_id": 0,
        "source": "context",
    }
    assert where(context) == [
        ("implicit_context", sample_line("context_call")),
        ("simple", sample_line("simple")),
    ]
    raise_frame = frames(context)[-1]
    assert raise_frame["context_line"] == '    raise ValueError("simple failure")  # @simple'
    lineno = sample_line("simple")
    assert raise_frame["pre_context"] == [samples.source_line(n) for n in range(lineno - 5, lineno)]
    assert raise_frame["post_context"] == [
        samples.source_line(n) for n in range(lineno + 1, lineno + 6)
    ]


def test_raise_from_none_sends_only_the_outer_exception() -> None:
    exc = catch(samples.suppressed_context)
    assert isinstance(exc.__context__, ValueError)  # the context exists, but is suppressed

    props = build(exc)

    assert chain_summary(props) == [("LookupError", "clean", 0, None, None)]
    assert where(entries(props)[0])[-1] == ("suppressed_context", sample_line("suppressed"))


def test_explicit_cause_wins_over_a_different_context() -> None:
    try:
        try:
            raise OSError("the context")
        except OSError:
            raise RuntimeError("outer") from KeyError("the cause")
    except RuntimeError as exc:
        caught = exc

    props = build(caught)

    assert chain_summary(props) == [
        ("RuntimeError", "outer", 0, None, None),
        ("KeyError", "'the cause'", 1, 0, "cause"),
    ]
    assert "stacktrace" not in entries(props)[1]  # never raised: no stack, not a fake one


def test_chain_of_three_is_outermost_first_with_sequential_ids() -> None:
    try:
        try:
            try:
                raise KeyError("first")
            except KeyError as first:
                raise ValueError("second") from first
        except ValueError:
            raise TypeError("third")  # noqa: B904
    except TypeError as exc:
        caught = exc

    props = build(caught)

    assert chain_summary(props) == [
        ("TypeError", "third", 0, None, None),
        ("ValueError", "second", 1, 0, "context"),
        ("KeyError", "'first'", 2, 1, "cause"),
    ]
    for entry in entries(props)[1:]:
        mechanism = entry["mechanism"]
        assert mechanism["type"] == "chained" and "handled" not in mechanism
        assert mechanism["synthetic"] is False


def test_cycle_in_the_chain_terminates() -> None:
    try:
        try:
            raise ValueError("a")
        except ValueError as a_exc:
            first = a_exc
            raise KeyError("b")  # noqa: B904
    except KeyError as b_exc:
        second = b_exc
    first.__context__ = second  # b -> a -> b -> ...

    props = build(second)

    assert chain_summary(props) == [
        ("KeyError", "'b'", 0, None, None),
        ("ValueError", "a", 1, 0, "context"),
    ]


def test_self_referencing_context_terminates() -> None:
    exc = ValueError("me")
    exc.__context__ = exc
    exc.__cause__ = exc  # also sets __suppress_context__

    props = build(exc)

    assert [e["type"] for e in entries(props)] == ["ValueError"]


def test_chain_of_200_is_capped_at_50_entries() -> None:
    props = build(linked_chain(200))

    summary = chain_summary(props)
    assert len(summary) == 50
    assert summary[0] == ("ValueError", "0", 0, None, None)
    assert summary[1:] == [("ValueError", str(i), i, i - 1, "context") for i in range(1, 50)]
    assert where(entries(props)[0]) == [
        ("catch", here_line("catch")),
        ("_raise", here_line("reraise")),
    ]


class ContextIsNotAnException(Exception):
    @property
    def __context__(self) -> Any:  # type: ignore[override]
        return "not an exception"


def test_non_exception_context_is_ignored() -> None:
    exc = catch(_raise, ContextIsNotAnException("odd"))

    assert chain_summary(build(exc)) == [("ContextIsNotAnException", "odd", 0, None, None)]


# -- exception groups ------------------------------------------------------------------------


@needs_groups
def test_exception_group_members_depth_first() -> None:
    props = build(catch(samples.raise_group))

    assert chain_summary(props) == [
        ("ExceptionGroup", "outer", 0, None, None),
        ("ValueError", "simple failure", 1, 0, "member"),
        ("ExceptionGroup", "inner", 2, 0, "member"),
        ("KeyError", "'k'", 3, 2, "member"),
        ("TypeError", "t", 4, 2, "member"),
        ("OSError", "o", 5, 0, "member"),
    ]
    group, raised, inner, *rest = entries(props)
    assert group["mechanism"] == {**ROOT_MECHANISM, "is_exception_group": True}
    assert inner["mechanism"]["is_exception_group"] is True
    for entry in (raised, *rest):
        assert "is_exception_group" not in entry["mechanism"]
    assert where(group) == [("catch", here_line("catch")), ("raise_group", sample_line("group"))]
    # The member was raised (and caught) inside raise_group: its own traceback.
    assert where(raised) == [
        ("raise_group", sample_line("group_member")),
        ("simple", sample_line("simple")),
    ]
    # Members that were never raised have no stack, and are not given a fake one.
    for entry in (inner, *rest):
        assert "stacktrace" not in entry
        assert entry["mechanism"]["synthetic"] is False


@needs_groups
def test_exception_group_context_comes_before_members() -> None:
    props = build(catch(samples.raise_group_with_context))

    assert chain_summary(props) == [
        ("ExceptionGroup", "grouped", 0, None, None),
        ("ValueError", "simple failure", 1, 0, "context"),
        ("KeyError", "'a'", 2, 0, "member"),
        ("KeyError", "'b'", 3, 0, "member"),
    ]


@needs_groups
def test_member_with_its_own_cause_is_followed_depth_first() -> None:
    first = ValueError("first")
    first.__cause__ = KeyError("why")
    group = samples.ExceptionGroup("g", [first, TypeError("second")])

    props = build(catch(_raise, group))

    assert chain_summary(props) == [
        ("ExceptionGroup", "g", 0, None, None),
        ("ValueError", "first", 1, 0, "member"),
        ("KeyError", "'why'", 2, 1, "cause"),
        ("TypeError", "second", 3, 0, "member"),
    ]


@needs_groups
def test_group_containing_itself_terminates() -> None:
    member = ValueError("m")
    group = samples.ExceptionGroup("loop", [member])
    member.__context__ = group

    props = build(catch(_raise, group))

    assert chain_summary(props) == [
        ("ExceptionGroup", "loop", 0, None, None),
        ("ValueError", "m", 1, 0, "member"),
    ]


@needs_groups
def test_wide_group_is_capped_at_50_entries() -> None:
    group = samples.ExceptionGroup("wide", [ValueError(str(i)) for i in range(120)])

    props = build(catch(_raise, group))

    summary = chain_summary(props)
    assert len(summary) == 50
    assert summary[-1] == ("ValueError", "48", 49, 0, "member")


@needs_groups
def test_group_whose_exceptions_property_raises() -> None:
    class HostileGroup(samples.ExceptionGroup):  # type: ignore[misc]
        @property
        def exceptions(self) -> tuple[BaseException, ...]:
            raise RuntimeError("hostile exceptions property")

    props = build(catch(_raise, HostileGroup("hostile", [ValueError("v")])))

    assert entries(props)[0]["type"].endswith("HostileGroup")


def test_exception_whose_getattribute_raises() -> None:
    class Opaque(Exception):
        def __getattribute__(self, name: str) -> Any:
            raise RuntimeError(f"no {name}")

    props = build(Opaque("opaque"))

    assert entries(props)[0]["type"] == "test_exception_whose_getattribute_raises.<locals>.Opaque"


# -- frames: caps, order ---------------------------------------------------------------------


def _recursion_expectation(exc: BaseException) -> list[tuple[str, int | None]]:
    return [(f.name, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]


def test_deep_recursion_keeps_the_outermost_and_innermost_50_frames() -> None:
    try:
        samples.recurse(500)  # @recursion_call
    except ValueError as exc:
        caught = exc
    full = _recursion_expectation(caught)
    assert len(full) == 502

    props = build(caught)

    (entry,) = entries(props)
    kept = where(entry)
    assert len(kept) == 100
    assert kept == full[:50] + full[-50:]
    assert kept[0] == (
        "test_deep_recursion_keeps_the_outermost_and_innermost_50_frames",
        here_line("recursion_call"),
    )
    assert kept[-1] == ("recurse", sample_line("bottom"))
    assert frames(entry)[-1]["context_line"] == '        raise ValueError("bottom")  # @bottom'
    # The cycle of three call lines shows exactly which frames survived.
    recursion_lines = {sample_line(f"recurse{i}") for i in range(3)}
    assert {lineno for _, lineno in kept[1:-1]} == recursion_lines


@pytest.mark.parametrize(("max_frames", "head", "tail"), [(10, 5, 5), (11, 5, 6), (2, 1, 1)])
def test_custom_max_frames(max_frames: int, head: int, tail: int) -> None:
    try:
        samples.recurse(40)
    except ValueError as exc:
        caught = exc
    full = _recursion_expectation(caught)

    kept = where(entries(build(caught, max_frames=max_frames))[0])

    assert kept == full[:head] + full[-tail:]
    assert kept[0][0] == "test_custom_max_frames"
    assert kept[-1] == ("recurse", sample_line("bottom"))


def test_short_stack_is_not_capped() -> None:
    exc = catch(samples.recurse, 3)

    kept = where(entries(build(exc))[0])

    assert kept == [
        ("catch", here_line("catch")),
        ("recurse", sample_line("recurse0")),
        ("recurse", sample_line("recurse2")),
        ("recurse", sample_line("recurse1")),
        ("recurse", sample_line("bottom")),
    ]


def test_frames_of_every_chained_exception_are_capped() -> None:
    try:
        samples.recurse(300)
    except ValueError as inner:
        try:
            samples.recurse(300)
        except ValueError as outer:
            caught = outer
            assert caught.__context__ is inner

    props = build(caught, max_frames=20)

    assert [len(frames(e)) for e in entries(props)] == [20, 20]


# -- source context --------------------------------------------------------------------------


def test_frame_fields_for_a_package_module() -> None:
    exc = catch(samples.simple)

    (entry,) = entries(build(exc))
    catch_frame, raise_frame = frames(entry)
    lineno = sample_line("simple")
    assert raise_frame == {
        "platform": "python",
        "filename": SAMPLES_FILENAME,
        "abs_path": os.path.abspath(SAMPLES),
        "function": "simple",
        "module": "tests.payload_samples",
        "lineno": lineno,
        "pre_context": [samples.source_line(n) for n in range(lineno - 5, lineno)],
        "context_line": samples.source_line(lineno),
        "post_context": [samples.source_line(n) for n in range(lineno + 1, lineno + 6)],
        "in_app": True,
    }
    assert catch_frame["filename"] == THIS_FILENAME
    assert catch_frame["module"] == THIS_MODULE
    assert catch_frame["context_line"] == "        func(*args)  # @catch"
    assert catch_frame["in_app"] is True


def _long_line_module(tmp_path: Path, name: str) -> ModuleType:
    filler = "x" * 5000
    path = tmp_path / f"{name}.py"
    path.write_text(
        "def fail():\n"
        f"    before = '{filler}'\n"
        f"    raise ValueError('long line')  # {filler}\n"
        f"    after = '{filler}'\n",
        encoding="utf-8",
    )
    return load_module(name, path)


def test_very_long_source_lines_are_truncated_not_nulled(tmp_path: Path) -> None:
    module = _long_line_module(tmp_path, "payload_longline")

    (entry,) = entries(build(catch(module.fail)))

    frame = frames(entry)[-1]
    assert (frame["function"], frame["lineno"]) == ("fail", 3)
    assert frame["filename"] == "payload_longline.py"  # top-level module: basename
    assert frame["abs_path"] == str(tmp_path / "payload_longline.py")
    assert frame["module"] == "payload_longline"
    line = frame["context_line"]
    assert isinstance(line, str)
    assert len(line) == 1000
    assert line.startswith("    raise ValueError('long line')  # xxx")
    assert line.endswith("...")
    assert frame["pre_context"][0] == "def fail():"
    assert len(frame["pre_context"]) == 2 and len(frame["post_context"]) == 1
    for context in (frame["pre_context"][1], frame["post_context"][0]):
        assert len(context) == 1000 and context.endswith("...")
    assert json.dumps(frame)  # still a plain, serialisable frame


def _dive_module(tmp_path: Path, name: str) -> ModuleType:
    """A recursive ``dive(n)`` surrounded by 5,000-character lines (5 of them each side)."""
    filler = "    # " + "y" * 5000 + "\n"
    path = tmp_path / f"{name}.py"
    path.write_text(
        "def dive(n):\n"
        "    if n <= 0:\n"
        f"        raise ValueError('bottom')  # {'b' * 5000}\n"
        + filler * 5
        + f"    return dive(n - 1)  # {'r' * 5000}\n"
        + filler * 5,
        encoding="utf-8",
    )
    return load_module(name, path)


def test_oversized_event_drops_context_lines_first(tmp_path: Path) -> None:
    """100 frames with 11 kB of context each: over the event budget, so contexts go."""
    module = _dive_module(tmp_path, "payload_dive")

    props = build(catch(module.dive, 150))

    (entry,) = entries(props)
    assert len(frames(entry)) == 100
    for frame in frames(entry):
        assert frame["pre_context"] == [] and frame["post_context"] == []
    last = frames(entry)[-1]
    assert last["context_line"] == "        raise ValueError('bottom')  # " + "b" * 959 + "..."
    assert frames(entry)[-2]["context_line"].startswith("    return dive(n - 1)  # rrr")
    assert frames(entry)[0]["function"] == "catch"
    assert len(json.dumps(props).encode()) < 900 * 1024


def test_oversized_chain_is_shrunk_below_the_client_limit(tmp_path: Path) -> None:
    module = _dive_module(tmp_path, "payload_chain_dive")
    previous: BaseException | None = None
    for _ in range(50):
        exc = catch(module.dive, 30)
        exc.__context__ = previous
        previous = exc
    assert previous is not None

    props = build(previous)

    assert len(entries(props)) == 50
    assert len(json.dumps(props).encode()) < 900 * 1024


def test_code_compiled_from_string_has_no_source_but_is_in_app() -> None:
    namespace: dict[str, Any] = {"__name__": "payload_generated"}
    source = "def generated():\n    raise ValueError('from a string')\n"
    exec(compile(source, "<string>", "exec"), namespace)

    (entry,) = entries(build(catch(namespace["generated"])))

    frame = frames(entry)[-1]
    assert frame["filename"] == "<string>"
    assert frame["abs_path"] == "<string>"
    assert (frame["function"], frame["lineno"], frame["module"]) == (
        "generated",
        2,
        "payload_generated",
    )
    assert frame["pre_context"] == [] and frame["post_context"] == []
    assert frame["context_line"] is None
    assert frame["in_app"] is True


def test_source_file_deleted_after_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "payload_deleted.py"
    path.write_text("def fail():\n    raise ValueError('gone')\n", encoding="utf-8")
    module = load_module("payload_deleted", path)
    # Registered, so that linecache falls back to the module's loader (which also fails).
    monkeypatch.setitem(sys.modules, "payload_deleted", module)
    path.unlink()
    linecache.checkcache(str(path))

    (entry,) = entries(build(catch(module.fail)))

    frame = frames(entry)[-1]
    assert (frame["function"], frame["lineno"], frame["filename"]) == (
        "fail",
        2,
        "payload_deleted.py",
    )
    assert frame["context_line"] is None
    assert frame["pre_context"] == [] and frame["post_context"] == []
    assert frame["in_app"] is True


def test_source_file_shortened_after_import(tmp_path: Path) -> None:
    path = tmp_path / "payload_shortened.py"
    path.write_text("\n" * 14 + "def fail():\n    raise ValueError('moved')\n", encoding="utf-8")
    module = load_module("payload_shortened", path)
    exc = catch(module.fail)
    path.write_text("# now two lines\nVALUE = 1\n", encoding="utf-8")
    linecache.checkcache(str(path))

    frame = frames(entries(build(exc))[0])[-1]

    assert (frame["function"], frame["lineno"]) == ("fail", 16)
    assert frame["context_line"] is None
    assert frame["pre_context"] == [] and frame["post_context"] == []


def test_frozen_module_frames_are_not_in_app() -> None:
    """Frozen stdlib frames are the interpreter's. Their source context is what CPython's
    own ``traceback`` shows: none up to 3.13; from 3.14 ``linecache`` reads a frozen stdlib
    module's source from its ``__file__`` (the .py it was frozen from), so its lines."""
    exc = catch(importlib.import_module, "posthog_errors_test_no_such_module")
    assert isinstance(exc, ModuleNotFoundError)

    (entry,) = entries(build(exc))

    assert (entry["type"], entry["module"]) == ("ModuleNotFoundError", None)
    assert entry["value"] == "No module named 'posthog_errors_test_no_such_module'"
    by_file = {f["filename"]: f for f in frames(entry)}
    assert by_file["importlib/__init__.py"]["function"] == "import_module"
    assert by_file["importlib/__init__.py"]["in_app"] is False
    frozen = [f for f in frames(entry) if f["abs_path"].startswith("<frozen ")]
    assert frozen, "expected importlib's frozen frames in the traceback"
    shown = {  # (lineno, line) as the interpreter's traceback shows them
        (summary.lineno, summary.line)
        for summary in traceback.extract_tb(exc.__traceback__)
        if summary.filename.startswith("<frozen ")
    }
    for frame in frozen:
        assert frame["filename"] == frame["abs_path"] == "<frozen importlib._bootstrap>"
        assert frame["module"] == "importlib._bootstrap"
        assert frame["in_app"] is False
        assert isinstance(frame["lineno"], int)
        assert (frame["lineno"], (frame["context_line"] or "").strip()) in shown
        if frame["context_line"] is None:
            assert frame["pre_context"] == [] and frame["post_context"] == []
    source = getattr(sys.modules["importlib._bootstrap"], "__file__", None)
    if sys.version_info >= (3, 14) and source and os.path.exists(source):
        assert "raise ModuleNotFoundError" in (frozen[-1]["context_line"] or "")
        assert len(frozen[-1]["pre_context"]) == len(frozen[-1]["post_context"]) == 5
    elif sys.version_info < (3, 14):
        assert all(f["context_line"] is None for f in frozen)
    assert frames(entry)[0]["in_app"] is True  # catch() in this file


# -- in_app ----------------------------------------------------------------------------------


def _in_app_by_function(exc: BaseException, **options: Any) -> list[tuple[str, str, bool]]:
    return [
        (f["filename"], f["function"], f["in_app"])
        for f in frames(entries(build(exc, **options))[0])
    ]


JSON_FRAMES_DEFAULT = [
    (THIS_FILENAME, "catch", True),
    (SAMPLES_FILENAME, "stdlib_failure", True),
    ("json/__init__.py", "loads", False),
    ("json/decoder.py", "decode", False),
    ("json/decoder.py", "raw_decode", False),
]


def test_stdlib_frames_are_not_in_app() -> None:
    exc = catch(samples.stdlib_failure)

    props = build(exc)

    (entry,) = entries(props)
    assert (entry["type"], entry["module"]) == ("JSONDecodeError", "json.decoder")
    assert entry["value"] == (
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert _in_app_by_function(exc) == JSON_FRAMES_DEFAULT
    assert [f["module"] for f in frames(entry)] == [
        THIS_MODULE,
        "tests.payload_samples",
        "json",
        "json.decoder",
        "json.decoder",
    ]
    assert frames(entry)[1]["lineno"] == sample_line("json")


def test_top_level_stdlib_module_uses_its_basename() -> None:
    exc = catch(samples.top_level_stdlib_failure)

    last = frames(entries(build(exc))[0])[-1]

    assert (last["filename"], last["module"], last["function"]) == (
        "textwrap.py",
        "textwrap",
        "dedent",
    )
    assert last["in_app"] is False
    assert last["abs_path"].endswith(os.path.join("", "textwrap.py"))


def test_site_packages_frames_are_not_in_app() -> None:
    exc = catch(samples.site_packages_failure)

    props = build(exc)

    outer = entries(props)[0]
    assert (outer["type"], outer["module"]) == ("InvalidURL", "requests.exceptions")
    outer_frames = frames(outer)
    assert [f["in_app"] for f in outer_frames[:2]] == [True, True]
    assert outer_frames[1]["lineno"] == sample_line("requests")
    library = outer_frames[2:]
    assert library
    for frame in library:
        assert frame["filename"] == "requests/models.py"
        assert frame["module"] == "requests.models"
        assert frame["in_app"] is False
    # Also not in-app when the virtualenv lives under the project root.
    for frame in frames(entries(build(exc, project_root=REPO_ROOT))[0])[2:]:
        assert frame["in_app"] is False
    assert [f["in_app"] for f in frames(entries(build(exc, in_app_include=["requests"]))[0])] == [
        True
    ] * len(outer_frames)


def test_in_app_include_marks_stdlib_frames_in_app() -> None:
    exc = catch(samples.stdlib_failure)

    assert _in_app_by_function(exc, in_app_include=["json"]) == [
        (filename, function, True) for filename, function, _ in JSON_FRAMES_DEFAULT
    ]
    # A prefix matches whole module-name components only.
    assert _in_app_by_function(exc, in_app_include=["js"]) == JSON_FRAMES_DEFAULT
    assert _in_app_by_function(exc, in_app_include=["json.decoder"]) == [
        (THIS_FILENAME, "catch", True),
        (SAMPLES_FILENAME, "stdlib_failure", True),
        ("json/__init__.py", "loads", False),
        ("json/decoder.py", "decode", True),
        ("json/decoder.py", "raw_decode", True),
    ]


def test_in_app_exclude_marks_own_frames_not_in_app() -> None:
    exc = catch(samples.stdlib_failure)

    assert [flag for _, _, flag in _in_app_by_function(exc, in_app_exclude=["tests"])] == [
        False
    ] * 5
    assert [
        flag for _, _, flag in _in_app_by_function(exc, in_app_exclude=["tests.payload_samples"])
    ] == [True, False, False, False, False]
    # include wins over exclude
    assert [
        flag
        for _, _, flag in _in_app_by_function(
            exc, in_app_include=["tests.payload_samples"], in_app_exclude=["tests"]
        )
    ] == [False, True, False, False, False]


def test_project_root_limits_in_app_to_that_directory(tmp_path: Path) -> None:
    exc = catch(samples.stdlib_failure)

    elsewhere = _in_app_by_function(exc, project_root=str(tmp_path))
    assert [flag for _, _, flag in elsewhere] == [False] * 5

    at_repo = _in_app_by_function(exc, project_root=REPO_ROOT)
    assert at_repo == JSON_FRAMES_DEFAULT
    assert _in_app_by_function(exc, project_root=Path(REPO_ROOT) / "tests") == JSON_FRAMES_DEFAULT
    # A sibling directory sharing the prefix is not "under" the root.
    assert [flag for _, _, flag in _in_app_by_function(exc, project_root=REPO_ROOT + "/te")] == [
        False
    ] * 5


def test_in_app_include_given_as_a_plain_string() -> None:
    exc = catch(samples.stdlib_failure)
    try:
        flags = [flag for _, _, flag in _in_app_by_function(exc, in_app_include="json")]
    except (TypeError, ValueError):
        return  # rejecting a bare string would be fine too
    assert flags == [True] * 5


# -- hostile exceptions ----------------------------------------------------------------------


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class StrReturnsInt(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class StrAndReprRaise(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize("cls", [StrRaises, StrReturnsInt, StrAndReprRaise])
def test_broken_str_falls_back_to_a_placeholder(cls: type[Exception]) -> None:
    exc = catch(_raise, cls("hidden"))

    (entry,) = entries(build(exc))

    assert entry["type"] == cls.__qualname__
    assert entry["module"] == THIS_MODULE
    assert re.fullmatch(
        rf"<exception str\(\) failed: <{re.escape(THIS_MODULE)}\.{cls.__qualname__} "
        r"object at 0x[0-9a-f]+>>",
        entry["value"],
    ), entry["value"]
    assert where(entry)[-1] == ("_raise", here_line("reraise"))


def test_huge_message_is_capped() -> None:
    exc = catch(_raise, ValueError("m" * 1_000_000))

    props = build(exc)

    value = entries(props)[0]["value"]
    # The server's limit: 10,000 UTF-8 bytes.
    assert value == "m" * 9997 + "..."
    assert len(json.dumps(props)) < 22_000


def test_lone_surrogate_in_message_is_made_encodable() -> None:
    exc = catch(_raise, ValueError("bad \ud800 text"))

    value = entries(build(exc))[0]["value"]

    value.encode("utf-8")
    assert value == "bad ? text"


def test_lone_surrogates_in_code_names_are_made_encodable() -> None:
    code = _raise.__code__.replace(
        co_name="bad\udcffname", co_filename="/nonexistent/dir\udcff/payload_surrogate.py"
    )
    func = FunctionType(code, {"__name__": "payload_surrogate"})
    exc = catch(func, ValueError("x"))

    frame = frames(entries(build(exc))[0])[-1]

    assert frame["function"] == "bad?name"
    assert frame["filename"] == "payload_surrogate.py"
    assert frame["abs_path"] == "/nonexistent/dir?/payload_surrogate.py"
    assert frame["context_line"] is None


def _exception_class(module: object) -> type[Exception]:
    cls = type("Weird", (Exception,), {})
    cls.__module__ = module  # type: ignore[assignment]
    return cls


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("builtins", None),
        ("__builtins__", None),
        ("", None),
        (42, None),
        (None, None),
        ("my.package.errors", "my.package.errors"),
    ],
)
def test_exception_class_module(module: object, expected: str | None) -> None:
    entry = entries(build(catch(_raise, _exception_class(module)("w"))))[0]

    assert entry["type"] == "Weird"
    assert entry["module"] == expected


class HostileCause(Exception):
    """``raise X from Y`` style (suppressed context), with a ``__cause__`` that raises."""

    @property
    def __cause__(self) -> BaseException | None:  # type: ignore[override]
        raise RuntimeError("hostile __cause__")

    @property
    def __suppress_context__(self) -> bool:  # type: ignore[override]
        return True


class HostileContext(Exception):
    @property
    def __context__(self) -> BaseException | None:  # type: ignore[override]
        raise RuntimeError("hostile __context__")


class HostileSuppress(Exception):
    @property
    def __suppress_context__(self) -> bool:  # type: ignore[override]
        raise RuntimeError("hostile __suppress_context__")


@pytest.mark.parametrize("cls", [HostileCause, HostileContext, HostileSuppress])
def test_chain_attributes_that_raise_end_the_chain(cls: type[Exception]) -> None:
    exc = catch(_raise, cls("hostile"))

    props = build(exc)

    assert chain_summary(props) == [(cls.__qualname__, "hostile", 0, None, None)]
    assert where(entries(props)[0])[-1] == ("_raise", here_line("reraise"))


def test_traceback_attribute_that_raises_gives_a_synthetic_stack() -> None:
    class HostileTraceback(Exception):
        @property
        def __traceback__(self) -> Any:  # type: ignore[override]
            raise RuntimeError("hostile __traceback__")

    entry = entries(build(HostileTraceback("t")))[0]

    assert entry["mechanism"]["synthetic"] is True
    assert [f["function"] for f in frames(entry)[-2:]] == [
        "test_traceback_attribute_that_raises_gives_a_synthetic_stack",
        "build",
    ]


class EvilStr(str):
    """A str subclass whose methods raise: ``str(exc)`` passes it through unchanged."""

    def __len__(self) -> int:
        raise RuntimeError("hostile len")

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("hostile encode")


class StrReturnsEvilStr(Exception):
    def __str__(self) -> str:
        return EvilStr("evil text")


def test_str_returning_a_hostile_str_subclass() -> None:
    exc = catch(_raise, StrReturnsEvilStr())
    assert type(str(exc)) is EvilStr

    entry = entries(build(exc))[0]

    assert entry["value"] == "evil text"
    assert type(entry["value"]) is str


def test_metaclass_module_property_that_raises() -> None:
    class Meta(type):
        @property
        def __module__(cls) -> str:  # type: ignore[override]
            raise RuntimeError("hostile __module__")

    class Odd(Exception, metaclass=Meta):
        pass

    entry = entries(build(catch(_raise, Odd("odd"))))[0]

    assert entry["module"] is None
    assert entry["value"] == "odd"


# -- never raised ----------------------------------------------------------------------------


def test_never_raised_exception_gets_a_synthetic_call_site_stack() -> None:
    props = exception_properties(ValueError("x"))  # @never_raised
    assert_properties_conform(props)

    (entry,) = entries(props)
    assert (entry["type"], entry["value"]) == ("ValueError", "x")
    assert entry["mechanism"] == {**ROOT_MECHANISM, "synthetic": True}
    stack = frames(entry)
    assert 1 < len(stack) <= 100
    last = stack[-1]
    assert (last["function"], last["lineno"]) == (
        "test_never_raised_exception_gets_a_synthetic_call_site_stack",
        here_line("never_raised"),
    )
    assert (
        last["context_line"] == '    props = exception_properties(ValueError("x"))  # @never_raised'
    )
    assert last["in_app"] is True
    # None of the library's own frames, and pytest's machinery is not in-app.
    assert not any((f["module"] or "").startswith("posthog_errors") for f in stack)
    assert any(f["module"] == "_pytest.python" and f["in_app"] is False for f in stack)


def test_never_raised_exception_respects_max_frames() -> None:
    stack = frames(entries(build(ValueError("x"), max_frames=4))[0])

    assert len(stack) == 4
    assert stack[-1]["function"] == "build"
    assert stack[-2]["function"] == "test_never_raised_exception_respects_max_frames"


def test_never_raised_exception_with_a_raised_cause() -> None:
    cause = catch(samples.simple)
    exc = RuntimeError("wrapper")
    exc.__cause__ = cause

    props = build(exc)

    root, chained = entries(props)
    assert root["mechanism"]["synthetic"] is True
    assert chained["mechanism"] == {
        "type": "chained",
        "synthetic": False,
        "exception_id": 1,
        "parent_id": 0,
        "source": "cause",
    }
    assert where(chained) == [("catch", here_line("catch")), ("simple", sample_line("simple"))]


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["fatal", "error", "warning", "log", "info", "debug"])
def test_levels(level: str) -> None:
    assert build(catch(samples.simple), level=level)["$exception_level"] == level


def test_handled_mechanism_and_source_options() -> None:
    props = build(
        catch(samples.implicit_context),
        handled=False,
        mechanism="onuncaughtexception",
        source="python.sys_excepthook",
        level="fatal",
    )

    assert props["$exception_handled"] is False
    assert props["$exception_source"] == "python.sys_excepthook"
    assert props["$exception_level"] == "fatal"
    root, chained = entries(props)
    assert root["mechanism"] == {
        "type": "onuncaughtexception",
        "handled": False,
        "synthetic": False,
        "exception_id": 0,
    }
    assert chained["mechanism"]["type"] == "chained"
    assert "handled" not in chained["mechanism"]
    assert "$exception_fingerprint" not in props


def test_bad_level_names_the_accepted_levels() -> None:
    with pytest.raises(ValueError, match="fatal, error, warning, log, info, debug") as info:
        exception_properties(ValueError("x"), level="nope")
    assert "'nope'" in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"in_app_include": [""]},
        {"in_app_include": [".relative"]},
        {"in_app_exclude": [""]},
        {"max_frames": 0},
        {"max_frames": 1},
        {"max_frames": -5},
        {"max_frames": True},
    ],
)
def test_bad_options_raise_value_error(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        exception_properties(ValueError("x"), **options)


@pytest.mark.parametrize("value", ["not an exception", ValueError, None, 42])
def test_non_exception_argument_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="takes an exception"):
        exception_properties(value)  # type: ignore[arg-type]


def test_project_root_must_be_a_path() -> None:
    with pytest.raises(TypeError, match="project_root"):
        exception_properties(ValueError("x"), project_root=42)  # type: ignore[arg-type]


def test_mutating_a_returned_payload_does_not_leak_into_later_payloads(tmp_path: Path) -> None:
    # A function of its own: while the bug exists, the mutation poisons the frame cache
    # for this code object only, not for the other tests.
    path = tmp_path / "payload_mutated.py"
    path.write_text("\n\ndef fail():\n    raise ValueError('m')\n\n", encoding="utf-8")
    exc = catch(load_module("payload_mutated", path).fail)
    first = frames(entries(build(exc))[0])[-1]
    original = dict(first, pre_context=list(first["pre_context"]))
    assert original["context_line"] == "    raise ValueError('m')"

    first["context_line"] = "<scrubbed>"
    first["pre_context"].clear()
    first["in_app"] = False

    again = frames(entries(build(exc))[0])[-1]
    assert again == original


def test_payload_is_deterministic() -> None:
    exc = catch(samples.explicit_cause)

    assert build(exc) == build(exc)
    assert json.dumps(build(exc), sort_keys=True) == json.dumps(build(exc), sort_keys=True)


# -- posthog-python parity -------------------------------------------------------------------


def _as_text(value: object) -> object:
    """posthog-python may wrap long strings in AnnotatedValue; compare as plain strings."""
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    if value is None or isinstance(value, (int, str)):
        return value
    return str(getattr(value, "value", value))


PARITY_FRAME_KEYS = (
    "platform",
    "filename",
    "abs_path",
    "function",
    "module",
    "lineno",
    "pre_context",
    "context_line",
    "post_context",
)

PARITY_CASES: list[Any] = [
    pytest.param(lambda: catch(samples.simple), id="simple"),
    pytest.param(lambda: catch(samples.level1), id="three-deep"),
    pytest.param(lambda: catch(samples.explicit_cause), id="raise-from"),
    pytest.param(lambda: catch(samples.implicit_context), id="context"),
    pytest.param(lambda: catch(samples.suppressed_context), id="from-none"),
    pytest.param(lambda: catch(samples.stdlib_failure), id="stdlib"),
    pytest.param(lambda: catch(samples.site_packages_failure), id="site-packages"),
    pytest.param(lambda: catch(samples.recurse, 7), id="recursion"),
    pytest.param(lambda: linked_chain(60), id="long-chain"),
    pytest.param(lambda: catch(samples.raise_group), id="group", marks=needs_groups),
    pytest.param(
        lambda: catch(samples.raise_group_with_context), id="group-context", marks=needs_groups
    ),
]


@pytest.mark.parametrize("make", PARITY_CASES)
def test_matches_posthog_python(make: Callable[[], BaseException]) -> None:
    exc = make()
    theirs = exceptions_from_error_tuple((type(exc), exc, exc.__traceback__))
    ours = entries(build(exc))

    assert len(ours) == len(theirs)
    for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        label = f"entry {index}"
        for key in ("type", "module"):
            assert mine[key] == reference[key], (label, key)
        # An exception group's value is its bare ``message``, as posthog-python sends it
        # (``str()`` adds " (N sub-exceptions)").
        assert mine["value"] == reference["value"], label
        for key in ("type", "handled", "exception_id", "parent_id", "source", "is_exception_group"):
            assert mine["mechanism"].get(key) == reference["mechanism"].get(key), (label, key)
        assert ("stacktrace" in mine) == ("stacktrace" in reference), label
        if "stacktrace" not in reference:
            continue
        my_frames = frames(mine)
        their_frames = reference["stacktrace"]["frames"]
        assert len(my_frames) == len(their_frames), label
        for position, (mine_frame, their_frame) in enumerate(
            zip(my_frames, their_frames, strict=True)
        ):
            for key in PARITY_FRAME_KEYS:
                expected = _as_text(their_frame[key])
                if key == "filename" and expected == "__init__.py":
                    # posthog-python gives a package's __init__ its bare basename; the
                    # spec wants the import-root-relative path (json/__init__.py).
                    expected = "/".join([*mine_frame["module"].split("."), "__init__.py"])
                assert mine_frame[key] == expected, (label, position, key)
