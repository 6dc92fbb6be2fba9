"""The bounce's own words and the message it returns: the text before the returned
message, and the returned message itself (attached as ``message/rfc822`` or
``text/rfc822-headers``, or pasted inline below a marker line), whose
Message-ID and envelope sender tell which of mailbot's mails bounced."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.utils import parseaddr

from mailbot.mailparse import mime
from mailbot.mailparse.bounces.bounce import MAX_DIAGNOSTIC_CHARS, short
from mailbot.mailparse.htmltext import html_to_text

_MSGID = re.compile(r"<([^<>\s]{1,900})>")
_ORIGINAL_MARKER = re.compile(
    r"^\s*[-=*_ ]*(?:the )?(?:this is a copy of the message"
    r"|original message\s*(?:headers?\b|follows?\b|as received|below|[-=*:]|$)"
    r"|returned mail|undelivered message|below this line"
    r"|your message (?:follows|reads)|message headers follow|text of the message"
    r"|unsent message below|headers of the original message|returned message"
    r"|header of the original message"
    r"|ceci est une copie du message|en-t[êe]tes (?:du|de) message d'origine|message d'origine"
    r"|es folgen die kopfzeilen|urspr[üu]ngliche nachricht"
    r"|encabezados de (?:l )?mensaje original|mensaje original"
    r"|intestazioni originali del messaggio)",
    re.IGNORECASE,
)
"""The line after which a bounce pastes the returned message or its headers, in
the MTAs' own wordings and in the languages Exchange, Exim and GMX translate it
into; neither Office 365's "Original Message Details" summary nor Sendmail's
"The original message was received at" is one."""


def diagnostic_text(message: Message) -> str:
    """The bounce's own words: its text parts before the returned message, bounded."""
    texts: list[str] = []
    for part, _ in mime.walk(message):
        kind = mime.content_type(part)
        if kind in ("text/plain", "text/html"):
            text = mime.decoded_text(part)[:MAX_DIAGNOSTIC_CHARS]
            if kind == "text/html":
                text = html_to_text(text)
            texts.append(_before_original(text))
        if sum(len(t) for t in texts) > MAX_DIAGNOSTIC_CHARS:
            break
    return "\n".join(texts)[:MAX_DIAGNOSTIC_CHARS]


def _before_original(text: str) -> str:
    lines = text.splitlines()
    for index, line in enumerate(lines[:2_000]):
        if _ORIGINAL_MARKER.match(line):
            return "\n".join(lines[:index])
    return text


def original(message: Message) -> tuple[Message | None, bool]:
    """The returned message: an attached one (True), else one pasted below a marker line."""
    for part, depth in mime.walk(message):
        if depth > 0:
            inner = mime.attached_message(part)
            if inner is not None:
                return inner, True
    return _inline_original(message), False


def _inline_original(message: Message) -> Message | None:
    plain, _ = mime.body_parts(message)
    if not plain:
        return None
    lines = plain.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines[:2_000]):
        if _ORIGINAL_MARKER.match(line):
            rest = [re.sub(r"^>\s?", "", x) for x in lines[index + 1 : index + 400]]
            while rest and not rest[0].strip():
                rest.pop(0)
            return mime.parse_text_message("\n".join(rest))
    return None


@dataclass(frozen=True)
class Original:
    message_id: str | None = None
    envelope_from: str | None = None
    sender: str | None = None
    subject: str = ""


def original_fields(original: Message | None, envelope_from: str | None) -> Original:
    if original is None:
        return Original(envelope_from=envelope_from)
    found = _MSGID.search(mime.raw_header(original, "Message-ID"))
    return_path = parseaddr(mime.raw_header(original, "Return-Path"))[1].lower()
    sender = parseaddr(mime.raw_header(original, "From"))[1].lower()
    return Original(
        message_id=found.group(1) if found else None,
        envelope_from=envelope_from or (return_path if "@" in return_path else None),
        sender=sender if "@" in sender else None,
        subject=short(mime.header(original, "Subject"), 300),
    )


def answered_id(message: Message) -> str | None:
    """The Message-ID a report says it answers (``In-Reply-To``), if exactly one."""
    found = _MSGID.findall(mime.raw_header(message, "In-Reply-To"))
    return found[0] if len(found) == 1 else None
