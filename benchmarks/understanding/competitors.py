"""The best-known libraries, judged on the same cases as mailbot.

Quote cutting: ``email-reply-parser`` and ``quotequail`` give the new text of a
reply; the decision is then read from it with mailbot's own command grammar, so
only the quote cutting differs. Forwards: ``quotequail.unwrap`` gives the
original sender and the forwarded text. Bounces: ``flufl.bounce`` alone.
HTML bodies are turned into text with mailbot's converter where a library
reads text only.

A library that is not installed is reported as such, never an error.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mailbot.mailparse.htmltext import html_to_text

from . import judging
from .corpus import Entry, as_message, reading
from .judging import (
    M_AUTO,
    M_BOUNCE,
    M_DECISION,
    M_FORWARD,
    M_FWD_DECISION,
    M_NOT_BOUNCE,
    M_TEXT,
    RIGHT,
    UNSURE,
    WRONG,
)
from .variants import Variant

INSTALL = "pip install '.[bench]'"
ADDRESS = re.compile(r"[^\s<>()\"',;:@]+@[^\s<>()\"',;:@]+\.[^\s<>()\"',;:@]+")

RowJudge = Callable[[Entry], str | None]
"""An outcome for a corpus row, or None where the row says nothing this judge reads."""
VariantJudge = Callable[[Variant], str]


@dataclass(frozen=True)
class Competitor:
    """One reader of mail, with what it can be judged on (None: not applicable)."""

    name: str
    missing: str | None = None
    reply: VariantJudge | None = None
    agency: VariantJudge | None = None
    rows: dict[str, RowJudge] | None = None
    """Measure -> judge of a corpus row on that measure."""
    covers: tuple[str, ...] = ()
    """How the names of the measures it takes part in begin (to show where it is missing)."""

    def row(self, measure: str) -> RowJudge | None:
        return (self.rows or {}).get(measure)


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@lru_cache(maxsize=8)
def _reading(raw: bytes) -> tuple[str, str, bool]:
    """(subject, body, whether the body is HTML): read once for every library."""
    return reading(raw)


def mailbot() -> Competitor:
    """mailbot's rows; its decisions are judged in detail by the report itself."""
    return Competitor(
        "mailbot",
        rows={
            M_TEXT: judging.mailbot_reply_text,
            M_DECISION: judging.mailbot_reply_decision,
            M_FORWARD: judging.mailbot_forward,
            M_FWD_DECISION: judging.mailbot_forward_decision,
            M_AUTO: judging.mailbot_autoreply,
            M_BOUNCE: judging.mailbot_bounce,
            M_NOT_BOUNCE: judging.mailbot_not_bounce,
        },
    )


def libraries() -> list[Competitor]:
    return [email_reply_parser(), quotequail(), flufl_bounce()]


# -- email-reply-parser ------------------------------------------------------------


def email_reply_parser() -> Competitor:
    module = _module("email_reply_parser")
    if module is None:
        return Competitor("email-reply-parser", missing=INSTALL, covers=("reply",))
    parse_reply = module.EmailReplyParser.parse_reply

    def new_text(text: str, html: bool) -> str:
        return str(parse_reply(html_to_text(text) if html else text) or "")

    rows: dict[str, RowJudge] = {
        M_TEXT: _text_judge(new_text),
        M_DECISION: _decision_judge(new_text),
    }
    return Competitor("email-reply-parser", reply=_reply_judge(new_text), rows=rows)


def _reply_judge(new_text: Callable[[str, bool], str]) -> VariantJudge:
    """A reply's decision read from the new text a library cuts out of its body."""

    def judge(variant: Variant) -> str:
        subject, text, html = _reading(variant.raw)
        try:
            own = new_text(text, html)
        except Exception:  # a library failing on a message: no answer
            return "library error"
        return judging.decide(subject, own, variant.verb, variant.token)

    return judge


def _decision_judge(new_text: Callable[[str, bool], str]) -> RowJudge:
    """A corpus reply's decision, read from the new text a library cuts out of it."""

    def judge(entry: Entry) -> str | None:
        if not judging.says_decision(entry.expected):
            return None
        subject, text, html = _reading(entry.raw)
        try:
            own = new_text(text, html)
        except Exception:  # a library failing on a message: no answer
            return "library error"
        return judging.expected_decision(subject, own, entry.expected)

    return judge


def _text_judge(new_text: Callable[[str, bool], str]) -> RowJudge:
    """A corpus reply's new text as a library cuts it, against the expected file."""

    def judge(entry: Entry) -> str | None:
        if not judging.text_expected(entry.expected):
            return None
        _, text, html = _reading(entry.raw)
        try:
            own = new_text(text, html)
        except Exception:  # a library failing on a message: no answer
            return UNSURE
        return judging.text_judge(own, entry.expected)

    return judge


# -- quotequail --------------------------------------------------------------------


def quotequail() -> Competitor:
    module = _module("quotequail")
    if module is None:
        covers = ("reply", "agency", "forwarded")
        return Competitor("quotequail", missing=INSTALL, covers=covers)

    def new_text(text: str, html: bool) -> str:
        return _quotequail_top(module, text, html)

    return Competitor(
        "quotequail",
        reply=_reply_judge(new_text),
        agency=lambda v: _quotequail_agency(module, v),
        rows={
            M_TEXT: _text_judge(new_text),
            M_DECISION: _decision_judge(new_text),
            M_FORWARD: lambda e: _quotequail_forward(module, e),
            M_FWD_DECISION: lambda e: _quotequail_forward_decision(module, e),
        },
    )


def _quotequail_top(module: Any, text: str, html: bool) -> str:
    """The text above the quote: unwrap's top part, else quote's first shown parts."""
    found = module.unwrap_html(text) if html else module.unwrap(text)
    if found is not None:
        top = str(found.get("html_top" if html else "text_top", ""))
        return html_to_text(top) if html else top
    parts = module.quote_html(text) if html else module.quote(text, quote_intro_line=True)
    shown: list[str] = []
    for visible, part in parts:
        if not visible:
            break
        shown.append(part)
    return html_to_text("".join(shown)) if html else "\n".join(shown)


def _quotequail_unwrap(module: Any, raw: bytes) -> dict[str, Any] | None:
    _, text, html = _reading(raw)
    try:
        found = module.unwrap_html(text) if html else module.unwrap(text)
    except Exception:  # a library failing on a message: no answer
        return None
    return found if isinstance(found, dict) and found.get("type") == "forward" else None


def _quotequail_forward(module: Any, entry: Entry) -> str:
    found = _quotequail_unwrap(module, entry.raw)
    wanted = judging.forwarded_from(entry.expected)
    if wanted is None:
        return RIGHT if found is None else WRONG
    if found is None:
        return UNSURE
    address = ADDRESS.search(str(found.get("from", "")))
    return RIGHT if address and address.group().lower() == wanted else WRONG


def _quotequail_forwarded_own(module: Any, found: dict[str, Any]) -> str:
    """The forwarded message's own words: its text, its quote cut by quotequail."""
    text = str(found.get("text", "") or html_to_text(str(found.get("html", ""))))
    return _quotequail_top(module, text, False)


def _quotequail_agency(module: Any, variant: Variant) -> str:
    found = _quotequail_unwrap(module, variant.raw)
    if found is None:
        return UNSURE
    own = _quotequail_forwarded_own(module, found)
    return judging.decide("", own, variant.verb, variant.token)


def _quotequail_forward_decision(module: Any, entry: Entry) -> str | None:
    if not judging.says_decision(entry.expected, "forwarded_"):
        return None
    found = _quotequail_unwrap(module, entry.raw)
    if found is None:
        return "no-forward" if entry.expected["forwarded_decision"] is not None else RIGHT
    own = _quotequail_forwarded_own(module, found)
    return judging.expected_decision("", own, entry.expected, "forwarded_")


# -- flufl.bounce ------------------------------------------------------------------


def flufl_bounce() -> Competitor:
    module = _module("flufl.bounce")
    if module is None:
        return Competitor("flufl.bounce", missing=INSTALL, covers=("bounce", "not taken"))
    logging.getLogger("flufl.bounce").disabled = True  # its detectors log their own crashes
    rows: dict[str, RowJudge] = {
        M_BOUNCE: lambda e: _flufl_bounce(module, e),
        M_NOT_BOUNCE: lambda e: _flufl_not_bounce(module, e),
    }
    return Competitor("flufl.bounce", rows=rows)


def _flufl_failures(module: Any, raw: bytes) -> tuple[set[str], set[str]] | None:
    """(permanent, temporary) failed addresses, or None if the library failed."""
    message = as_message(raw)
    try:
        if hasattr(module, "all_failures"):
            temporary, permanent = module.all_failures(message)
        else:
            temporary, permanent = set(), module.scan_message(message)
    except Exception:  # a library failing on a message: no answer
        return None
    return _addresses(permanent), _addresses(temporary)


def _addresses(found: Any) -> set[str]:
    out: set[str] = set()
    for item in found or ():
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        match = ADDRESS.search(text)
        if match:
            out.add(match.group().lower())
    return out


def _flufl_bounce(module: Any, entry: Entry) -> str:
    failures = _flufl_failures(module, entry.raw)
    if failures is None or not (failures[0] or failures[1]):
        return UNSURE
    permanent, temporary = failures
    return judging.kind_judge(entry.expected, bool(permanent), permanent or temporary)


def _flufl_not_bounce(module: Any, entry: Entry) -> str:
    failures = _flufl_failures(module, entry.raw)
    if failures is None:
        return UNSURE
    return WRONG if failures[0] or failures[1] else RIGHT
