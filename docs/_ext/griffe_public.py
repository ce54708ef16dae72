"""A griffe extension for the reference page: no private names in signatures.

A default such as ``rate_limit=(_rate_limit.DEFAULT_BURST, _rate_limit.DEFAULT_PER_SECOND)``
would show the reader an internal module. This replaces every reference to a private name
(a dotted path with a part that starts with one underscore) in a parameter's default by the
value it stands for, ``(10, 1.0)``, once the whole package is loaded; the source is left as
it is. Loaded by mkdocs.yml (``extensions:`` of the python handler); not part of the site.
"""

from __future__ import annotations

from typing import Any

import griffe


def is_private(path: str) -> bool:
    """Whether the dotted ``path`` goes through a private name (``_x``, not ``__x__``)."""
    return any(part.startswith("_") and not part.endswith("__") for part in path.split("."))


def public_text(expr: str | griffe.Expr, collection: griffe.ModulesCollection) -> str:
    """``expr`` as source text, each private reference replaced by its value's text."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, (griffe.ExprName, griffe.ExprAttribute)):
        if not is_private(expr.path):
            return str(expr)
        try:
            target = collection.get_member(expr.canonical_path)
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return str(expr)  # unresolvable: left as written
        value = getattr(target, "value", None)
        return str(expr) if value is None else public_text(value, collection)
    return "".join(public_text(part, collection) for part in expr.iterate(flat=False))


def _functions(obj: griffe.Object) -> list[griffe.Function]:
    found: list[griffe.Function] = []
    for member in obj.members.values():
        if member.is_alias:
            continue  # documented where it is defined
        if isinstance(member, griffe.Function):
            found.append(member)
        elif isinstance(member, (griffe.Module, griffe.Class)):
            found.extend(_functions(member))
    return found


class PublicDefaults(griffe.Extension):
    """Rewrites private references in every function's parameter defaults."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for function in _functions(pkg):
            for parameter in function.parameters:
                default = parameter.default
                if isinstance(default, griffe.Expr):
                    text = public_text(default, pkg.modules_collection)
                    if text != str(default):
                        parameter.default = text
