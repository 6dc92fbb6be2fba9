"""Build the RFC 5322 bytes of an outgoing mail, immune to header injection.

Every value that may come from a person (names, subjects, service names) is
folded to one line before it reaches a header, and addresses go through
``email.headerregistry.Address``, which refuses a line break in one.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from email.header import Header, decode_header, make_header
from email.headerregistry import Address
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


def compose(envelope: Envelope, mail: RenderedMail) -> bytes:
    """The mail as multipart/alternative (text, then HTML), lines ended by CRLF.

    Written field by field rather than through ``email.message.EmailMessage``:
    its header registry parses back every value it is given, which made
    composing the largest cost of sending a mail. What made it safe is kept:
    each value is one line before it is folded (``one_line``, or ``_field``
    refuses it), addresses are checked by ``Address``, and anything not plain
    ASCII is encoded (RFC 2047 words, quoted-printable bodies).
    """
    fields = [
        ("From", mailbox(envelope.sender_name, envelope.sender)),
        ("To", mailbox(envelope.to_name, envelope.to)),
        ("Subject", _text(one_line(mail.subject, 250), "Subject")),
        ("Date", rfc5322_date(envelope.date)),
        ("Message-ID", f"<{envelope.message_id}>"),
        ("Auto-Submitted", "auto-replied" if envelope.in_reply_to else "auto-generated"),
        ("X-Auto-Response-Suppress", "All"),
        ("X-Loop", envelope.sender),
        ("X-Mailbot-Event", envelope.event),
    ]
    if envelope.request_id:
        fields.append(
            ("X-Mailbot-Request", _text(one_line(envelope.request_id, 32), "X-Mailbot-Request"))
        )
    if envelope.error_code:
        fields.append(("X-Mailbot-Error", envelope.error_code))
    if envelope.reply_to:
        fields.append(("Reply-To", mailbox(envelope.sender_name, envelope.reply_to)))
    thread = [ref for ref in (*envelope.references, envelope.in_reply_to) if ref]
    ids = [f"<{ref}>" for ref in map(_message_id, thread[-10:]) if ref]
    if envelope.in_reply_to and _message_id(envelope.in_reply_to):
        fields.append(("In-Reply-To", f"<{_message_id(envelope.in_reply_to)}>"))
    if envelope.in_reply_to and ids:
        fields.append(("References", _folded(" ".join(ids), len("References: "))))
    text, html = _part("plain", mail.text), _part("html", mail.html)
    boundary = _boundary(text + html)
    fields += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative;{_CRLF} boundary="{boundary}"'),
        ("Content-Language", envelope.language),
    ]
    head = "".join(_field(name, value) for name, value in fields)
    delimiter = f"--{boundary}{_CRLF}".encode("ascii")
    closing = f"--{boundary}--{_CRLF}".encode("ascii")
    return b"".join((head.encode(), _CRLF_BYTES, delimiter, text, delimiter, html, closing))


_CRLF = "\r\n"
_CRLF_BYTES = b"\r\n"
_FOLD_AT = 78
_SPECIALS = frozenset('()<>@,:;.\\"[]')
_MESSAGE_ID_CHARS = re.compile(r"[!-;=?-~]+")
"""Printable ASCII but the angle brackets: what fits between ``<`` and ``>``."""


def mailbox(name: str, email: str) -> str:
    """``Display Name <local@domain>``, the name quoted or encoded as it needs.

    ``Address`` refuses an address with a line break in it. A non-ASCII
    address is written as UTF-8 (RFC 6532): the sender hands such a mail over
    only with SMTPUTF8, and an encoded word is not allowed in an address.
    """
    local, _, domain = email.partition("@")
    addr_spec = Address(username=local, domain=domain).addr_spec
    name = one_line(name, 100)
    if not name:
        return addr_spec
    if not _plain(name):
        return f"{_encoded(name, 'Reply-To')}{_CRLF} <{addr_spec}>"
    if not _SPECIALS.isdisjoint(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    name = _folded(name, len("Reply-To: "))
    _, fold, last = name.rpartition(_CRLF)
    used = len(last) + (1 if fold else len("Reply-To: "))
    return f"{name}{_CRLF if used + len(addr_spec) + 3 > _FOLD_AT else ''} <{addr_spec}>"


def _text(value: str, name: str) -> str:
    """An unstructured value: folded at spaces when plain ASCII, else RFC 2047 words."""
    if _plain(value):
        return _folded(value, len(name) + 2)
    return _encoded(value, name)


def _plain(value: str) -> bool:
    """ASCII that a reader will not take for an encoded word."""
    return value.isascii() and "=?" not in value


def _encoded(value: str, name: str) -> str:
    return Header(value, "utf-8", header_name=name).encode(linesep=_CRLF)


def _folded(value: str, used: int) -> str:
    """Spaces before words that would pass the 78th column become folds
    (a word longer than a line stays whole: the limit that matters is 998)."""
    if used + len(value) <= _FOLD_AT:
        return value
    lines: list[str] = []
    line = ""
    for word in value.split(" "):
        if line and used + len(line) + 1 + len(word) > _FOLD_AT:
            lines.append(line)
            line, used = word, 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return f"{_CRLF} ".join(lines)


def _message_id(value: str) -> str | None:
    """A Message-ID we refer to, without its brackets; None when it is not one
    that can be written back as it is."""
    value = value.strip().removeprefix("<").removesuffix(">")
    return value if len(value) <= 900 and _MESSAGE_ID_CHARS.fullmatch(value) else None


def _field(name: str, value: str) -> str:
    """One header field; a line break in a value is refused, a fold is kept."""
    if "\r" in value.replace(f"{_CRLF} ", "") or "\n" in value.replace(f"{_CRLF} ", ""):
        raise ValueError(f"a line break in the {name} field")
    return f"{name}: {value}{_CRLF}"


def _part(subtype: str, text: str) -> bytes:
    """One body part: 7bit when it is short-lined ASCII, quoted-printable otherwise."""
    lines = text.encode().splitlines()  # CR, LF or CRLF, as the email package splits
    body = _CRLF_BYTES.join(lines) + _CRLF_BYTES
    if body.isascii() and max(map(len, lines), default=0) <= _FOLD_AT:
        encoding, payload = "7bit", body
    else:
        encoding, payload = "quoted-printable", binascii.b2a_qp(body, istext=True)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}'
        f"Content-Transfer-Encoding: {encoding}{_CRLF}{_CRLF}"
    )
    # The CRLF before a delimiter is the delimiter's: the part's own last one stays.
    return head.encode("ascii") + payload + _CRLF_BYTES


def _boundary(content: bytes) -> str:
    while True:
        boundary = f"=_mailbot_{secrets.token_hex(16)}"
        if boundary.encode("ascii") not in content:
            return boundary
