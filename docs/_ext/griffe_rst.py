"""A griffe extension for the reference page: the package's reST-isms as Markdown.

The docstrings are written for ``help()`` and editors, with a little reST: roles
(:class:`PostHogHandler`), ``.. code-block:: python`` and ``Text::`` before a literal block.
mkdocstrings renders docstrings as Markdown, where those would show as raw markup. This
rewrites them, at load time, into code spans and plain literal blocks; the source is left
as it is. Loaded by mkdocs.yml (``extensions:`` of the python handler); not part of the site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :class:`X`, :meth:`~a.b.X`, :py:func:`X` ... -> `X`
_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")
# ".. code-block:: python" (or ".. code::") followed by its indented block -> the block alone
_CODE_BLOCK = re.compile(r"^[ \t]*\.\. code(?:-block)?::[^\n]*\n", re.MULTILINE)
# "Wrap the target::" at the end of a line -> "Wrap the target:"
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles and literal-block markers as Markdown."""
    text = _ROLE.sub(r"`\1`", text)
    text = _CODE_BLOCK.sub("", text)
    return _LITERAL_MARKER.sub(r"\1:", text)


class RstMarkup(griffe.Extension):
    """Rewrites every loaded docstring with :func:`to_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
