"""Attributions: "On <date>, <person> wrote:" in its many languages.

An attribution may be wrapped over up to ``WINDOW`` lines; every rule is
bounded so that hostile text costs linear time.
"""

from __future__ import annotations

import re

from mailbot.mailparse.headerblocks import header_key
from mailbot.mailparse.lines import MAX_LINE_CHARS, QUOTED

WINDOW = 4
"""Lines an attribution may be wrapped over."""

VERBS = (
    r"wrote|writes|a [ée]crit|[ée]crit|schrieb|escribi[óo]|ha scritto|scrisse|escreveu"
    r"|schreef|skrev|skriver|kirjoitti|napisa[łl]\(a\)|napisa[łl]a?|napsal\(a\)|napsala?"
    r"|написал\(а\)|написала?|писала?|έγραψε|yazd[ıi]|[íi]rta|a scris|写道|寫道|が書きました"
)
_LEADS = r"on|le|am|el|il|in data|em|op|den|dne|w dniu|dnia|p[åa]|в|од"
_VERB_COLON = re.compile(rf"(?:{VERBS})\s*[:：]\s*$", re.IGNORECASE)
_VERB_END = re.compile(rf"(?:^|\s)(?:{VERBS})\s*$", re.IGNORECASE)
_LEAD_VERB = re.compile(rf"^(?:{_LEADS})\s.*\b(?:{VERBS})\b.*[:：]\s*$", re.IGNORECASE)
_ADDRESS_COLON = re.compile(r"@[\w.-]+\s*>?\s*\)?\s*[:：]\s*$")
_STRONG_START = re.compile(rf"^(?:(?:{_LEADS})\s|\W*\d|[^\W\d_]{{1,12}}\.?,?\s+\d)", re.IGNORECASE)
_DIGIT = re.compile(r"\d")


def attribution_at(lines: list[str], index: int) -> int | None:
    """How many lines make the attribution starting at ``index``, or None.

    A window that only matches because it swallowed the line before a real
    attribution ("Thanks!" + "On Mon, ... wrote:") is not one: the caller
    finds the attribution on the next line.
    """
    length = attribution_length(lines, index)
    if length is None:
        return None
    for start in range(index + 1, index + length):
        if _STRONG_START.match(lines[start].strip(" ->*")) and _is_attribution(
            " ".join(line.strip() for line in lines[start : index + length])
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
        if _may_end_attribution(line) and _is_attribution(" ".join(parts)):
            return len(parts)
    return None


def _may_end_attribution(line: str) -> bool:
    """Cheap test first: attributions end with a colon or with the verb itself."""
    tail = line.rstrip(" -\t")
    return tail.endswith((":", "：")) or _VERB_END.search(tail[-40:]) is not None


def _is_attribution(window: str) -> bool:
    window = window.strip(" -\t*")
    if len(window) > 2 * MAX_LINE_CHARS or not _DIGIT.search(window):
        return False
    if _VERB_COLON.search(window) or _LEAD_VERB.match(window):
        return True
    if _VERB_END.search(window) and "@" in window:
        return True
    return _ADDRESS_COLON.search(window) is not None and header_key(window) is None
