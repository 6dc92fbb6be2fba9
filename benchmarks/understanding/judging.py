"""Judging mailbot: a decision read from a message, a corpus row scored by its category.

Every judgement ends as one of three outcomes: right, wrong (a decision, a
sender or recipients that are not the expected ones), or not understood (no
answer: ignored, no forward found, no bounce found).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from mailbot import commands, mailparse, tokens
from mailbot.errors import AmbiguousDecision, MailbotError
from mailbot.mailparse import ParsedMail, bounces
from mailbot.mailparse.tokens import find_tokens

from .corpus import Entry

RIGHT, WRONG, UNSURE = "right", "wrong", "not understood"
OUTCOMES = (RIGHT, WRONG, UNSURE)
CATEGORIES = ("reply", "forwarded", "autoreply", "bounce", "other")

M_REPLY = "reply decisions (corpus formats)"
M_HTML = "reply decisions (HTML-only)"
M_TEXT = "reply: new text as expected"
M_DECISION = "reply: decision as expected"
M_AGENCY = "agency forward decisions"
M_FORWARD = "forwarded: original sender"
M_FWD_DECISION = "forwarded: decision as expected"
M_AUTO = "autoreply: ignored"
M_BOUNCE = "bounce: failed recipients"
M_NOT_BOUNCE = "not taken for a bounce"


@dataclass
class Tally:
    total: int = 0
    correct: int = 0
    wrong_opposite: int = 0
    wrong_token: int = 0
    not_understood: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: str, label: str) -> None:
        self.total += 1
        if outcome == "correct":
            self.correct += 1
            return
        if outcome == "opposite":
            self.wrong_opposite += 1
        elif outcome == "token":
            self.wrong_token += 1
        else:
            self.not_understood += 1
        self.reasons[outcome] += 1
        self.failures.append(f"{outcome}: {label}")

    def errors(self) -> str:
        reasons = f" {dict(self.reasons)}" if self.reasons else ""
        return (
            f"wrong-opposite {self.wrong_opposite}, wrong token {self.wrong_token}, "
            f"not understood {self.not_understood}{reasons}"
        )


def outcome(judged: str) -> str:
    """right, wrong or not understood, from a detailed judgement."""
    if judged in OUTCOMES:
        return judged
    if judged == "correct":
        return RIGHT
    return WRONG if judged in ("opposite", "token") else UNSURE


def decide(subject: str, text: str, verb: str, token: str | None) -> str:
    """The judgement of the decision found in a new text: mailbot's own command grammar."""
    try:
        command = commands.find_command(subject, text)
    except AmbiguousDecision:
        return "ambiguous"
    except MailbotError:
        return "unknown"
    if command.verb != verb:
        return "opposite" if command.verb in ("ACCEPT", "REFUSE") else "unknown"
    found = find_tokens(text)
    if token is not None and found[:1] != (token,):
        return "token"
    if token is None and found:
        return "token"
    return "correct"


def expected_decision(subject: str, text: str, expected: dict[str, Any], prefix: str = "") -> str:
    """The decision found in a corpus message's new text against its expected file.

    ``expected[prefix + "decision"]`` is ACCEPT, REFUSE or null (no decision may
    be read); ``expected[prefix + "tokens"]`` (or ``tokens_in_new_text``), where
    given, are the tokens the new text must hold.
    """
    wanted = expected.get(prefix + "decision")
    try:
        verb: str | None = commands.find_command(subject, text).verb
    except AmbiguousDecision:
        verb = "ambiguous"
    except MailbotError:
        verb = None
    decided = verb if verb in ("ACCEPT", "REFUSE") else None
    if wanted is None:
        return RIGHT if decided is None else "opposite"
    if decided is None:
        return verb if verb == "ambiguous" else "unknown"
    if decided != wanted:
        return "opposite"
    listed = expected.get(prefix + "tokens" if prefix else "tokens_in_new_text")
    if isinstance(listed, list) and find_tokens(text) != _canonical(listed):
        return "token"
    return "correct"


def _canonical(listed: list[Any]) -> tuple[str, ...]:
    found = (tokens.normalise(str(item)) for item in listed)
    return tuple(token for token in found if token is not None)


def says_decision(expected: dict[str, Any], prefix: str = "") -> bool:
    """Whether the expected file says which decision (or none) the message carries."""
    key = prefix + "decision"
    return key in expected and (expected[key] is None or isinstance(expected[key], str))


def judge(raw: bytes, verb: str, token: str | None, *, forwarded: bool = False) -> str:
    """correct | opposite | token | ambiguous | unknown | automatic | no-forward."""
    parsed = mailparse.parse(raw)
    if parsed.automatic or parsed.bounce is not None:
        return "automatic"
    if not forwarded:
        return decide(parsed.subject, parsed.new_text, verb, token)
    if parsed.forwarded is None:
        return "no-forward"
    return decide("", parsed.forwarded.new_text, verb, token)


@lru_cache(maxsize=512)
def parsed(raw: bytes) -> ParsedMail:
    """mailparse's reading of a corpus message (with its default bounce detectors)."""
    return mailparse.parse(raw)


# -- what a corpus row can be scored on ------------------------------------------------


def unscorable(entry: Entry) -> str | None:
    """Why a row cannot be scored, or None."""
    if entry.category not in CATEGORIES:
        return f"unknown category {entry.category!r}"
    if parsed(entry.raw).parse_error:
        return "message does not parse"
    if entry.category == "reply":
        html_only = entry.path.endswith(".html") and not text_expected(entry.expected)
        return "HTML-only reply without reply_text" if html_only else None
    if entry.category == "other":
        return None
    if not entry.has_expected:
        return f"{entry.category} without an expected file"
    return _missing_field(entry.category, entry.expected)


def _missing_field(category: str, expected: dict[str, Any]) -> str | None:
    if category == "forwarded":
        if not isinstance(expected.get("is_forwarded"), bool):
            return "forward without is_forwarded"
        if expected["is_forwarded"] and forwarded_from(expected) is None:
            return "forward without forwarded_from address"
    if category == "bounce":
        if not isinstance(expected.get("is_bounce"), bool):
            return "bounce without is_bounce"
        if expected["is_bounce"] and bounced_recipients(expected) is None:
            return "bounce without bounced_recipients"
    if category == "autoreply" and expected.get("is_autoreply") is not True:
        return "auto-reply without is_autoreply"
    return None


def forwarded_from(expected: dict[str, Any]) -> str | None:
    """The expected original sender's address, if the expected file gives one."""
    sender = expected.get("forwarded_from")
    address = sender.get("address") if isinstance(sender, dict) else None
    return address.strip().lower() if isinstance(address, str) and address.strip() else None


def bounced_recipients(expected: dict[str, Any]) -> frozenset[str] | None:
    """The expected failed recipients (none known: empty), if the expected file lists them."""
    wanted = expected.get("bounced_recipients")
    if not isinstance(wanted, list) or not all(isinstance(a, str) for a in wanted):
        return None
    return frozenset(a.strip().lower() for a in wanted)


TEXT_KEYS = ("reply_text", "reply_text_regex", "reply_text_contains", "reply_text_not_contains")


def text_expected(expected: dict[str, Any]) -> bool:
    """Whether the expected file says what a reply's new text is."""
    return any(isinstance(expected.get(key), str | list) for key in TEXT_KEYS)


_RULE = re.compile(r"^[-_=*~]+$")


def _normal(text: str) -> str:
    """The words written: lines stripped, blank lines and rule lines (``-----``) dropped."""
    lines = (line.strip() for line in text.strip().splitlines())
    return "\n".join(line for line in lines if line and not _RULE.match(line))


def _listed(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, str)]


def text_judge(text: str, expected: dict[str, Any]) -> str:
    """A reply's new text against its expected file, whitespace and rule lines aside."""
    wanted = expected.get("reply_text")
    if isinstance(wanted, str) and _normal(text) != _normal(wanted):
        return WRONG
    pattern = expected.get("reply_text_regex")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, text.strip(), re.MULTILINE) is None:
                return WRONG
        except re.error:
            pass  # a pattern Python cannot read: no judgement on it
    own = _normal(text)
    if not all(_normal(item) in own for item in _listed(expected.get("reply_text_contains"))):
        return WRONG
    banned = _listed(expected.get("reply_text_not_contains"))
    return WRONG if any(_normal(item) in own for item in banned) else RIGHT


# -- mailbot on corpus rows ----------------------------------------------------------


def mailbot_reply_decision(entry: Entry) -> str | None:
    """The decision mailbot reads in a corpus reply, where the expected file gives it."""
    if not says_decision(entry.expected):
        return None
    mail = parsed(entry.raw)
    if mail.automatic:
        return "automatic" if entry.expected["decision"] is not None else RIGHT
    return expected_decision(mail.subject, mail.new_text, entry.expected)


def mailbot_forward_decision(entry: Entry) -> str | None:
    """The decision mailbot reads in a forwarded message, where the expected file gives it."""
    if not says_decision(entry.expected, "forwarded_"):
        return None
    found = parsed(entry.raw).forwarded
    if found is None:
        return "no-forward" if entry.expected["forwarded_decision"] is not None else RIGHT
    return expected_decision("", found.new_text, entry.expected, "forwarded_")


def mailbot_reply_text(entry: Entry) -> str | None:
    """The new text mailbot reads in a corpus reply, where the expected file gives it."""
    if not text_expected(entry.expected):
        return None
    return text_judge(parsed(entry.raw).new_text, entry.expected)


def mailbot_forward(entry: Entry) -> str:
    """A forward attributed to its original sender; a non-forward left alone."""
    found = parsed(entry.raw).forwarded
    wanted = forwarded_from(entry.expected)
    if wanted is None:  # is_forwarded false: must not be taken for a forward
        return RIGHT if found is None else WRONG
    if found is None:
        return UNSURE
    return RIGHT if (found.sender or "").lower() == wanted else WRONG


def mailbot_bounce(entry: Entry) -> str:
    """A bounce's failed recipients exactly, and a delay kept a delay."""
    bounce = parsed(entry.raw).bounce
    if bounce is None:
        return UNSURE
    return kind_judge(entry.expected, bounce.permanent, set(bounce.recipients))


def delay_expected(expected: dict[str, Any]) -> bool:
    """Whether the expected file says the report is a delay, not a failure."""
    kind = str(expected.get("bounce_kind", "")).lower()
    return kind.startswith(("temporary", "delay")) or "delay" in kind


def kind_judge(expected: dict[str, Any], permanent: bool, recipients: set[str]) -> str:
    """A failure read as a delay is not understood; a delay read as a failure is wrong."""
    delay = delay_expected(expected)
    if permanent and delay:
        return WRONG
    if not permanent and not delay:
        return UNSURE
    return RIGHT if frozenset(recipients) == bounced_recipients(expected) else WRONG


def mailbot_autoreply(entry: Entry) -> str:
    """Auto-replies are ignored, and not taken for bounces."""
    mail = parsed(entry.raw)
    if mail.bounce is not None:
        return WRONG
    return RIGHT if mail.automatic else UNSURE


def mailbot_not_bounce(entry: Entry) -> str:
    """Anything but a bounce (or a delay) must not be taken for one."""
    return WRONG if parsed(entry.raw).bounce is not None else RIGHT


# -- the existing measures -----------------------------------------------------------


def bounce_recipients(entries: list[Entry], *, library: bool) -> tuple[int, int, int, list[str]]:
    """(bounces, recognised, recipients exactly right where listed, failures)."""
    previous = bounces.LIBRARY_DETECTORS
    bounces.LIBRARY_DETECTORS = library
    try:
        total = recognised = right = 0
        failures: list[str] = []
        for entry in entries:
            if entry.expected.get("is_bounce") is not True:
                continue
            total += 1
            bounce = mailparse.parse(entry.raw).bounce
            if bounce is None:
                failures.append(f"not recognised: {entry.label}")
                continue
            recognised += 1
            wanted = bounced_recipients(entry.expected)
            if wanted is None or wanted == set(bounce.recipients):
                right += 1
            else:
                wanted_list = sorted(wanted)
                failures.append(f"recipients {bounce.recipients} != {wanted_list}: {entry.label}")
        return total, recognised, right, failures
    finally:
        bounces.LIBRARY_DETECTORS = previous
