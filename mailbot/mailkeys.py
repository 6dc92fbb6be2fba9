"""What identifies a received message before it is parsed: its Message-ID, a
digest of its content, and the dedup key made of both.

Standard library only, no I/O: the service and the pipe's store-only route
(``mailbot.intake``) compute the same key with this one code, so that the same
message delivered by SMTP and by the pipe is stored once.
"""

from __future__ import annotations

import hashlib
import re
from email.parser import BytesParser
from email.policy import compat32

MAX_RAW_BYTES = 4 * 1024 * 1024
"""Bytes of a message that are looked at for its Message-ID (as ``mailparse``)."""
MAX_HEADER_BYTES = 256 * 1024
"""Bytes of header section looked at (as ``mailparse``)."""
MAX_HEADER_CHARS = 8_000
"""Characters of the Message-ID field looked at."""
MAX_ID_CHARS = 900
"""Characters of a Message-ID kept (the column holds 998)."""

_MSGID = re.compile(r"<([^<>\s\x00-\x1f\x7f]+)>")
"""An id between brackets; one with a control character is no id (PostgreSQL
cannot store a NUL in a text column, and no MTA writes one)."""
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
"""A raw 8-bit byte, as the email parser escapes it into a header's text."""
_MBOX_FROM = re.compile(rb"\AFrom [^\r\n]*\r?\n")
_LEADING_BLANK = re.compile(rb"\A(?:[ \t]*\r?\n)+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")

ORIGINATOR_FIELDS = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "in-reply-to",
    "references",
)
"""What the author wrote: relays add trace fields (Received, Return-Path,
Delivered-To, X-Original-To, Authentication-Results, ARC-*, DKIM-Signature)
but leave these alone."""


def dedup_key(raw: bytes, message_id: str | None) -> str:
    """The same message delivered twice has the same key; two messages differ.

    A digest of the Message-ID with the message's content (see
    ``content_digest``): a copy that took another route, and so carries other
    trace headers, is the same message; a different message that reuses a
    Message-ID is not.
    """
    material = f"{message_id or ''}\n{content_digest(raw)}"
    return f"v2:{hashlib.sha256(material.encode()).hexdigest()}"


def legacy_keys(raw: bytes, message_id: str | None) -> tuple[str, ...]:
    """The keys rows stored by earlier versions have: a match is a duplicate only
    if that row's content has this message's ``dedup_key`` too."""
    if message_id:
        return (f"mid:{message_id}",)
    return (f"sha256:{hashlib.sha256(raw).hexdigest()}",)


def message_id(raw: bytes) -> str | None:
    """The Message-ID without brackets, read from the bounded header section only."""
    data = bounded(raw)
    text = _plain_message_id_field(data)
    if text is None:  # a header section the plain reading is not sure of
        try:
            value = BytesParser(policy=compat32).parsebytes(data, headersonly=True)["Message-ID"]
            text = "" if value is None else str(value)
        except Exception:  # any bytes: no id rather than a crash
            return None
    found = _MSGID.search(clean_surrogates(text[:MAX_HEADER_CHARS]))
    return found.group(1)[:MAX_ID_CHARS] if found else None


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_FOLD = (b" ", b"\t")


def _plain_message_id_field(data: bytes) -> str | None:
    """The Message-ID field as the email parser reads it ("" when there is
    none), if every line up to it is a plain ``Name: value`` field or a fold
    of one; else None, and the parser decides (a line it would end the header
    section at, an mbox ``From `` line, a nameless field, non-ASCII in the
    value). The parser costs more than storing a message; few are not plain."""
    value: list[bytes] = []
    for found in _LINE.finditer(data):
        line = found.group()
        if line in (b"\n", b"\r\n", b"\r"):  # the blank line: the body follows
            break
        if line[:1] in _FOLD:  # a fold (of a field before Message-ID: ignored)
            if value:
                value.append(line)
            continue
        if value:
            break  # the next field: Message-ID is whole
        name = _FIELD_NAME.match(line)
        if name is None:
            return None
        if name.group().lower() == b"message-id:":
            value.append(line[name.end() :].lstrip(b" \t"))
    field = b"".join(value).rstrip(b"\r\n")
    return field.decode("ascii") if field.isascii() else None


def bounded(raw: bytes) -> bytes:
    """The bytes holding the header section, bounded as the full parser bounds them.

    A leading mbox ``From `` line or blank lines (both seen in stored bounces)
    would otherwise make the parser read the headers as body.
    """
    data = raw[:MAX_RAW_BYTES]
    data = _LEADING_BLANK.sub(b"", _MBOX_FROM.sub(b"", data, count=1), count=1)
    if len(data) <= MAX_HEADER_BYTES or _HEADER_END.search(data, 0, MAX_HEADER_BYTES + 4):
        return data
    body = _HEADER_END.search(data)
    cut = data.rfind(b"\n", 0, MAX_HEADER_BYTES) + 1
    return data[:cut] + b"\n" + (data[body.end() :] if body else b"")


def clean_surrogates(text: str) -> str:
    """Raw 8-bit bytes in a header (escaped by the parser) become text again,
    as UTF-8 or else Windows-1252."""
    if not _ESCAPED_BYTE.search(text):
        return text
    data = text.encode("utf-8", errors="surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def content_digest(raw: bytes) -> str:
    """A digest of the originator fields and the body, blind to trace fields,
    header folding and line endings."""
    head, body = _split(raw)
    digest = hashlib.sha256()
    fields = _fields(head)
    for name in ORIGINATOR_FIELDS:
        for value in fields.get(name, ()):
            digest.update(name.encode() + b":" + b" ".join(value.split()) + b"\n")
    digest.update(b"\n")
    digest.update(body.replace(b"\r\n", b"\n").rstrip())
    return digest.hexdigest()


def _split(raw: bytes) -> tuple[bytes, bytes]:
    text = raw.replace(b"\r\n", b"\n")
    if text.startswith(b"From "):  # an mbox envelope line, added on delivery
        text = text.partition(b"\n")[2]
    head, _, body = text.partition(b"\n\n")
    return head, body


def _fields(head: bytes) -> dict[str, list[bytes]]:
    """Header fields by lower-case name, unfolded, in order."""
    fields: dict[str, list[bytes]] = {}
    name = ""
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and name:
            fields[name][-1] += b" " + line.strip()
            continue
        key, colon, value = line.partition(b":")
        if not colon:
            name = ""
            continue
        name = key.strip().lower().decode("ascii", "replace")
        fields.setdefault(name, []).append(value.strip())
    return fields
