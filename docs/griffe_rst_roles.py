"""Griffe extension: the docstrings' reST roles as cross-references the build checks.

The docstrings of ``blazen_peer`` write references the Sphinx way (``:class:`PeerPool```,
``:meth:`connect```, ``:meth:`PeerClient.parent_run```), resolved from where they are
written. This turns each into a Markdown cross-reference to the object's full path
(``[`connect()`][blazen_peer.client.PeerClient.connect]``), so it renders as a link, and
a reference to nothing is an "unresolved cross-reference" warning: an error in
``mkdocs build --strict``. ``~`` shows the last name only, ``!`` renders the text without
a link, ``text <target>`` sets the text, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|mod|data|obj):`([^`]+)`")
EXPLICIT_TITLE = re.compile(r"^(.+?)\s*<(.+)>$")
CALLABLE_ROLES = {"meth", "func"}
LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as written in the docstring of ``obj``; ``target``
    itself when nothing by that name is in scope (the build then reports it)."""
    first, _, rest = target.partition(".")
    # A method's docstring names its siblings (`:meth:`close``) from the class.
    scopes = [obj] if obj.is_class or obj.is_module else []
    scopes.append(obj.parent if obj.parent is not None else obj)
    for scope in scopes:
        try:
            resolved = scope.resolve(first)
        except griffe.NameResolutionError:
            continue
        return f"{resolved}.{rest}" if rest else resolved
    return target


def _markdown(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        role, content = match[1], match[2].strip()
        explicit = EXPLICIT_TITLE.match(content)
        if explicit:
            title, target = explicit[1], explicit[2]
        else:
            target = content.lstrip("~!")
            title = target.rsplit(".", 1)[-1] if content.startswith("~") else target
            if role in CALLABLE_ROLES:
                title += "()"
        if content.startswith("!"):
            return f"`{title}`"
        return f"[`{title}`][{_resolve(obj, target)}]"

    # "text::" before an indented literal block is "text:" (the block is code in both).
    return LITERAL_MARKER.sub(r"\1:", ROLE.sub(link, text))


def _walk(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _markdown(obj, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member)  # type: ignore[arg-type]


class RstRoles(griffe.Extension):
    """Rewrites the reST roles of every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg)
