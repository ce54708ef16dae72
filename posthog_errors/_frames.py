"""Turning a frame reference into a PostHog frame dict, cached per code location.

A frame dict depends only on the code's file and function, the line number, the module
name and the options, so it is built once per such location and reused: the second
failure at the same site costs a dict lookup.

**Keys are locations, never code objects.** CPython's code objects compare (and hash)
equal when their code is the same, whatever file they come from: ``co_filename`` is not
part of the comparison. Two modules with the same function at the same line (boilerplate,
``__str__``, view mixins, generated code) have equal code objects, so a cache keyed by
code object would label an event from ``beta_mod.py`` with ``alpha_mod.py``'s frame. Every
cache here, and every site key elsewhere (:func:`site_key`), is keyed by the location's
text instead. Source lines come
from :mod:`linecache` (read and split once per file, shared with :mod:`traceback`), not from
``loader.get_source()`` per frame, which is where posthog-python spends half its time.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import sys
import sysconfig
import threading
from types import CodeType
from typing import Any

from posthog_errors._options import PayloadOptions
from posthog_errors._redact import CHUNK

__all__ = ["FrameBuilder", "safe_text", "site_key"]

_OWN_PACKAGE = __name__.partition(".")[0]
_EXTERNAL_PATH = re.compile(r"[\\/](?:site|dist)-packages[\\/]")
_CACHE_LIMIT = 4096
_SOURCE_FILES = 256  # files whose prepared source lines are kept
# Pseudo-files that are the user's own code typed or generated at run time.
_USER_PSEUDO_FILES = ("<string>", "<stdin>", "<console>", "<input>")


def _stdlib_prefixes() -> tuple[str, ...]:
    paths = {os.path.dirname(os.__file__)}
    for name in ("stdlib", "platstdlib"):
        with contextlib.suppress(Exception):
            paths.add(sysconfig.get_path(name))
    for prefix in {sys.base_prefix, sys.base_exec_prefix}:
        paths.add(os.path.join(prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
    return tuple(sorted(os.path.abspath(p).rstrip(os.sep) + os.sep for p in paths if p))


_STDLIB_PREFIXES = _stdlib_prefixes()

# (co_filename, co_name, line, module name): everything a frame dict is built from.
_FrameKey = tuple[str, str, "int | None", "str | None"]
_Texts = tuple[list[str], "list[str | None]", "list[str | None]", bytearray]


def site_key(code: CodeType, lineno: int | None) -> tuple[str, str, int, int | None]:
    """What tells one code location from every other: file, qualified name (the plain
    name before Python 3.11, or for a stand-in code object), first line and line.

    For keys that must never confuse two locations (rate limiting's failure site): the
    code object itself would, as it compares equal to another file's identical code.
    Strings and ints only, so a key keeps no code object (nor its module) alive.
    """
    name = getattr(code, "co_qualname", None) or code.co_name
    return (code.co_filename, name, getattr(code, "co_firstlineno", 0), lineno)


def safe_text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters and made encodable as UTF-8.

    Lone surrogates (from ``surrogateescape`` file names, hostile messages) would make the
    JSON unreadable to PostHog's ingestion, so they are replaced. A ``str`` subclass (from a
    hostile ``__str__``) is turned into a plain ``str`` first, so none of its methods run.
    """
    if type(value) is not str:
        value = str.__str__(value)
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


class FrameBuilder:
    """Builds (and caches) frame dicts for one set of :class:`PayloadOptions`."""

    def __init__(self, options: PayloadOptions) -> None:
        self.options = options
        # (file, function, line, module) -> (frame dict, approximate JSON size): exactly
        # what ``_build`` reads, never the code object (see the module's docstring).
        # Entries are shared between events and must be treated as read-only.
        self._cache: dict[_FrameKey, tuple[dict[str, Any], int]] = {}
        # (file, module) -> in_app: what ``_classify`` reads.
        self._in_app_cache: dict[tuple[str, str | None], bool] = {}
        # (file, module) -> the frame's location fields (filename, abs_path, module, in_app)
        # and their size: the same for every frame of a file.
        self._places: dict[tuple[str, str | None], tuple[str, str | None, str | None, bool, int]]
        self._places = {}
        # file -> (linecache's lines of it, each line as sent when its window is clean, and
        # when it is checked line by line, None until a frame needs it; the redaction
        # verdict of each chunk of lines, 0 until needed): a line shared by several frames'
        # context is stripped, redacted and made encodable once. Kept while linecache
        # keeps the same list.
        self._texts: dict[str, _Texts] = {}
        self._lock = threading.RLock()  # C-level, re-entrant: a signal handler may capture here

    def frame(
        self, code: CodeType, lineno: int | None, module: object
    ) -> tuple[dict[str, Any], int]:
        name = module if isinstance(module, str) else None
        key = (code.co_filename, code.co_name, lineno, name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        built = self._build(code, lineno, name)
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = built
        return built

    def _build(
        self, code: CodeType, lineno: int | None, module: str | None
    ) -> tuple[dict[str, Any], int]:
        limit = self.options.max_line_length
        raw_path = code.co_filename if isinstance(code.co_filename, str) else ""
        place = self._places.get((raw_path, module))
        if place is None:
            place = self._place(code, raw_path, module)
        filename, abs_path, module_text, in_app, size = place
        if not isinstance(lineno, int) or lineno < 1:
            lineno = None
        pre, line, post = self._source_context(raw_path, lineno, module)
        function = safe_text(code.co_name or "<unknown>", limit)
        frame: dict[str, Any] = {
            "platform": "python",
            "filename": filename,
            "abs_path": abs_path,
            "function": function,
            "module": module_text,
            "lineno": lineno,
            "pre_context": pre,
            "context_line": line,
            "post_context": post,
            "in_app": in_app,
        }
        # Characters, with a per-frame allowance for the JSON around them: the payload
        # turns it into a bound in bytes (see ``_payload``), so every text field counts.
        size += len(function) + sum(map(len, pre)) + sum(map(len, post)) + len(line or "")
        return frame, size

    def _place(
        self, code: CodeType, raw_path: str, module: str | None
    ) -> tuple[str, str | None, str | None, bool, int]:
        """A frame's location fields, which depend on its file and module alone."""
        limit = self.options.max_line_length
        is_pseudo = raw_path.startswith("<") and raw_path.endswith(">")
        abs_path = raw_path if is_pseudo or not raw_path else os.path.abspath(raw_path)
        filename = safe_text(_relative_filename(abs_path, module) or "<unknown>", limit)
        abs_text = safe_text(abs_path, limit) if abs_path else None
        module_text = safe_text(module, limit) if module else None
        in_app = self.in_app(code, abs_path, module)
        size = 160 + len(filename) + len(abs_text or "") + len(module_text or "")
        place = (filename, abs_text, module_text, in_app, size)
        with self._lock:
            if len(self._places) >= _CACHE_LIMIT:
                self._places.clear()
            self._places[(raw_path, module)] = place
        return place

    def _source_context(
        self, path: str, lineno: int | None, module: str | None
    ) -> tuple[list[str], str | None, list[str]]:
        if lineno is None or not path:
            return [], None, []
        try:
            # What linecache.getlines() returns for a file it holds, without asking the
            # file system whether it exists (a stat per frame) first.
            entry = linecache.cache.get(path)
            if entry is not None and len(entry) != 1:
                lines = entry[2]
            else:
                lines = linecache.getlines(path)
                if not lines and module:
                    # Zip imports and the like (no such file): linecache asks the module's
                    # loader.
                    loaded = sys.modules.get(module)
                    module_globals = getattr(loaded, "__dict__", None)
                    if module_globals is not None:
                        lines = linecache.getlines(path, module_globals)
        except Exception:
            return [], None, []
        index = lineno - 1
        if index >= len(lines):
            # The file changed (or is not the code that ran): no context rather than wrong.
            return [], None, []
        options = self.options
        n, limit = options.context_lines, options.max_line_length
        first = index - n if index > n else 0
        end = min(index + 1 + n, len(lines))
        texts = self._texts.get(path)
        if texts is None or texts[0] is not lines:
            texts = self._new_texts(path, lines)
        # Source lines too can hold credentials (a hard-coded DSN); each is redacted before
        # the cut (see ``_redact``), so a token crossing it is filtered whole. The file is
        # checked a chunk at a time, each chunk once: a window touching a suspect chunk has
        # each of its lines checked, as ``Redactor.source_lines`` does.
        checked = False
        if options.redact_secrets:
            verdicts = texts[3]
            for chunk in range(first // CHUNK, (end - 1) // CHUNK + 1):
                verdict = verdicts[chunk]
                if verdict == 0:
                    block = lines[chunk * CHUNK : (chunk + 1) * CHUNK]
                    verdict = 2 if options.redactor.chunk_suspect(block, limit) else 1
                    verdicts[chunk] = verdict
                if verdict == 2:
                    checked = True
        sent = texts[2] if checked else texts[1]
        pre, line, post = sent[first:index], sent[index], sent[index + 1 : end]
        if line is None or None in pre or None in post:
            if checked:
                for i in range(first, end):
                    if sent[i] is None:
                        text = options.redactor.checked_line(lines[i].rstrip("\r\n"), limit)
                        sent[i] = safe_text(text, limit)
            else:
                _prepare_chunks(lines, sent, first, end, limit)
            pre, line, post = sent[first:index], sent[index], sent[index + 1 : end]
        return pre, line, post  # type: ignore[return-value]

    def _new_texts(self, path: str, lines: list[str]) -> _Texts:
        count = len(lines)
        texts: _Texts = (lines, [None] * count, [None] * count, bytearray(-(-count // CHUNK)))
        with self._lock:
            if len(self._texts) >= _SOURCE_FILES:
                self._texts.clear()
            self._texts[path] = texts
        return texts

    def in_app_code(self, code: CodeType, module: object) -> bool:
        """``in_app`` from the code object alone (for the caller's thread: cached)."""
        cached = self._in_app_cache.get(
            (code.co_filename, module if isinstance(module, str) else None)
        )
        if cached is not None:
            return cached
        raw_path = code.co_filename if isinstance(code.co_filename, str) else ""
        is_pseudo = raw_path.startswith("<") and raw_path.endswith(">")
        abs_path = raw_path if is_pseudo or not raw_path else os.path.abspath(raw_path)
        return self.in_app(code, abs_path, module if isinstance(module, str) else None)

    def in_app(self, code: CodeType, abs_path: str, module: str | None) -> bool:
        key = (code.co_filename, module)
        cached = self._in_app_cache.get(key)
        if cached is None:
            cached = self._classify(abs_path, module)
            self._in_app_cache[key] = cached
            if len(self._in_app_cache) > _CACHE_LIMIT:
                self._in_app_cache.clear()
        return cached

    def _classify(self, abs_path: str, module: str | None) -> bool:
        options = self.options
        if module is not None:
            if _module_matches(module, options.in_app_include):
                return True
            if _module_matches(module, options.in_app_exclude):
                return False
            if _module_matches(module, (_OWN_PACKAGE,)):
                return False
        if not abs_path:
            return False
        if abs_path.startswith("<"):
            # <frozen importlib._bootstrap> is the interpreter's; <string>/<stdin> are the user's.
            return abs_path in _USER_PSEUDO_FILES
        if _EXTERNAL_PATH.search(abs_path) or abs_path.startswith(_STDLIB_PREFIXES):
            return False
        if options.project_root is not None:
            return abs_path.startswith(options.project_root)
        return True


def _prepare_chunks(
    lines: list[str], sent: list[str | None], first: int, end: int, limit: int
) -> None:
    """Fill ``sent`` with the lines as sent (line end stripped, :func:`safe_text`) for
    every chunk of ``CHUNK`` lines that ``[first, end)`` touches, a whole chunk at a time:
    a chunk whose lines are all short and encodable (the usual case) is checked at once."""
    for chunk in range(first // CHUNK, (end - 1) // CHUNK + 1):
        low = chunk * CHUNK
        if sent[low] is not None:
            continue  # filled whole before
        stripped = [text.rstrip("\r\n") for text in lines[low : low + CHUNK]]
        if max(map(len, stripped)) > limit or not _encodable("\n".join(stripped)):
            stripped = [safe_text(text, limit) for text in stripped]
        sent[low : low + len(stripped)] = stripped


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _module_matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _relative_filename(abs_path: str, module: str | None) -> str:
    """``posthog/contexts.py`` for package modules, the basename for top-level ones."""
    if not abs_path or abs_path.startswith("<"):
        return abs_path
    parts = abs_path.replace("\\", "/").split("/")
    if not module or module == "__main__":
        return parts[-1]
    depth = module.count(".") + 1
    if parts[-1].startswith("__init__."):
        depth += 1
    elif depth == 1:
        return parts[-1]
    return "/".join(parts[-depth:])
