"""The lines of a text body as every quote rule sees them.

Quote, header-block, attribution and signature rules all work on the same
normalised lines, bounded in number and in length so that hostile text costs
linear time.
"""

from __future__ import annotations

import re

MAX_LINES = 20_000
"""Lines of a text examined; the rest is treated as quoted."""
MAX_LINE_CHARS = 300
"""Longer lines are never attributions or headers."""

_INVISIBLE = re.compile("[\ufeff\u200b\u200c\u200d\u200e\u200f\u2060\u00ad]")
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters but tab and line ends: no one writes them, and a NUL
could not even be looked up in PostgreSQL."""
QUOTED = re.compile(r"^[ \t]*>(?![ \t]*[:：][ \t]*$)")  # ">:" ends a wrapped attribution
_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?")
RULE = re.compile(r"^\s*[-_=*]{5,}\s*$")
"""A line drawn across: Outlook puts one above the original it quotes."""
_BAR = re.compile(r"^[ \t]*\|")
_BAR_REST = re.compile(r"^[ \t|>]")


def normalise(text: str) -> list[str]:
    """Lines with uniform line ends, no invisible characters, no-break spaces and
    control characters as spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text).replace("\u00a0", " ").replace("\u202f", " ")
    text = CONTROL.sub(" ", text)
    return text.split("\n")[:MAX_LINES]


def dequote(line: str) -> str:
    return _QUOTE_PREFIX.sub("", line, count=1)


def quote_depth(line: str) -> int:
    found = _QUOTE_PREFIX.match(line)
    return found.group().count(">") if found else 0


def is_quoted(line: str) -> bool:
    """A line quoted with ``>``, or with ``|`` as some clients do ("| text", "|").

    A table row ("| a | b |") ends with a bar too and is not a quote.
    """
    if QUOTED.match(line):
        return True
    found = _BAR.match(line)
    if found is None:
        return False
    rest = line[found.end() :]
    if not rest.strip(" \t|>"):
        return True
    return _BAR_REST.match(rest) is not None and not rest.rstrip().endswith("|")


def is_bar_quoted(line: str) -> bool:
    return is_quoted(line) and not QUOTED.match(line)
