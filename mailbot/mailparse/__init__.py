"""Raw bytes in, a normalised message out. Pure: no database, no network.

Real mail is hostile and broken in every way a parser can imagine, so nothing
here raises: headers that cannot be decoded read as absent or with
replacement characters, and the work done on one message is bounded (see the
limits in ``mailparse.mime``). The pieces:

- ``mime``: bounded MIME walking, charsets, RFC 2047 headers;
- ``subjects``: the one list of reply and forward subject prefixes;
- ``htmltext``: HTML bodies to text, quotes and signatures marked;
- ``quotes``: the new text of a reply (quotes, attributions, header
  blocks, signatures removed), on the ``lines`` of the text, with the rules of
  ``attributions``, ``headerblocks`` and ``signatures``;
- ``forwards``: inline forwards and who wrote the forwarded message;
- ``robots``: out-of-office replies, lists, challenge/response robots;
- ``bounces``: which of our mails bounced and for whom: ``report`` reads RFC 3464
  DSNs, ``freetext`` the others, ``returned`` the message they give back;
- ``tokens``: validation tokens however they were typed;
- ``sender``, ``authentication``: who sent it, and what the receiving MTA verified;
- ``redact``: the stored copy with its tokens and reply keys blanked out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses

from mailbot import mailkeys
from mailbot.mailparse import bounces, forwards, lines, mime, quotes
from mailbot.mailparse import robots as auto
from mailbot.mailparse.bounces import Bounce
from mailbot.mailparse.htmltext import html_to_text
from mailbot.mailparse.sender import sender_of
from mailbot.mailparse.subjects import strip_subject_prefixes
from mailbot.mailparse.tokens import find_tokens

__all__ = [
    "Bounce",
    "ForwardedMail",
    "ParsedMail",
    "find_tokens",
    "html_to_text",
    "message_id_of",
    "new_text",
    "parse",
    "plus_key",
    "strip_subject_prefixes",
]

_MSGID = re.compile(r"<([^<>\s]+)>")
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
MAX_SUBJECT_CHARS = 1_000


@dataclass(frozen=True)
class ForwardedMail:
    """The message inside a forward: inline below a header block, or attached."""

    sender: str | None
    """The original sender's address, lower-cased (None when the forward hides it)."""
    sender_name: str
    subject: str
    date: str
    """As written in the forward (free text: every client and locale has its own)."""
    text: str
    """The forwarded message's whole text."""
    new_text: str
    """The forwarded message's own new text (its quotes and signature removed)."""
    tokens_in_new_text: tuple[str, ...] = ()
    tokens_in_quote: tuple[str, ...] = ()
    """Tokens in the forwarded message's own quote: a forwarded reply quoting our token mail."""
    references: tuple[str, ...] = ()
    """In-Reply-To then References of an attached message (inline forwards do not show them)."""
    attached: bool = False
    """Forwarded as a ``message/rfc822`` attachment rather than inline."""
    message_id: str | None = None
    """Message-ID of an attached message (inline forwards do not show it)."""


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None
    sender: str | None
    """The From address, lower-cased, or None when there is none usable."""
    sender_name: str
    subject: str
    text: str
    """The whole text body, decoded (HTML-only mail as text, quotes prefixed ``> ``)."""
    new_text: str
    """The sender's own words: quotes, attributions, forwards and signatures removed."""
    references: tuple[str, ...] = ()
    """In-Reply-To then References, without angle brackets."""
    recipients: tuple[str, ...] = ()
    """Addresses from To and Cc, lower-cased."""
    automatic: bool = False
    """Never to be answered nor acted on: auto-reply, list, bounce, report, no sender."""
    headers: dict[str, str] = field(default_factory=dict)
    """First value of each header (names lower-cased), decoded."""
    quoted_text: str = ""
    """Everything removed from ``text`` to get ``new_text``."""
    tokens_in_new_text: tuple[str, ...] = ()
    """Canonical tokens written in the new text (candidates, to check against digests)."""
    tokens_in_quote: tuple[str, ...] = ()
    """Canonical tokens in the quoted part, e.g. mailbot's own token mail quoted back."""
    forwarded: ForwardedMail | None = None
    forwarder_note: str = ""
    """The forwarder's own words above a forward ("" when there is no forward)."""
    autoreply: bool = False
    """An out-of-office, autoresponder, list or challenge/response robot (never a bounce)."""
    bounce: Bounce | None = None
    mailing_list: bool = False
    envelope_recipients: tuple[str, ...] = ()
    """Delivered-To / X-Original-To / Envelope-To addresses (where a VERP key may be)."""
    date: str = ""
    from_html: bool = False
    """The text was taken from an HTML part (there was no usable text/plain part)."""
    parse_error: str = ""
    """Non-empty only if parsing failed unexpectedly and this is a degraded reading."""
    sender_problem: str = ""
    """Why the From header was refused (``sender`` is then None); "" when it was read."""
    authentication_results: tuple[str, ...] = ()
    """Every ``Authentication-Results`` header as sent, unfolded, top first (bounded)."""


def parse(raw: bytes) -> ParsedMail:
    """Read a raw RFC 5322 message; never raises, whatever the bytes."""
    try:
        return _parse(mime.load(raw), raw)
    except Exception as error:  # the promise is "never raises": degrade, and say so
        return _degraded(raw, f"{type(error).__name__}: {error}"[:300])


def _parse(message: Message, raw: bytes) -> ParsedMail:
    strict = sender_of(message)
    sender_name, sender = strict.name, strict.address
    subject = _one_line(mime.header(message, "Subject"))[:MAX_SUBJECT_CHARS]
    text, from_html = body_text(message)
    split = quotes.split_reply(text)
    bounce = bounces.detect(message, sender, subject, sender_name, _library_view(raw, message))
    forwarded = _forwarded(message, split, subject) if bounce is None else None
    mailing_list = auto.is_list(message)
    autoreply = bounce is None and auto.is_autoreply(message, subject, split.new)
    report = mime.content_type(message) == "multipart/report"
    return ParsedMail(
        message_id=message_id_of(raw, message),
        sender=sender,
        sender_name=sender_name,
        subject=subject,
        text=text,
        new_text=split.new,
        references=_references(message),
        recipients=_addresses(message, ("To", "Cc")),
        automatic=autoreply or mailing_list or report or bounce is not None or sender is None,
        headers=mime.all_headers(message),
        quoted_text=split.quoted,
        tokens_in_new_text=find_tokens(split.new),
        tokens_in_quote=find_tokens(split.quoted),
        forwarded=forwarded,
        forwarder_note=_note(split) if forwarded is not None else "",
        autoreply=autoreply,
        bounce=bounce,
        mailing_list=mailing_list,
        envelope_recipients=_addresses(message, _ENVELOPE_HEADERS),
        date=_one_line(mime.header(message, "Date"))[:200],
        from_html=from_html,
        sender_problem=strict.problem,
        authentication_results=_raw_values(message, "Authentication-Results"),
    )


def _library_view(raw: bytes, message: Message) -> Message:
    """The message for third-party bounce detectors: re-read from its start if big."""
    if len(raw) <= bounces.LIBRARY_MAX_BYTES:
        return message
    return mime.load(raw[: bounces.LIBRARY_MAX_BYTES])


def _note(split: quotes.Split) -> str:
    """The forwarder's words are those above the forward, never text found below it."""
    return "" if split.bottom_posted else split.new


def _degraded(raw: bytes, error: str) -> ParsedMail:
    """What can still be said of a message the parser choked on: treat it as automatic."""
    return ParsedMail(
        message_id=message_id_of(raw),
        sender=None,
        sender_name="",
        subject="",
        text="",
        new_text="",
        automatic=True,
        parse_error=error,
    )


def message_id_of(raw: bytes, message: Message | None = None) -> str | None:
    """The Message-ID without brackets; cheap enough to run before full parsing."""
    if message is None:
        return mailkeys.message_id(raw)  # the one the dedup key is made of
    found = _MSGID.search(mime.raw_header(message, "Message-ID"))
    return found.group(1)[:900] if found else None


def new_text(text: str) -> str:
    """The sender's own words in a text: quotes, attributions and signatures removed."""
    return quotes.new_text(text)


def body_text(message: Message) -> tuple[str, bool]:
    """The text/plain body, else the text of the HTML body; and whether HTML was used."""
    plain, html = mime.body_parts(message)
    if plain is not None and plain.strip():
        return plain, False
    if html is not None and html.strip():
        return html_to_text(html), True
    return plain or "", False


def _forwarded(message: Message, split: quotes.Split, subject: str) -> ForwardedMail | None:
    """An attached ``message/rfc822`` wins over an inline forward (its headers are real).

    Only called for messages that are not bounces: a bounce's attached message
    is the returned original, not a forward.
    """
    for part, depth in mime.walk(message):
        if depth == 0 or mime.content_type(part) != "message/rfc822":
            continue
        inner = mime.attached_message(part)
        if inner is not None:
            return _attached(inner)
    inline = forwards.find(split, subject)
    if inline is None:
        return None
    own = quotes.split_reply(inline.body)
    return ForwardedMail(
        sender=inline.sender,
        sender_name=inline.sender_name,
        subject=inline.subject,
        date=inline.date,
        text=inline.body,
        new_text=own.new,
        tokens_in_new_text=find_tokens(own.new),
        tokens_in_quote=find_tokens(own.quoted),
    )


def _attached(inner: Message) -> ForwardedMail:
    strict = sender_of(inner)
    name, address = strict.name, strict.address
    text, _ = body_text(inner)
    own = quotes.split_reply(text)
    return ForwardedMail(
        sender=address,
        sender_name=name,
        subject=_one_line(mime.header(inner, "Subject"))[:MAX_SUBJECT_CHARS],
        date=_one_line(mime.header(inner, "Date"))[:200],
        text=text,
        new_text=own.new,
        tokens_in_new_text=find_tokens(own.new),
        tokens_in_quote=find_tokens(own.quoted),
        references=_references(inner),
        attached=True,
        message_id=message_id_of(b"", inner),
    )


def _one_line(value: str) -> str:
    return " ".join(lines.CONTROL.sub(" ", value).split())


def _raw_values(message: Message, name: str, limit: int = 20) -> tuple[str, ...]:
    """Every value of a header as sent, unfolded and bounded (never decoded)."""
    try:
        values = message.get_all(name) or []
    except Exception:  # any input
        return ()
    return tuple(" ".join(str(v)[: mime.MAX_HEADER_CHARS].split()) for v in values[:limit])


def _addresses(message: Message, names: tuple[str, ...]) -> tuple[str, ...]:
    values = [mime.raw_header(message, name) for name in names]
    found = (a.strip().lower() for _, a in getaddresses(values) if "@" in a)
    return tuple(dict.fromkeys(found))


def _references(message: Message) -> tuple[str, ...]:
    ids = _MSGID.findall(mime.raw_header(message, "In-Reply-To"))
    ids += _MSGID.findall(mime.raw_header(message, "References"))[::-1]
    return tuple(dict.fromkeys(i[:900] for i in ids))[:50]


def plus_key(address: str, bot_local_part: str) -> str | None:
    """The key after ``+`` in an address to the bot, e.g. changes+KEY@domain."""
    local = address.partition("@")[0]
    base, plus, key = local.partition("+")
    if plus and base.lower() == bot_local_part.lower() and key:
        return key
    return None
