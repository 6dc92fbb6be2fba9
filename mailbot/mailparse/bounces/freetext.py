"""Bounces that are not RFC 3464 reports (qmail, Exim, Exchange 5.5, Yahoo,
GroupWise…): recognised by who sends them and how they read, their
recipients found by Mailman's ``flufl.bounce`` detectors, then by a generic
fallback that takes the addresses standing next to a failure phrase."""

from __future__ import annotations

import re
from email.message import Message
from email.utils import getaddresses

from flufl.bounce import all_failures

from mailbot.mailparse import mime, subjects
from mailbot.mailparse.bounces.bounce import (
    ADDRESS,
    MAX_DIAGNOSTIC_CHARS,
    MAX_RECIPIENTS,
    Bounce,
    short,
)
from mailbot.mailparse.bounces.returned import original_fields

_FAILURE_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_WHOLE_ADDRESS = rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-])({ADDRESS.pattern})(?![\w-]|\.[\w-])"
_LEADING_ADDRESS = re.compile(rf"^\s*<?{_WHOLE_ADDRESS}>?(?:\s|:|$)", re.IGNORECASE)
_LISTED_ADDRESS = re.compile(rf"(?<!from )(?<!from <){_WHOLE_ADDRESS}", re.IGNORECASE)
_PREFIXED = re.compile(r"^(?:smtp|rfc822|x400)[=:;]", re.IGNORECASE)
_DAEMON_LOCAL = re.compile(
    r"mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|mdaemon|mail[-_.]?delivery"
    r"|mail[-_.]?service|mail[-_.]?administrator|smtp|mail[-_.]?system|^bounces?$|^mailer$",
    re.IGNORECASE,
)
_DAEMON_NAME = re.compile(
    r"mail delivery (?:system|subsystem|service)|mailer[- ]daemon|postmaster"
    r"|mail administrator|system administrator|mail system|delivery status",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|delivery (?:status|failure|failed|has failed|problem"
    r"|notification|report|delayed|error)|mail delivery|failure notice|failed mail|returned mail"
    r"|returned to sender|could not be delivered|couldn't be delivered|not (?:be )?delivered"
    r"|mail system error|unzustellbar|nicht zustellbar|non remis|non distribuable"
    r"|[ée]chec de (?:la )?(?:remise|distribution)|remise diff[ée]r[ée]e|no se pudo entregar"
    r"|non recapitato|onbestelbaar|warning: message|delayed mail|user unknown"
    r"|mailbox (?:unavailable|full)|delivery notification",
    re.IGNORECASE,
)
_FAILURE_TEXT = re.compile(
    r"could not be delivered|couldn'?t be delivered|was not delivered|not been delivered"
    r"|undeliverable|delivery (?:to the following recipients? )?(?:has )?failed"
    r"|failed permanently|permanent (?:fatal )?errors?|address(?:\(es\)|es)? failed"
    r"|did not reach the following recipient|user unknown|unknown user|no such user"
    r"|mailbox (?:unavailable|is full|full)|quota exceeded|recipient address rejected"
    r"|host unknown|unrouteable|wasn'?t able to deliver|this is the (?:postfix program|mail system)"
    r"|delivery status notification|will be retried|will (?:continue to )?retry"
    r"|not accepting mail|unable to deliver|delivery attempts|failed recipients"
    r"|cannot be delivered|can't be delivered"
    r"|returned mail|delivery problem|message delayed|delayed \d+ hours"
    r"|\b5\d\d[ -]#?5\.\d+\.\d+",
    re.IGNORECASE,
)
_DELAY_TEXT = re.compile(
    r"\bdelay(?:ed)?\b|not yet been delivered|will (?:continue to )?(?:be )?retr|still trying"
    r"|remise diff[ée]r[ée]e|verz[öo]gert|retrasad",
    re.IGNORECASE,
)
_PERMANENT_TEXT = re.compile(
    r"failed permanently|permanent (?:fatal )?error|could not be delivered|has failed"
    r"|address(?:\(es\)|es)? failed|giving up|gave up|\b5\.\d+\.\d+",
    re.IGNORECASE,
)
_RECIPIENT_INTRO = re.compile(
    r"following (?:recipients?|address(?:\(es\)|es)?)|recipient\(s\)|failed recipients"
    r"|could not be delivered to|delivery to the following",
    re.IGNORECASE,
)
_PHRASE_STATUS = (
    (re.compile(r"unrouteable (?:mail )?domain|host unknown|domain not found", re.I), "5.1.2"),
    (re.compile(r"user unknown|unknown user|no such user|does not exist|not recognized", re.I),
     "5.1.1"),
    (re.compile(r"could not initiate smtp conversation|connection (?:timed out|refused)", re.I),
     "5.3.2"),
    (re.compile(r"mailbox (?:is )?full|quota exceeded|over quota", re.I), "5.2.2"),
    (re.compile(r"relay(?:ing)? denied|access denied|blocked|spam", re.I), "5.7.1"),
)  # fmt: skip


def looks_like_bounce(
    message: Message,
    sender: str | None,
    sender_name: str,
    subject: str,
    diagnostic: str,
    attached: bool,
) -> bool:
    """Sent by a mail server about a failed delivery, not a person talking about one.

    ``attached``: the message carries a returned message as a MIME part (a
    person's reply may quote an "Original Message" inline, never attach one).
    """
    if subjects.SUBJECT_PREFIX.match(subject):
        return False
    if mime.raw_header(message, "X-Failed-Recipients").strip():
        return True
    local = (sender or "").partition("@")[0]
    daemon = sender is None or bool(_DAEMON_LOCAL.search(local) or _DAEMON_NAME.search(sender_name))
    null_path = mime.raw_header(message, "Return-Path").strip() == "<>"
    by_subject = _BOUNCE_SUBJECT.search(subject) is not None
    by_text = _FAILURE_TEXT.search(diagnostic[:5_000]) is not None
    if daemon:
        return by_subject or by_text or attached
    automated = bool(mime.raw_header(message, "Auto-Submitted").strip())
    return by_subject and (attached or null_path or (by_text and automated))


def from_text(
    message: Message,
    sender: str | None,
    subject: str,
    diagnostic: str,
    original: Message | None,
    library_view: Message | None,
) -> Bounce:
    """The bounce a free-text message is; ``library_view`` is what flufl.bounce may
    read (None: do not ask it)."""
    failed_header = [
        a.lower()
        for _, a in getaddresses([mime.raw_header(message, "X-Failed-Recipients")])
        if "@" in a
    ]
    temporary, permanent = _library_failures(library_view)
    excluded = _not_recipients(message, sender, original)
    recipients = [a for a in dict.fromkeys(failed_header + permanent + temporary) if a]
    if not recipients:
        recipients = _addresses_near_failures(diagnostic, excluded)
    delayed = _is_delay(subject, diagnostic, temporary, permanent)
    about = original_fields(original, None)
    return Bounce(
        recipients=tuple(recipients[:MAX_RECIPIENTS]),
        permanent=not delayed,
        delayed=delayed,
        status=_text_statuses(diagnostic, delayed),
        diagnostic=short(diagnostic),
        original_message_id=about.message_id,
        original_envelope_from=about.envelope_from,
        original_sender=about.sender,
        original_subject=about.subject,
    )


def _library_failures(message: Message | None) -> tuple[list[str], list[str]]:
    """Temporary and permanent failures according to flufl.bounce (if it is asked)."""
    if message is None or mime.has_unsafe_charset(message):
        return [], []
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a third-party detector on hostile input: no answer, not a crash
        return [], []
    return _decoded(temporary), _decoded(permanent)


def _decoded(addresses: frozenset[bytes] | frozenset[str]) -> list[str]:
    out: list[str] = []
    for address in addresses:
        text = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
        found = ADDRESS.search(text)
        if found:
            out.append(found.group().lower())
    return sorted(out)


def _not_recipients(message: Message, sender: str | None, original: Message | None) -> set[str]:
    """Addresses in a bounce that are never the failed recipient: its own parties."""
    excluded = {sender or ""}
    for name in ("To", "Return-Path", "Delivered-To", "X-Original-To"):
        excluded.update(a.lower() for _, a in getaddresses([mime.raw_header(message, name)]))
    if original is not None:
        for name in ("From", "Sender", "Return-Path", "Reply-To"):
            excluded.update(a.lower() for _, a in getaddresses([mime.raw_header(original, name)]))
    return excluded


def _addresses_near_failures(diagnostic: str, excluded: set[str]) -> list[str]:
    """Addresses that open a line (``<a@b>: reason``, or alone), stand on a failure
    line, or are listed under "the following recipients"; never a "from" address."""
    found: list[str] = []
    listing = 0
    for line in diagnostic.splitlines()[:300]:
        if _RECIPIENT_INTRO.search(line):
            listing = 6
        leading = _LEADING_ADDRESS.match(line)
        if leading is not None:
            found.append(leading.group(1))
        elif listing > 0 or _FAILURE_TEXT.search(line) is not None:
            found.extend(m.group(1) for m in _LISTED_ADDRESS.finditer(line))
        listing = max(0, listing - 1)
    cleaned = (_PREFIXED.sub("", address).lower() for address in found)
    return list(
        dict.fromkeys(
            address
            for address in cleaned
            if address not in excluded and not _DAEMON_LOCAL.search(address.partition("@")[0])
        )
    )


def _is_delay(subject: str, diagnostic: str, temporary: list[str], permanent: list[str]) -> bool:
    if temporary and not permanent:
        return True
    if permanent:
        return False
    delay_words = _DELAY_TEXT.search(subject) or _DELAY_TEXT.search(diagnostic[:5_000])
    return bool(delay_words) and not _PERMANENT_TEXT.search(diagnostic[:5_000])


def _text_statuses(diagnostic: str, delayed: bool) -> tuple[str, ...]:
    text = diagnostic[:MAX_DIAGNOSTIC_CHARS]
    codes = [".".join(m.groups()) for m in _FAILURE_STATUS.finditer(text)]
    if codes:
        return tuple(dict.fromkeys(codes))
    for pattern, code in _PHRASE_STATUS:
        if pattern.search(diagnostic[:5_000]):
            return (("4" if delayed else "5") + code[1:],)
    return ()
