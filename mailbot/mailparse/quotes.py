"""Where a reply's own words end: quotes, attributions, header blocks and signatures.

People answer mailbot above (sometimes below) a quote of the validation mail,
and that quote contains both ACCEPT and REFUSE: whatever is not cut here ends
up read as a command. The rules are line based and locale aware, and every
one of them is bounded (line count, line length, window size) so that hostile
text costs linear time.

What starts quoted matter (``Cut.kind``):

- *quote*: a line starting with ``>``, or a run of lines starting with ``|``;
- *attribution*: "On <date>, <person> wrote:" (``attributions``);
- *header* and *separator*/*forward*: a header block or a separator line
  (``headerblocks``), or a line of dashes framing a few words ("----- Mail
  original -----") right above a header block or an attribution;
- *rule*: a line drawn across (Outlook's ``____``) with the original's text
  right below it, unmarked;
- *signature*: "-- ", "Sent from my iPhone"... (``signatures``).

Whatever follows the cut is quoted, whether its lines are marked or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailbot.mailparse import headerblocks
from mailbot.mailparse.attributions import attribution_at
from mailbot.mailparse.lines import (
    MAX_LINE_CHARS,
    QUOTED,
    RULE,
    is_bar_quoted,
    is_quoted,
    normalise,
)
from mailbot.mailparse.signatures import is_signature_line, without_signature

LOOKAHEAD = 3
"""Lines looked at below a rule or a framed line for what it introduces."""
_FRAMED_LINE = re.compile(r"^\s*[-_=~*]{3,}\s*[^-_=~*\s][^-_=~*]{0,60}?\s*[-_=~*]{3,}\s*$")
"""A few words between dashes: "----- Mail original -----", "-------- Messaggio --------"."""


@dataclass(frozen=True)
class Cut:
    """Where quoted matter begins: the line index, what starts there, and its length."""

    index: int
    kind: str
    """``quote``, ``attribution``, ``header``, ``separator``, ``forward``, ``rule``,
    ``signature``."""
    length: int = 1


@dataclass(frozen=True)
class Split:
    new: str
    """The sender's own words."""
    quoted: str
    """Everything else: quotes, attributions, forwarded and signature lines."""
    cut: Cut | None
    lines: tuple[str, ...]
    """The normalised lines the indexes refer to."""
    bottom_posted: bool = False
    """The new text was found below the quote, not above it."""


def split_reply(text: str) -> Split:
    """The new text of a reply and what was removed, with where the cut happened."""
    lines = normalise(text)
    cut = first_cut(lines)
    stop = cut.index if cut else len(lines)
    kept = list(range(stop))
    bottom = cut is not None and cut.kind in ("quote", "attribution") and not _has_text(lines, kept)
    if bottom and cut is not None:
        kept = _bottom_posted(lines, cut)
    kept = without_signature(lines, kept)
    kept_set = set(kept)
    new = _tidy([lines[i] for i in kept])
    quoted = "\n".join(line for i, line in enumerate(lines) if i not in kept_set).strip()
    return Split(new, quoted, cut, tuple(lines), bottom_posted=bottom and bool(kept))


def first_cut(lines: list[str], start: int = 0) -> Cut | None:
    """The first line from which everything is quoted, forwarded or signature.

    A rule line above unmarked text gives way to a later cut that may hold a
    forward (a forward marker, a separator or a header block: a forwarder's
    signature may hold a rule), so that forwards are still found; otherwise
    it is the cut.
    """
    rule: Cut | None = None
    for index in range(start, len(lines)):
        found = cut_at(lines, index)
        if found is None:
            continue
        if found.kind == "rule":
            rule = rule or found
            continue
        if rule is None or _may_hold_forward(lines, found):
            return found
        return rule
    return rule


def cut_at(lines: list[str], index: int) -> Cut | None:
    line = lines[index]
    if not line.strip():
        return None
    if QUOTED.match(line) or (is_bar_quoted(line) and _bar_block(lines, index)):
        return Cut(index, "quote")
    if len(line) > MAX_LINE_CHARS:
        return None
    if separator := headerblocks.separator_kind(line):
        return Cut(index, separator)
    if RULE.match(line):
        return _below_rule(lines, index)
    if headerblocks.header_key(line) and headerblocks.header_block_at(lines, index):
        return Cut(index, "header")
    if is_signature_line(line):
        return Cut(index, "signature")
    if _FRAMED_LINE.match(line) and _introduces_quote(lines, index + 1):
        return Cut(index, "separator")
    length = attribution_at(lines, index)
    if length is None or _introduces_block(lines, index + length):
        return None
    return Cut(index, "attribution", length)


def _next_content(lines: list[str], index: int) -> int | None:
    for position in range(index, min(index + LOOKAHEAD, len(lines))):
        if lines[position].strip():
            return position
    return None


def _below_rule(lines: list[str], index: int) -> Cut | None:
    """A rule above a header block, or above the original's unmarked text.

    When a quote, a separator or an attribution follows, that line is the cut.
    """
    if headerblocks.header_block_after(lines, index + 1):
        return Cut(index, "header")
    below = _next_content(lines, index + 1)
    if below is None:
        return None
    line = lines[below]
    if is_quoted(line) or len(line) > MAX_LINE_CHARS or RULE.match(line):
        return None
    if headerblocks.separator_kind(line) or attribution_at(lines, below) is not None:
        return None
    return Cut(index, "rule")


def _introduces_quote(lines: list[str], index: int) -> bool:
    below = _next_content(lines, index)
    if below is None or len(lines[below]) > MAX_LINE_CHARS:
        return False
    return headerblocks.header_block_at(lines, below) or attribution_at(lines, below) is not None


def _introduces_block(lines: list[str], index: int) -> bool:
    """A separator or a header block right below: "... wrote:" was someone's own words
    introducing it (a forwarder's "see what the customer wrote:"), and the block is the cut."""
    below = _next_content(lines, index)
    if below is None or len(lines[below]) > MAX_LINE_CHARS:
        return False
    line = lines[below]
    return bool(headerblocks.separator_kind(line)) or headerblocks.header_block_at(lines, below)


def _bar_block(lines: list[str], index: int) -> bool:
    """``|`` marks a quote when the next line is marked too (one bar line may be prose)."""
    below = _next_content(lines, index + 1)
    return below is not None and below <= index + 2 and is_bar_quoted(lines[below])


def _may_hold_forward(lines: list[str], cut: Cut) -> bool:
    """A forward marker, a separator or a header block (below a forwarder's signature)."""
    if cut.kind in ("forward", "separator", "header"):
        return True
    if cut.kind != "quote":
        return False
    below = _next_content(lines, cut.index)
    return below is not None and headerblocks.is_forward_marker(lines[below])


def _has_text(lines: list[str], kept: list[int]) -> bool:
    return any(lines[i].strip() for i in kept)


def _bottom_posted(lines: list[str], cut: Cut) -> list[int]:
    """Unquoted lines after a ``>`` quote: the answer of a bottom- or inline-poster."""
    index = cut.index + (cut.length if cut.kind == "attribution" else 0)
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines) or not is_quoted(lines[index]):
        return []
    kept: list[int] = []
    while index < len(lines):
        line = lines[index]
        if is_quoted(line):
            index += 1
            continue
        found = cut_at(lines, index)
        if found is not None and found.kind == "attribution":
            index += found.length
            continue
        if found is not None:
            break
        kept.append(index)
        index += 1
    return kept


def _tidy(lines: list[str]) -> str:
    """Right-stripped lines, without leading or trailing blank and rule lines."""
    cleaned = [line.rstrip() for line in lines]
    while cleaned and (not cleaned[-1].strip() or RULE.match(cleaned[-1])):
        cleaned.pop()
    while cleaned and not cleaned[0].strip():
        cleaned.pop(0)
    return "\n".join(cleaned)


def new_text(text: str) -> str:
    """The sender's own words: quotes, attributions, forwards and signatures removed."""
    return split_reply(text).new
