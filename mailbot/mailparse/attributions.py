"""Attributions: "On <date>, <person> wrote:" in its many languages.

The shapes recognised, each in every language the verbs below cover:

- lead word, date, person, verb: "On Mon, 2 Mar 2026 at 10:00, Name <addr> wrote:",
  "Am 02.03.2026 um 10:00 schrieb Name:", "Op 2 mrt. 2026 om 10:00 heeft Name
  het volgende geschreven:";
- Gmail's date first, with no verb at all: "2026-03-02 10:00 GMT+01:00 Name <addr>:"
  (or "... Name:");
- person then verb, with no date: "Name <addr> wrote:", "Name (addr) schrieb am
  Mo., 2. März 2026:", and the bare "Name wrote:" on a line of its own;
- Zoho's framed "---- On <date> Name wrote ----".

An attribution may be wrapped over up to ``WINDOW`` lines; every rule is
bounded so that hostile text costs linear time. Whatever follows one is the
quote, marked with ``>`` or not.
"""

from __future__ import annotations

import re

from mailbot.mailparse.headerblocks import header_key
from mailbot.mailparse.lines import MAX_LINE_CHARS, QUOTED

WINDOW = 4
"""Lines an attribution may be wrapped over."""
VERB_TAIL = 200
"""Characters at the end of an attribution where an address and the verb after it are sought."""

VERBS = (
    r"wrote|writes|a [ée]crit|[ée]crit|schrieb|escribi[óo]|ha scritto|scrisse|escreveu"
    r"|schreef|skrev|skriver|kirjoitti|napisa[łl]\(a\)|napisa[łl]a?|napsal\(a\)|napsala?"
    r"|написал\(а\)|написала?|писала?|έγραψε|yazd[ıi]|[íi]rta|a scris|写道|寫道|が書きました"
    r"|het volgende geschreven|(?:folgendes )?geschrieben|geschreven"
)
_LEADS = r"on|le|am|el|il|in data|em|op|den|dne|w dniu|dnia|p[åa]|в|од"
_VERB_COLON = re.compile(rf"(?:{VERBS})\s*[:：]\s*$", re.IGNORECASE)
_VERB_END = re.compile(rf"(?:^|\s)(?:{VERBS})\s*$", re.IGNORECASE)
_LEAD_VERB = re.compile(rf"^(?:{_LEADS})\s.*\b(?:{VERBS})\b.*[:：]\s*$", re.IGNORECASE)
_ADDRESS_COLON = re.compile(r"@[\w.-]+\s*>?\s*\)?\s*[:：]\s*$")
_STRONG_START = re.compile(rf"^(?:(?:{_LEADS})\s|\W*\d|[^\W\d_]{{1,12}}\.?,?\s+\d)", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_DATE_FIRST = re.compile(
    r"^(?:\d{1,4}[-./]\d{1,2}[-./]\d{1,4}|\d{4}年\d{1,2}月\d{1,2}日\S{0,5}),?\s*\d{1,2}[:h.]\d{2}\b"
    r".{1,200}[:：]$",
    re.IGNORECASE,
)
"""Gmail's date-first attribution: "2026-03-02 10:00 GMT+01:00 Name <addr>:"."""
_ADDRESS_VERB = re.compile(
    rf"@[\w.-]+\s*[>)\]]?\s*[>)\]]?\s*,?\s*(?:{VERBS})\b.{{0,80}}[:：]\s*$", re.IGNORECASE
)
"""A person's address then the verb: "Name <addr> wrote:", "Name <addr> schrieb am ...:"."""
_NAME = r"[\"'«“]?[^\W\d_][\w.'’\"»”/-]*(?:\s+[\w.'’\"«»“”()/@-]+){0,5}"
"""A name of a few words, as an attribution starts with it."""
_NAME_VERB = re.compile(rf"^{_NAME}\s+(?:{VERBS})\s*[:：]$", re.IGNORECASE)
"""A bare name and the verb, alone on a line: "Alice Martin wrote:"."""
_NAME_VERB_DATE = re.compile(
    rf"^{_NAME}\s+(?:{VERBS})\s+(?:on|am|le|el|il|op|em|sur|den|at)\s.{{0,60}}\d.{{0,40}}[:：]$",
    re.IGNORECASE,
)
"""Lotus Notes' name, verb, then date: "Alice Martin/ACME wrote on 02/03/2026 10:00:"."""
_DATED = re.compile(r"\b\d{1,2}[:h]\d{2}\b|\b(?:19|20)\d{2}\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b")
"""A time, a year or a numeric date: what an attribution's first lines hold when it wraps."""
_FRAMED = re.compile(rf"^-{{2,}}\s*(?:{_LEADS})\s.*\b(?:{VERBS})\s*-{{2,}}$", re.IGNORECASE)
"""Zoho's "---- On <date> Name wrote ----"."""


def attribution_at(lines: list[str], index: int) -> int | None:
    """How many lines make the attribution starting at ``index``, or None.

    A window that only matches because it swallowed the line before a real
    attribution ("Thanks!" + "On Mon, ... wrote:") is not one: the caller
    finds the attribution on the next line.
    """
    length = attribution_length(lines, index)
    if length is None:
        return None
    weak = not _STRONG_START.match(lines[index].strip(" ->*"))
    for start in range(index + 1, index + length):
        strong = _STRONG_START.match(lines[start].strip(" ->*")) is not None
        undated_above = not _DATED.search(" ".join(lines[index:start]))
        if (strong or weak or undated_above) and _is_attribution(
            " ".join(line.strip() for line in lines[start : index + length]),
            start == index + length - 1,
        ):
            return None
    return length


def attribution_length(lines: list[str], index: int) -> int | None:
    """How many lines from ``index`` make an attribution, or None."""
    parts: list[str] = []
    for line in lines[index : index + WINDOW]:
        if not line.strip() or len(line) > MAX_LINE_CHARS or QUOTED.match(line):
            return None
        parts.append(line.strip())
        if _may_end_attribution(line) and _is_attribution(" ".join(parts), len(parts) == 1):
            return len(parts)
    return None


def _may_end_attribution(line: str) -> bool:
    """Cheap test first: attributions end with a colon or with the verb itself."""
    tail = line.rstrip(" -\t")
    return tail.endswith((":", "：")) or _VERB_END.search(tail[-40:]) is not None


def _is_attribution(window: str, one_line: bool = False) -> bool:
    if len(window) > 2 * MAX_LINE_CHARS:
        return False
    if _FRAMED.match(window.strip(" \t*")) and _DIGIT.search(window):
        return True
    window = window.strip(" -\t*")
    if not _DIGIT.search(window):
        return _undated(window, one_line)
    if _VERB_COLON.search(window) or _LEAD_VERB.match(window):
        return True
    if one_line and _NAME_VERB_DATE.match(window):
        return True
    if _VERB_END.search(window) and "@" in window:
        return True
    if header_key(window) is not None:
        return False
    return (
        _ADDRESS_COLON.search(window) is not None
        or _DATE_FIRST.match(window) is not None
        or (_address_then_verb(window))
    )


def _undated(window: str, one_line: bool) -> bool:
    """ "Name <addr> wrote:", or a bare "Name wrote:" alone on its line."""
    if not window.endswith((":", "：")) or header_key(window) is not None:
        return False
    return _address_then_verb(window) or (one_line and _NAME_VERB.match(window) is not None)


def _address_then_verb(window: str) -> bool:
    """The verb follows the address closely: only the window's tail is searched."""
    return window.endswith((":", "：")) and _ADDRESS_VERB.search(window[-VERB_TAIL:]) is not None
