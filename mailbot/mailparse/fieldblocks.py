"""A forwarded message's header block read into fields, whatever its layout.

Clients and HTML-to-text converters lay the same fields out in several ways:

- one "Label: value" per line, labels bold (``*From:*``) or quoted (``> De :``);
- a table: the label, a tab, the value (Thunderbird, Apple Mail, Outlook tables
  turned into text), or the label on one line and its value on the next;
- the whole block run together on one line by a webmail's HTML-to-text
  ("From: A <a@x>To: B <b@y>Sent: …Subject: …", see ``labels.split_inline``);
- wrapped values (a long To list, an address on a line of its own).

The fields are named by ``labels.FIELDS`` (``from``, ``date``, ``to``, ``cc``,
``subject``, ``reply-to``), so callers never see the client's language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailbot.mailparse import headerblocks, labels
from mailbot.mailparse.lines import MAX_LINE_CHARS, dequote

MAX_BLOCK_LINES = 24
"""Lines a header block may span (labels and values on separate lines double it)."""

WRAPPED_LINE_CHARS = 100
"""A wrapped value's line is no longer than a client's wrapping width."""

_LABEL_LINE = re.compile(
    rf"^\s*\**\s*(?P<label>{labels.ALL_LABELS})(?:\s*\([\w\s]{{1,12}}\))?\s*\**\s*"
    r"(?:[:：]\s*\**|\t\s*|\s{2,}(?=\S))(?P<value>.*)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Block:
    fields: dict[str, str]
    """Field name to value, first occurrence of each field."""
    end: int
    """Index of the first line after the block."""


def strip_depth(line: str, depth: int) -> str:
    """A line without the first ``depth`` quote markers."""
    for _ in range(depth):
        stripped = dequote(line)
        if stripped == line:
            break
        line = stripped
    return line


def label_pairs(line: str) -> list[tuple[str, str]]:
    """The (field, value) pairs a label line holds: one, several when run together, or none."""
    if len(line) > labels.MAX_INLINE_CHARS:
        return []
    found = _LABEL_LINE.match(line)
    if found is None:
        return []
    field = labels.field_of(found.group("label"))
    if field is None:
        return []
    inline = labels.split_inline(line.lstrip(" \t*"))
    if len(inline) >= 3 or (len(inline) == 2 and inline[0][0] == "from"):
        return inline
    return [(field, found.group("value").strip(" *\t"))]


def read(lines: list[str], start: int, depth: int) -> Block | None:
    """The header block starting at ``start`` (quote depth ``depth``), if it names a sender."""
    fields: dict[str, str] = {}
    last: str | None = None
    pending: str | None = None
    previous = ""
    index = start
    while index < len(lines) and index - start < MAX_BLOCK_LINES:
        line = strip_depth(lines[index], depth)
        if not line.strip():
            if fields and pending is None and not _label_follows(lines, index, depth, fields):
                break
            index += 1
            continue
        pairs = label_pairs(line)
        if pairs:
            for field, value in pairs:
                if not fields.get(field):
                    fields[field] = value
            last = pairs[-1][0]
            pending = last if not pairs[-1][1] else None
        elif pending is not None:
            fields[pending], pending = line.strip(" *\t"), None
        elif last is not None and (
            _continues(line, previous, last, fields) or _between_labels(lines, index, depth, fields)
        ):
            fields[last] = f"{fields[last]} {line.strip()}"
        elif last is not None:
            break
        else:
            return None
        previous = line
        index += 1
    if not fields.get("from") and not ("from" in fields and _named_later(fields)):
        return None
    return Block(fields, index)


def _named_later(fields: dict[str, str]) -> bool:
    """A block whose From is empty but that is plainly one (a subject and a date)."""
    return "subject" in fields and "date" in fields


def _label_follows(lines: list[str], index: int, depth: int, fields: dict[str, str]) -> bool:
    """Whether the block goes on after a blank line: a label of a field not seen yet."""
    for position in range(index + 1, min(index + 3, len(lines))):
        line = strip_depth(lines[position], depth)
        if line.strip():
            pairs = label_pairs(line)
            return bool(pairs) and pairs[0][0] not in fields
    return False


def _between_labels(lines: list[str], index: int, depth: int, fields: dict[str, str]) -> bool:
    """A short line right above the label of a field not seen yet: a value wrapped at the
    client's line length (Thunderbird wraps a long subject without indenting it)."""
    if len(lines[index]) > WRAPPED_LINE_CHARS or index + 1 >= len(lines):
        return False
    pairs = label_pairs(strip_depth(lines[index + 1], depth))
    return bool(pairs) and pairs[0][0] not in fields


def _continues(line: str, previous: str, last: str, fields: dict[str, str]) -> bool:
    """A wrapped header value: indented, an address on its own line, or after a long line.

    Otherwise the line is the forwarded body itself, which some clients (Outlook's
    HTML) start right below the headers without a blank line.
    """
    if len(line) > MAX_LINE_CHARS:
        return False
    if line[:1] in (" ", "\t") or line.lstrip().startswith(("<", "[mailto:")):
        return True
    if last == "from" and "@" not in fields.get("from", ""):
        return "@" in line and len(line.split()) <= 6
    return len(previous) >= 60


def body_start(lines: list[str], index: int, depth: int) -> int:
    """Where the forwarded text starts: past blank lines and a closing separator (Zoho)."""
    for position in range(index, min(index + 4, len(lines))):
        line = strip_depth(lines[position], depth)
        if not line.strip():
            continue
        if headerblocks.separator_kind(line) is not None:
            return position + 1
        return position
    return index
