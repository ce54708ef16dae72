"""Issue 25, item 4: no two code locations are ever confused.

CPython's code objects compare (and hash) equal when their code is the same, whatever file
they come from: ``co_filename`` is not part of the comparison. Two modules with the same
function at the same line (boilerplate, ``__str__``, view mixins, generated code) then have
equal code objects, and a cache or a key built on them mixes the two up: an event from
``beta_mod.py`` arrived labelled ``alpha_mod.py``. Every test here loads two such modules
and checks that each keeps its own frame, ``in_app`` flag, rate-limit budget and
signal-handler verdict.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import posthog_errors
from posthog_errors import PostHogHandler, _guard, _rate_limit, _reporter
from posthog_errors._frames import FrameBuilder, site_key
from posthog_errors._options import PayloadOptions
from posthog_errors._reporter import Reporter
from posthog_errors.capture_server import CaptureServer

# The same source in both files: equal code objects, at the same line, in two files.
_SOURCE = """
import logging


def render(value):
    raise ValueError(value)


def warn(logger, case):
    logger.error("stock low", extra={"case": case})


def on_signal(signum, frame):
    raise KeyError(signum)
"""


def _load(name: str, path: Path) -> ModuleType:
    path.write_text(_SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[tuple[ModuleType, ModuleType]]:
    """``alpha_mod`` (the app's) and ``beta_mod`` (a library's, under site-packages)."""
    (tmp_path / "app").mkdir()
    (tmp_path / "site-packages").mkdir()
    alpha = _load("alpha_mod", tmp_path / "app" / "alpha_mod.py")
    beta = _load("beta_mod", tmp_path / "site-packages" / "beta_mod.py")
    # The premise: CPython takes these for one code object.
    assert alpha.render.__code__ == beta.render.__code__
    assert hash(alpha.render.__code__) == hash(beta.render.__code__)
    yield alpha, beta
    sys.modules.pop("alpha_mod", None)
    sys.modules.pop("beta_mod", None)


def _raised(function: Any, *args: Any) -> BaseException:
    try:
        function(*args)
    except BaseException as error:
        return error
    raise AssertionError("did not raise")


def _site(properties: dict[str, Any]) -> dict[str, Any]:
    frame: dict[str, Any] = properties["$exception_list"][0]["stacktrace"]["frames"][-1]
    return frame


def test_each_file_keeps_its_own_frame(twins: tuple[ModuleType, ModuleType]) -> None:
    alpha, beta = twins
    # One pure builder (cached per options) for both: alpha's frame is cached first.
    first = _site(posthog_errors.exception_properties(_raised(alpha.render, "a")))
    second = _site(posthog_errors.exception_properties(_raised(beta.render, "b")))
    assert (first["filename"], first["module"]) == ("alpha_mod.py", "alpha_mod")
    assert (second["filename"], second["module"]) == ("beta_mod.py", "beta_mod")
    assert first["abs_path"].endswith("/app/alpha_mod.py")
    assert second["abs_path"].endswith("/site-packages/beta_mod.py")
    assert first["lineno"] == second["lineno"] == 6
    # Each file's own in_app: the app's is, the library's is not.
    assert first["in_app"] is True and second["in_app"] is False


def test_the_frame_builder_keys_by_location(twins: tuple[ModuleType, ModuleType]) -> None:
    alpha, beta = twins
    builder = FrameBuilder(PayloadOptions())
    code_a, code_b = alpha.render.__code__, beta.render.__code__
    frame_a, _ = builder.frame(code_a, 6, "alpha_mod")
    frame_b, _ = builder.frame(code_b, 6, "beta_mod")
    assert frame_a["abs_path"] != frame_b["abs_path"]
    assert builder.in_app_code(code_a, "alpha_mod") is True
    assert builder.in_app_code(code_b, "beta_mod") is False
    # The same location again is a cache hit: the very same dict.
    assert builder.frame(code_a, 6, "alpha_mod")[0] is frame_a
    assert site_key(code_a, 6) != site_key(code_b, 6)


def test_each_file_has_its_own_rate_limit_budget(
    capture_server: CaptureServer, reporter: Reporter, twins: tuple[ModuleType, ModuleType]
) -> None:
    alpha, beta = twins
    errors = [_raised(alpha.render, "a"), _raised(beta.render, "b")]
    assert _reporter._failure_site(errors[0]) != _reporter._failure_site(errors[1])
    _rate_limit.configure((1, 0.0))  # one event per site, never refilled
    for error in errors:
        reporter.capture(error)
    assert posthog_errors.flush(5)
    events = capture_server.wait_for_events(2)
    assert sorted(_site(e["properties"])["filename"] for e in events) == [
        "alpha_mod.py",
        "beta_mod.py",
    ]


def test_log_messages_from_twin_files_keep_their_own_site(
    capture_server: CaptureServer, reporter: Reporter, twins: tuple[ModuleType, ModuleType]
) -> None:
    alpha, beta = twins
    logger = logging.getLogger("twins")
    logger.handlers = [PostHogHandler(reporter=reporter)]
    logger.propagate = False
    try:
        alpha.warn(logger, "alpha")
        beta.warn(logger, "beta")
        assert posthog_errors.flush(5)
        events = capture_server.wait_for_events(2)
    finally:
        logger.handlers = []
        logger.propagate = True
    by_case = {e["properties"]["case"]: _site(e["properties"]) for e in events}
    assert by_case["alpha"]["filename"] == "alpha_mod.py"
    assert by_case["beta"]["filename"] == "beta_mod.py"


def test_an_identical_function_is_not_the_signal_handler(
    twins: tuple[ModuleType, ModuleType],
) -> None:
    alpha, beta = twins
    previous = signal.signal(signal.SIGUSR1, alpha.on_signal)
    try:
        assert _guard.raised_by_signal_handler(_raised(alpha.on_signal, 1, None)) is True
        assert _guard.raised_by_signal_handler(_raised(beta.on_signal, 1, None)) is False
    finally:
        signal.signal(signal.SIGUSR1, previous)
