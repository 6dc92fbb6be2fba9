"""Bounces that are not RFC 3464 reports: recognised by who sends them and how they
read (the wordings are in ``phrases``), their recipients found by Mailman's
``flufl.bounce`` detectors, then by rules on the report's layout: addresses
that open a line or follow a recipient label, addresses listed under an intro
or standing on a failure line, and, failing those, the one addressee of the
returned message."""

from __future__ import annotations

import re
from email.message import Message
from email.utils import getaddresses

from flufl.bounce import all_failures

from mailbot.mailparse import mime, robots, subjects
from mailbot.mailparse.bounces import phrases
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
_LEADING_ADDRESS = re.compile(rf"^\s*[<\"]?{_WHOLE_ADDRESS}[>\"]?(?:\s|:|\.\.\.|$)", re.IGNORECASE)
_LISTED_ADDRESS = re.compile(rf"(?<!from )(?<!from <){_WHOLE_ADDRESS}", re.IGNORECASE)
_FIELD_ADDRESS = re.compile(rf"{phrases.RECIPIENT_FIELD.pattern}{_WHOLE_ADDRESS}", re.IGNORECASE)
_NDR_MARK = re.compile(r"^x-ms-exchange-message-is-ndr$", re.IGNORECASE)
_PREFIXED = re.compile(r"^(?:smtp|rfc822|x400)[=:;]", re.IGNORECASE)


def looks_like_bounce(
    message: Message,
    sender: str | None,
    sender_name: str,
    subject: str,
    diagnostic: str,
    original: Message | None,
    attached: bool,
) -> bool:
    """Sent by a mail server about a failed delivery, not a person talking about one.

    ``attached``: the message carries a returned message as a MIME part (a
    person's reply may quote an "Original Message" inline, never attach one).
    An automatic reply (its subject says so) is never a bounce, whoever sends
    it: a mailbox named postmaster may have an out-of-office too; nor is a
    notice that says the mail arrived and says nothing of a failure.
    """
    if subjects.SUBJECT_PREFIX.match(subject) or robots.out_of_office_subject(subject):
        return False
    if mime.raw_header(message, "X-Failed-Recipients").strip():
        return True
    by_subject = phrases.BOUNCE_SUBJECT.search(subject) is not None
    text = diagnostic[:5_000]
    by_text = phrases.FAILURE_TEXT.search(text) or phrases.DELAY_NOTICE.search(text)
    if not by_text and (phrases.DELIVERED.search(subject) or phrases.DELIVERED.search(text)):
        return False
    if _from_a_server(message, sender, sender_name):
        return by_subject or bool(by_text) or attached
    null_path = mime.raw_header(message, "Return-Path").strip() == "<>"
    automated = bool(mime.raw_header(message, "Auto-Submitted").strip())
    echoed = _returns_to_us(message, original)
    return by_subject and (attached or null_path or echoed or (bool(by_text) and automated))


def _from_a_server(message: Message, sender: str | None, sender_name: str) -> bool:
    """Sent by a mail system: no sender, a daemon's address or name, or Exchange's
    mark on its non-delivery reports."""
    if sender is None or any(_NDR_MARK.match(name) for name in mime.header_names(message)):
        return True
    local = sender.partition("@")[0]
    return bool(phrases.DAEMON_LOCAL.search(local) or phrases.DAEMON_NAME.search(sender_name))


def _returns_to_us(message: Message, original: Message | None) -> bool:
    """The returned message's envelope sender is where this message was delivered:
    the bounce came back along the return path, as bounces do."""
    if original is None:
        return False
    envelope = original_fields(original, None).envelope_from
    return envelope is not None and envelope in _own_addresses(message)


def _own_addresses(message: Message) -> set[str]:
    names = ("To", "Delivered-To", "X-Original-To", "Envelope-To")
    values = [mime.raw_header(message, name) for name in names]
    return {a.lower() for _, a in getaddresses(values) if "@" in a}


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
    if not recipients:
        recipients = _sole_original_recipient(original, excluded)
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
    """Addresses that open a line (``<a@b>: reason``, ``"a@b":``, or alone), follow a
    recipient label ("RCPT TO:", "Recipient Address:"), stand on a failure line,
    or are listed under "the following recipients"; never a "from" address."""
    found: list[str] = []
    listing = 0
    for line in diagnostic.splitlines()[:300]:
        if phrases.RECIPIENT_INTRO.search(line):
            listing = 6
        leading = _LEADING_ADDRESS.match(line) or _FIELD_ADDRESS.match(line)
        if leading is not None:
            found.append(leading.group(1))
        elif listing > 0 or phrases.FAILURE_TEXT.search(line) is not None:
            found.extend(m.group(1) for m in _LISTED_ADDRESS.finditer(line))
        listing = max(0, listing - 1)
    cleaned = (_PREFIXED.sub("", address).lower() for address in found)
    return list(
        dict.fromkeys(
            address
            for address in cleaned
            if address not in excluded
            and not phrases.DAEMON_LOCAL.search(address.partition("@")[0])
        )
    )


def _sole_original_recipient(original: Message | None, excluded: set[str]) -> list[str]:
    """The one addressee of the returned message, for reports that name nobody in
    their text (Google Workspace's "Message not delivered"): a returned message
    sent to several people, or to a mailing list, says nothing about which
    address failed."""
    if original is None or robots.is_list(original):
        return []
    values = [mime.raw_header(original, name) for name in ("To", "Cc")]
    addressees = {a.lower() for _, a in getaddresses(values) if "@" in a} - excluded
    return list(addressees) if len(addressees) == 1 else []


def _is_delay(subject: str, diagnostic: str, temporary: list[str], permanent: list[str]) -> bool:
    """A delay warning, not a failure: the report says the server stopped trying
    (never a delay), or that it is still trying (a delay), or else the detectors'
    and the words' reading."""
    text = diagnostic[:5_000]
    if phrases.GIVEN_UP.search(text):
        return False
    if phrases.DELAY_NOTICE.search(subject) or phrases.DELAY_NOTICE.search(text):
        return True
    if temporary and not permanent:
        return True
    if permanent:
        return False
    delay_words = phrases.DELAY_WORDS.search(subject) or phrases.DELAY_WORDS.search(text)
    return bool(delay_words) and not phrases.PERMANENT_TEXT.search(text)


def _text_statuses(diagnostic: str, delayed: bool) -> tuple[str, ...]:
    text = diagnostic[:MAX_DIAGNOSTIC_CHARS]
    codes = [".".join(m.groups()) for m in _FAILURE_STATUS.finditer(text)]
    if codes:
        return tuple(dict.fromkeys(codes))
    for pattern, code in phrases.PHRASE_STATUS:
        if pattern.search(diagnostic[:5_000]):
            return (("4" if delayed else "5") + code[1:],)
    return ()
