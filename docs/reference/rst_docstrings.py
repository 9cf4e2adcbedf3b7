"""A griffe extension for the API reference: render the library's reST-flavoured docstrings.

The docstrings use a few reST habits that Markdown shows literally: roles
(``:class:`AvatarIM```), double-backquoted literals and ``::`` before a literal
block.  This rewrites them into Markdown before mkdocstrings parses the docstring;
roles become inline code, never links, so no cross-reference can break the strict build.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["RstDocstrings", "to_markdown"]

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+?)``")
_BLOCK_MARKER = re.compile(r"(?m)^(.*?)(\s?)::$")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # ~a.b.C shows as C
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _block_marker(match: re.Match[str]) -> str:
    text = match.group(1)
    if not text.strip():  # a lone "::" line introduces the block: drop it
        return ""
    return text + ("" if match.group(2) else ":")  # "word::" -> "word:", "word ::" -> "word"


def to_markdown(text: str) -> str:
    """Return *text* with reST literals, roles and literal-block markers made Markdown."""
    text = _LITERAL.sub(r"`\1`", text)
    text = _ROLE.sub(_role, text)
    return _BLOCK_MARKER.sub(_block_marker, text)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring with :func:`to_markdown` as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
