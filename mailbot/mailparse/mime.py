"""Bounded, crash-proof access to a MIME message: headers, parts and decoded text.

Everything mailbot reads comes from strangers, so this layer enforces the
limits (bytes parsed, parts walked, nesting depth, characters of text) and
turns every decoding problem into replacement characters. Nothing here raises
on any input; callers can trust what they get back to be bounded ``str``.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import suppress
from email import policy
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser

from mailbot import mailkeys

MAX_RAW_BYTES = mailkeys.MAX_RAW_BYTES
"""Bytes of a message that are parsed at all; the rest (big attachments) is cut."""
MAX_HEADER_BYTES = mailkeys.MAX_HEADER_BYTES
"""Bytes of header section parsed; real headers (long Received chains, DKIM) are far smaller."""
MAX_BOUNDARY_LINES = 1000
"""Lines starting with ``--`` parsed: bounds how many MIME parts the parser builds."""
MAX_PARTS = 200
"""MIME parts walked when looking for text, forwards and bounce reports."""
MAX_DEPTH = 8
"""Nesting depth of multiparts and attached messages walked."""
MAX_TEXT_CHARS = 1_000_000
"""Characters of decoded text kept from one part (about 1 MB)."""
MAX_HEADER_CHARS = 8_000
"""Characters of one header value kept."""

# Decoders that are slow (quadratic) or not about text: never trusted with a body.
_UNSAFE_CODECS = frozenset({"punycode", "idna", "raw_unicode_escape", "unicode_escape", "mbcs"})
_CHARSET_ALIASES = {
    "unicode-1-1-utf-7": "utf-7",
    "x-unknown": "utf-8",
    "unknown-8bit": "utf-8",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "iso-8859-8-i": "iso-8859-8",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-mac-roman": "mac-roman",
}


def load(raw: bytes) -> Message:
    """Parse bounded raw bytes; a message the parser cannot build becomes plain text.

    A leading mbox ``From `` line or blank lines (both seen in stored bounces)
    would otherwise make the parser read the headers as body.
    """
    data = trim(raw)
    try:
        return BytesParser(policy=policy.compat32).parsebytes(data)
    except Exception:  # deep nesting (RecursionError) and parser bugs alike
        return _flat(data)


def trim(raw: bytes) -> bytes:
    """The bytes worth parsing: bounded in size, header section and MIME boundaries."""
    data = mailkeys.bounded(raw)
    position = -1
    for _ in range(MAX_BOUNDARY_LINES):
        position = data.find(b"\n--", position + 1)
        if position < 0:
            return data
    return data[:position]


def _flat(data: bytes) -> Message:
    """Headers as parsed, body as one plain-text part (used when MIME parsing fails)."""
    head, _, body = data.partition(b"\n\n")
    try:
        message = BytesParser(policy=policy.compat32).parsebytes(head + b"\n\n", headersonly=True)
    except Exception:  # last resort: an empty message
        message = Message()
    for name in ("Content-Type", "Content-Transfer-Encoding"):
        del message[name]
    message.set_payload(body.decode("utf-8", errors="replace"))
    return message


def header(message: Message, name: str) -> str:
    """A header, RFC 2047 words decoded, bounded; absent or broken reads as ``""``."""
    try:
        value = message.get(name)
    except Exception:  # header objects can fail in many ways
        return ""
    if value is None:
        return ""
    try:
        text = value if isinstance(value, str) else _as_sent(message, name)
    except Exception:  # any input
        return ""
    return decode_words(text[:MAX_HEADER_CHARS])


def _as_sent(message: Message, name: str) -> str:
    """A header with raw 8-bit bytes as the parser keeps it: the ``Header`` it
    hands out instead would replace each such byte, and UTF-8 text (RFC 6532)
    is common."""
    wanted = name.lower()
    for key, value in message.raw_items():
        if key.lower() == wanted:
            return str(value)
    return ""


def raw_header(message: Message, name: str) -> str:
    """A header as sent (no RFC 2047 decoding), bounded: for addresses and ids."""
    try:
        value = message.get(name)
        text = "" if value is None else str(value)
    except Exception:  # any input
        return ""
    return mailkeys.clean_surrogates(text[:MAX_HEADER_CHARS])


def all_headers(message: Message, limit: int = 200) -> dict[str, str]:
    """The first value of each header, names lower-cased, values decoded and bounded."""
    found: dict[str, str] = {}
    try:
        keys = list(message.keys())[:limit]
    except Exception:  # any input
        return found
    for key in keys:
        name = mailkeys.clean_surrogates(str(key)).lower()
        if name not in found:
            found[name] = header(message, key)
    return found


def header_names(message: Message, limit: int = 500) -> list[str]:
    try:
        return [mailkeys.clean_surrogates(str(key)).lower() for key in list(message.keys())[:limit]]
    except Exception:  # any input
        return []


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded with replacement; raw 8-bit bytes read as UTF-8."""
    value = mailkeys.clean_surrogates(value)
    if "=?" not in value:
        return value
    try:
        chunks = decode_header(value)
    except Exception:  # malformed encoded words: keep the text as is
        return value
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(decode_bytes(chunk, charset))
    joined = "".join(out)
    return joined if "\x00" not in joined else joined.replace("\x00", "")


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes to text with the declared charset, else UTF-8, else Windows-1252."""
    codec = _codec(charset)
    if codec is not None and codec != "utf-8":
        with suppress(Exception):  # some codecs raise despite errors="replace"
            return data.decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if info.name in _UNSAFE_CODECS or not getattr(info, "_is_text_encoding", True):
        return None
    return "utf-8" if info.name == "utf-8" else info.name


def has_unsafe_charset(message: Message) -> bool:
    """Whether some part declares a codec that misbehaves on arbitrary bytes (punycode...).

    The standard library decodes such parts for code that reads them without
    going through ``decoded_text`` (third-party detectors), and may raise.
    """
    for part, _ in walk(message, into_messages=True):
        charset = param(part, "charset").strip().strip("\"'").lower()
        if not charset:
            continue
        try:
            name = codecs.lookup(_CHARSET_ALIASES.get(charset, charset)).name
        except (LookupError, ValueError, TypeError):
            continue
        if name in _UNSAFE_CODECS or name.startswith("utf-7"):
            return True
    return False


def content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # any input
        return "text/plain"


def disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:  # any input
        return ""


def param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:  # any input
        return ""
    return value if isinstance(value, str) else ""


def decoded_text(part: Message) -> str:
    """A leaf part's content as text, transfer encoding and charset undone, bounded."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # any input: broken base64 / quoted-printable
        payload = None
    if not isinstance(payload, bytes):
        try:
            raw = part.get_payload()
        except Exception:  # any input
            return ""
        return raw[:MAX_TEXT_CHARS] if isinstance(raw, str) else ""
    charset = None
    try:
        charset = part.get_content_charset()
    except Exception:  # any input
        charset = None
    return decode_bytes(payload[: MAX_TEXT_CHARS * 2], charset)[:MAX_TEXT_CHARS]


def children(part: Message) -> list[Message]:
    """Sub-parts of a multipart, or the message inside a ``message/*`` part."""
    try:
        if not part.is_multipart():
            return []
        payload = part.get_payload()
    except Exception:  # any input
        return []
    if isinstance(payload, list):
        return [p for p in payload[:MAX_PARTS] if isinstance(p, Message)]
    return []


def attached_message(part: Message) -> Message | None:
    """The message carried by a ``message/rfc822`` part (or text/rfc822-headers)."""
    kind = content_type(part)
    if kind in ("message/rfc822", "message/global"):
        inner = children(part)
        if inner:
            return inner[0]
        return parse_text_message(decoded_text(part))
    if kind in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
        return parse_text_message(decoded_text(part))
    return None


def parse_text_message(text: str) -> Message | None:
    if not text.strip():
        return None
    data = text[:MAX_TEXT_CHARS].encode("utf-8", errors="replace")
    try:
        return BytesParser(policy=policy.compat32).parsebytes(data)
    except Exception:  # any input
        return None


def walk(message: Message, *, into_messages: bool = False) -> Iterator[tuple[Message, int]]:
    """Parts with their depth, breadth-first order kept, bounded in count and depth.

    Attached messages are leaves unless ``into_messages``: their content belongs
    to someone else (a forwarded or returned message), not to this sender.
    """
    stack: list[tuple[Message, int]] = [(message, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part, depth
        if depth >= MAX_DEPTH:
            continue
        if content_type(part).startswith("message/") and not into_messages:
            continue
        stack.extend((child, depth + 1) for child in reversed(children(part)))


def body_parts(message: Message) -> tuple[str | None, str | None]:
    """The first inline text/plain and text/html bodies of this message (not attachments)."""
    plain: str | None = None
    html: str | None = None
    for part, _ in walk(message):
        kind = content_type(part)
        if kind not in ("text/plain", "text/html") or disposition(part) == "attachment":
            continue
        if kind == "text/plain" and plain is None:
            plain = decoded_text(part)
        elif kind == "text/html" and html is None:
            html = decoded_text(part)
        if plain is not None and html is not None:
            break
    return plain, html
