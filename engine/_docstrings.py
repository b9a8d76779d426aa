"""Parameter descriptions from a function's docstring: Google and NumPy styles.

Google::

    Args:
        city: Name of the city. Continuation lines are
            joined.
        units (str): ``metric`` or ``imperial``.

NumPy::

    Parameters
    ----------
    city : str
        Name of the city.

Only what a tool schema needs: the summary (the first paragraph) and one text per
parameter. Sphinx ``:param x:`` fields are read too. Anything else is left alone.
"""

from __future__ import annotations

import inspect
import re
from typing import Final

__all__ = ["parse_docstring"]

_GOOGLE_HEAD: Final = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args)\s*:\s*$")
_GOOGLE_ITEM: Final = re.compile(r"^\*{0,2}([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_HEAD: Final = re.compile(r"^(Parameters|Other Parameters)\s*$")
_NUMPY_ITEM: Final = re.compile(r"^\*{0,2}([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?::.*)?$")
_RULE: Final = re.compile(r"^-{3,}\s*$")
_SPHINX: Final = re.compile(r"^:param\s+(?:[^:]*\s)?([A-Za-z_]\w*)\s*:\s*(.*)$")
_ANY_SECTION: Final = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(summary, {parameter: description})`` of a docstring (empty when there is none)."""
    text = inspect.cleandoc(doc or "")
    if not text:
        return "", {}
    lines = text.splitlines()
    summary = " ".join(_first_paragraph(lines))
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if _GOOGLE_HEAD.match(line):
            i = _google(lines, i + 1, params)
        elif _NUMPY_HEAD.match(line) and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            i = _numpy(lines, i + 2, params)
        elif m := _SPHINX.match(line.strip()):
            body = [m.group(2).strip()]
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "\t")):
                body.append(lines[i].strip())
                i += 1
            params.setdefault(m.group(1), _join(body))
        else:
            i += 1
    return summary, params


def _first_paragraph(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.strip() or _GOOGLE_HEAD.match(line) or _NUMPY_HEAD.match(line):
            break
        out.append(line.strip())
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google(lines: list[str], i: int, params: dict[str, str]) -> int:
    """Items indented under the heading; deeper lines continue the item above."""
    base: int | None = None
    name: str | None = None
    body: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = _indent(line)
        if indent == 0:  # the next section (or prose) starts
            break
        if base is None:
            base = indent
        if indent == base and (m := _GOOGLE_ITEM.match(line.strip())):
            if name is not None:
                params.setdefault(name, _join(body))
            name, body = m.group(1), [m.group(2).strip()]
        elif indent > base and name is not None:
            body.append(line.strip())
        else:
            break
        i += 1
    if name is not None:
        params.setdefault(name, _join(body))
    return i


def _numpy(lines: list[str], i: int, params: dict[str, str]) -> int:
    """``name : type`` at the section's indent, the description indented below it."""
    names: list[str] = []
    body: list[str] = []

    def flush() -> None:
        for n in names:
            params.setdefault(n, _join(body))

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if _indent(line) == 0:
            if (i + 1 < len(lines) and _RULE.match(lines[i + 1])) or _ANY_SECTION.match(line):
                break  # the next section
            m = _NUMPY_ITEM.match(line.strip())
            if m is None:
                break
            flush()
            names = [n.strip() for n in m.group(1).split(",")]
            body = []
        elif names:
            body.append(line.strip())
        i += 1
    flush()
    return i


def _join(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)
