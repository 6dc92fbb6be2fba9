"""Build the RFC 5322 bytes of an outgoing mail, immune to header injection.

Every value that may come from a person (names, subjects, service names) is
folded to one line before it reaches a header, and addresses go through
``email.headerregistry.Address``, which refuses anything that is not one.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime as rfc5322_date

from mailbot.outgoing.render import RenderedMail


@dataclass(frozen=True)
class Envelope:
    """Everything about a mail but its rendered content."""

    sender_name: str
    sender: str
    to_name: str
    to: str
    event: str
    language: str
    date: datetime
    message_id: str
    request_id: str | None = None
    error_code: str | None = None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


def new_message_id(domain: str) -> str:
    """32 hex digits: the time in milliseconds, then 80 random bits.

    Random enough that no one guesses the bounce address it is part of;
    ordered by time so that the outbox's unique index on it grows at its
    end, where a random id would touch a page anywhere in it for each mail.
    """
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{secrets.randbits(80):020x}@{domain}"


BOUNCE_PREFIX = "bounce-"


def bounce_address(local_part: str, domain: str, message_id: str) -> str:
    """The envelope sender of a mail: a VERP address that names the mail it came with.

    A bounce is sent to it, so the key after ``+`` leads back to the outbox row
    (and so to the validation) without trusting anything inside the bounce.
    """
    return f"{local_part}+{BOUNCE_PREFIX}{message_id.partition('@')[0]}@{domain}"


def bounced_message_id(address: str, local_part: str, domain: str) -> str | None:
    """The Message-ID a bounce address was made for, or None if it is not one of ours."""
    local, _, at = address.strip().lower().rpartition("@")
    base, _, key = local.partition("+")
    if at != domain.lower() or base != local_part.lower() or not key.startswith(BOUNCE_PREFIX):
        return None
    return f"{key.removeprefix(BOUNCE_PREFIX)}@{domain}"


def one_line(value: str, limit: int = 200) -> str:
    """Whitespace (CR and LF included) collapsed to single spaces, bounded.

    RFC 2047 encoded words are decoded first, until nothing changes: the email
    package decodes them when a header is set, so ``=?utf-8?q?=0D=0A...?=``
    would otherwise smuggle a line break past a plain whitespace fold.
    """
    for _ in range(5):
        decoded = " ".join(_decode_words(value).split())
        if decoded == value:
            break
        value = decoded
    return value[:limit]


def _decode_words(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value.replace("=?", "= ?")


def address(name: str, email: str) -> Address:
    local, _, domain = email.partition("@")
    return Address(display_name=one_line(name, 100), username=local, domain=domain)


def compose(envelope: Envelope, mail: RenderedMail) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = address(envelope.sender_name, envelope.sender)
    message["To"] = address(envelope.to_name, envelope.to)
    message["Subject"] = one_line(mail.subject, 250)
    message["Date"] = rfc5322_date(envelope.date)
    message["Message-ID"] = f"<{envelope.message_id}>"
    message["Auto-Submitted"] = "auto-replied" if envelope.in_reply_to else "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Loop"] = envelope.sender
    message["X-Mailbot-Event"] = envelope.event
    if envelope.request_id:
        message["X-Mailbot-Request"] = one_line(envelope.request_id, 32)
    if envelope.error_code:
        message["X-Mailbot-Error"] = envelope.error_code
    if envelope.reply_to:
        message["Reply-To"] = address(envelope.sender_name, envelope.reply_to)
    if envelope.in_reply_to:
        message["In-Reply-To"] = f"<{one_line(envelope.in_reply_to, 900)}>"
        chain = [*envelope.references, envelope.in_reply_to][-10:]
        message["References"] = " ".join(f"<{one_line(ref, 900)}>" for ref in chain)
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    message["Content-Language"] = envelope.language  # after: set_content clears Content-*
    return message.as_bytes()
