"""Griffe extensions for the API reference: Markdown from convsim's docstrings, help for config fields.

``RstToMarkdown``: the reStructuredText markup of the docstrings, rewritten as Markdown.

The docstrings are Google style with a few reStructuredText constructs (they also read well in
``help()``). mkdocstrings renders Markdown, so before a docstring is parsed:

* ``.. math::`` and its indented block become a display block ``$$ ... $$`` (pymdownx.arithmatex);
* ``:math:`x``` becomes inline math ``\\(x\\)``;
* ``:func:`~a.b.c``` and the other cross-reference roles become a code span (``c``; the full
  path without ``~``);
* a paragraph ending in ``::`` (a literal block follows) ends in ``:``;
* the section title ``Example:`` becomes ``Examples:``, the Google section whose ``>>>`` lines
  griffe renders as code (griffe reads a lone ``Example:`` as an admonition, in prose).

``ConfigFieldHelp``: a dataclass field declared as ``name: type = _opt(default, help, choices)``
(``convsim.training.config``, where the help also feeds ``convsim train --help``) is documented
with its default as the value and its help as the docstring, instead of the ``_opt(...)`` call.

Both are configured in mkdocs.yml under the python handler's ``extensions``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_INLINE_MATH = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*$")
_LITERAL_MARKER = re.compile(r"(\S)::$")
_EXAMPLE_TITLE = re.compile(r"(?m)^(\s*)Example:$")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _math_blocks(lines: list[str]) -> list[str]:
    """Each ``.. math::`` directive and its indented body as ``$$`` lines at the directive's indent."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        if not directive:
            out.append(lines[i])
            i += 1
            continue
        indent = directive.group(1)
        body: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        formula = [line for line in body if line]
        out += [indent + "$$", *(indent + line for line in formula), indent + "$$", ""]
    return out


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with the reStructuredText constructs above rewritten as Markdown.

    Example:
        >>> rst_to_markdown("Uses :math:`x^2` (:func:`~convsim.theory.feature_maps`)::")
        'Uses \\\\(x^2\\\\) (`feature_maps`):'
    """
    lines = _math_blocks(text.splitlines())
    text = "\n".join(_LITERAL_MARKER.sub(r"\1:", line) for line in lines)
    text = _INLINE_MATH.sub(lambda m: rf"\({m.group(1)}\)", text)
    text = _EXAMPLE_TITLE.sub(r"\1Examples:", text)
    return _ROLE.sub(_role, text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once the object tree is built, before mkdocstrings parses it."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)


class ConfigFieldHelp(griffe.Extension):
    """``x: T = _opt(default, help, ...)``: value ``default``, docstring ``help`` (argparse's ``%%`` unescaped)."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any) -> None:
        call = attr.value
        if not isinstance(call, griffe.ExprCall) or str(call.function) != "_opt" or len(call.arguments) < 2:
            return
        default, text = call.arguments[0], call.arguments[1]
        if not isinstance(text, str):
            return
        attr.value = default
        attr.docstring = griffe.Docstring(ast.literal_eval(text).replace("%%", "%"), parent=attr)
