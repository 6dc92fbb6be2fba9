"""Where a reply's own words end: quotes, attributions, header blocks and signatures.

People answer mailbot above (sometimes below) a quote of the validation mail,
and that quote contains both ACCEPT and REFUSE: whatever is not cut here ends
up read as a command. The rules are line based and locale aware, and every
one of them is bounded (line count, line length, window size) so that hostile
text costs linear time.

What starts quoted matter (``Cut.kind``):

- *quote*: a line starting with ``>``;
- *attribution*: "On <date>, <person> wrote:" (``attributions``);
- *header* and *separator*/*forward*: a header block or a separator line
  (``headerblocks``);
- *signature*: "-- ", "Sent from my iPhone"... (``signatures``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailbot.mailparse import headerblocks
from mailbot.mailparse.attributions import attribution_at
from mailbot.mailparse.lines import MAX_LINE_CHARS, QUOTED, RULE, normalise
from mailbot.mailparse.signatures import is_signature_line, without_signature


@dataclass(frozen=True)
class Cut:
    """Where quoted matter begins: the line index, what starts there, and its length."""

    index: int
    kind: str
    """``quote``, ``attribution``, ``header``, ``separator``, ``forward``, ``signature``."""
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
    """The first line from which everything is quoted, forwarded or signature."""
    for index in range(start, len(lines)):
        found = cut_at(lines, index)
        if found is not None:
            return found
    return None


def cut_at(lines: list[str], index: int) -> Cut | None:
    line = lines[index]
    if not line.strip():
        return None
    if QUOTED.match(line):
        return Cut(index, "quote")
    if len(line) > MAX_LINE_CHARS:
        return None
    if separator := headerblocks.separator_kind(line):
        return Cut(index, separator)
    if RULE.match(line) and headerblocks.header_block_after(lines, index + 1):
        return Cut(index, "header")
    if headerblocks.header_key(line) and headerblocks.header_block_at(lines, index):
        return Cut(index, "header")
    if is_signature_line(line):
        return Cut(index, "signature")
    length = attribution_at(lines, index)
    return None if length is None else Cut(index, "attribution", length)


def _has_text(lines: list[str], kept: list[int]) -> bool:
    return any(lines[i].strip() for i in kept)


def _bottom_posted(lines: list[str], cut: Cut) -> list[int]:
    """Unquoted lines after a ``>`` quote: the answer of a bottom- or inline-poster."""
    index = cut.index + (cut.length if cut.kind == "attribution" else 0)
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines) or not QUOTED.match(lines[index]):
        return []
    kept: list[int] = []
    while index < len(lines):
        line = lines[index]
        if QUOTED.match(line):
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
