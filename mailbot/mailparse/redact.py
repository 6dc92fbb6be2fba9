"""Secrets taken out of what mailbot keeps: stored mail, recipients, logs, events.

A validation token and a reply key (``changes+<key>@``) are credentials: with
either, a bare ACCEPT decides for the contact it was sent to. mailbot needs
them while it processes a message; afterwards the stored copy, the stored
recipients and every log line show ``[redacted]`` in their place.

What is redacted is deliberately generous: every run of letters and digits
shaped like a token (20 characters with a digit, or the displayed
``XXXX-XXXX-XXXX-XXXX-XXXX`` form, any case), everything after ``/v/`` in a
link, and every key after ``+`` in an address of the bot except the VERP
bounce keys, which name a sent mail and prove nothing. A harmless word shaped
like a token is lost from the audit copy; a live token is never kept.

Pure functions of bytes and text: no I/O.
"""

from __future__ import annotations

import base64
import quopri
import re
from email import message_from_bytes
from email import policy as email_policy
from email.header import Header, decode_header, make_header
from email.message import Message

from mailbot import tokens

MARK = "[redacted]"
_ALNUM = "0-9A-Za-z"
_DISPLAYED = (
    rf"[{_ALNUM}]{{4}}(?P<a>[- ])[{_ALNUM}]{{4}}(?:(?P=a)[{_ALNUM}]{{4}}){{3}}"
    rf"|[{_ALNUM}]{{5}}(?P<b>[- ])[{_ALNUM}]{{5}}(?:(?P=b)[{_ALNUM}]{{5}}){{2}}"
)
_RUN = rf"[{_ALNUM}]{{{tokens.TOKEN_LENGTH}}}"
_TOKEN = re.compile(rf"(?<![{_ALNUM}])(?:{_DISPLAYED}|{_RUN})(?![{_ALNUM}])")
_LINK = re.compile(r"(/v/|%2Fv%2F)[^\s\"'<>&)\]]+", re.IGNORECASE)
_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/]{60,}={0,2}\r?\n?$")
"""A line of a base64 part: an attachment's bytes, left whole (text parts are
decoded and redacted before)."""
_HEADER_SKIP = frozenset({"message-id", "in-reply-to", "references"})
"""Threading headers name messages, never carry a token, and keep the audit useful."""


def text(value: str, bot_local_part: str | None = None) -> str:
    """``value`` with every token, link token and reply key replaced by the marker."""
    value = _LINK.sub(lambda m: m.group(1) + MARK, value)
    if bot_local_part:
        value = _plus_key(bot_local_part).sub(_keep_bounce, value)
    return _TOKEN.sub(_token_mark, value)


def address(value: str, bot_local_part: str) -> str:
    """A recipient as logged or stored: the bot's address without its reply key."""
    return _plus_key(bot_local_part).sub(_keep_bounce, value)


def addresses(values: str, bot_local_part: str) -> str:
    """A comma-separated recipient list with every reply key taken out."""
    return address(values, bot_local_part)


def raw_message(raw: bytes, bot_local_part: str) -> bytes:
    """The stored message with its secrets replaced by the marker.

    Where the bytes are encoded (base64 parts, quoted-printable whose soft
    line breaks may cut a link in two, RFC 2047 headers) a token cannot be
    seen in them: those parts and headers are decoded, redacted and encoded
    again the same way first, and the rest of the message is left as it was.
    Then a pass over the bytes as they are takes care of the headers and of
    plain text.
    """
    return _bytes(_decoded_parts(raw, bot_local_part), bot_local_part)


def _decoded_parts(raw: bytes, bot_local_part: str) -> bytes:
    try:
        message = message_from_bytes(raw, policy=email_policy.compat32)
        return message.as_bytes() if _rewrite_parts(message, bot_local_part) else raw
    except Exception:  # a message the email package cannot write back: bytes only
        return raw


def _bytes(raw: bytes, bot_local_part: str) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    lines = head.decode("latin-1").splitlines(keepends=True)
    out: list[str] = []
    skipping = False
    for line in lines:
        if line[:1] not in (" ", "\t"):
            skipping = line.partition(":")[0].strip().lower() in _HEADER_SKIP
        out.append(address(line, bot_local_part) if skipping else text(line, bot_local_part))
    scrubbed_body = "".join(
        line if _BASE64_LINE.match(line) else text(line, bot_local_part)
        for line in body.decode("latin-1").splitlines(keepends=True)
    )
    return "".join(out).encode("latin-1") + sep + scrubbed_body.encode("latin-1")


def _rewrite_parts(message: Message, bot_local_part: str) -> bool:
    """Redact the decoded text of encoded parts; True when one had to change."""
    changed = False
    for part in message.walk():
        changed = _rewrite_headers(part, bot_local_part) or changed
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding not in ("base64", "quoted-printable"):
            continue
        decoded = part.get_payload(decode=True)
        if not isinstance(decoded, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            content = decoded.decode(charset, "replace")
        except LookupError:
            content, charset = decoded.decode("latin-1"), "latin-1"
        redacted = text(content, bot_local_part)
        if redacted == content:
            continue
        data = redacted.encode(charset, "replace")
        if encoding == "base64":
            part.set_payload(base64.encodebytes(data).decode("ascii"))
        else:
            part.set_payload(quopri.encodestring(data).decode("ascii"))
        changed = True
    return changed


def _rewrite_headers(part: Message, bot_local_part: str) -> bool:
    """Headers whose text is hidden in RFC 2047 encoded words (a subject with accents)."""
    changed = False
    for name, value in list(part.items()):
        value = str(value)
        if "=?" not in value:
            continue
        decoded = str(make_header(decode_header(value)))
        redacted = text(decoded, bot_local_part)
        if redacted != decoded:
            part.replace_header(name, Header(redacted, "utf-8").encode())
            changed = True
    return changed


def _plus_key(local_part: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.+-])({re.escape(local_part)}\+)([^@\s<>\"',;]+)(?=@)", re.I)


def _keep_bounce(match: re.Match[str]) -> str:
    key = match.group(2)
    if key.lower().startswith("bounce-"):
        return match.group(0)
    return match.group(1) + MARK


def _token_mark(match: re.Match[str]) -> str:
    written = match.group(0)
    if "-" in written or " " in written:  # the displayed form, or groups of four
        compact = re.sub(r"[- ]", "", written)
        return MARK if any(ch.isdigit() for ch in compact) or "-" in written else written
    return MARK if any(ch.isdigit() for ch in written) else written
