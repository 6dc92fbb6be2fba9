"""Raw bytes in, a normalised message out. Pure: no database, no network.

Real mail is hostile and broken in every way a parser can imagine, so every
header read here is defensive: a header that cannot be decoded reads as
absent or as text with replacement characters, never as an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

_MSGID = re.compile(r"<([^<>\s]+)>")
_AUTOMATIC_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}

# Lines where quoted or forwarded matter begins; nothing from there on is new text.
_QUOTE_STARTS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^>",
        r"^\s*On .{0,200}wrote:?\s*$",
        r"^\s*Le .{0,200}a [ée]crit\s*:?\s*$",
        r"^\s*-{2,}\s*(Original Message|Message d'origine|Forwarded message)",
        r"^\s*-{2,}\s*Message transf[ée]r[ée]",
        r"^\s*_{8,}\s*$",
        r"^\s*(From|De|Von)\s*:\s.*",
        r"^\s*Begin forwarded message:",
        r"^\s*D[ée]but du message r[ée]exp[ée]di[ée]",
    )
]
_SIGNATURE_STARTS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^-- ?$",
        r"^(Sent from|Envoy[ée] de(puis)?) (my|mon) ",
        r"^Get Outlook for ",
    )
]


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str | None
    sender: str | None
    """The From address, lower-cased, or None when there is none usable."""
    sender_name: str
    subject: str
    text: str
    """The whole text body, decoded."""
    new_text: str
    """The sender's own words: quotes, attributions and signatures removed."""
    references: tuple[str, ...] = ()
    """In-Reply-To then References, without angle brackets."""
    recipients: tuple[str, ...] = ()
    """Addresses from To and Cc, lower-cased."""
    automatic: bool = False
    """An auto-reply, list or bulk mail: never answer it, never act on it."""
    headers: dict[str, str] = field(default_factory=dict)


def parse(raw: bytes) -> ParsedMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    sender_name, sender = _address(_header(message, "From"))
    text = _body_text(message)
    return ParsedMessage(
        message_id=message_id_of(raw, message),
        sender=sender,
        sender_name=sender_name,
        subject=_one_line(_header(message, "Subject")),
        text=text,
        new_text=new_text(text),
        references=_references(message),
        recipients=_recipients(message),
        automatic=_is_automatic(message, sender),
    )


def message_id_of(raw: bytes, message: Message | None = None) -> str | None:
    """The Message-ID without brackets; cheap enough to run before full parsing."""
    if message is None:
        message = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    found = _MSGID.search(_header(message, "Message-ID"))
    return found.group(1)[:900] if found else None


def new_text(text: str) -> str:
    """The lines before the first quote, attribution or signature."""
    kept: list[str] = []
    for line in text.splitlines():
        if any(p.match(line) for p in _QUOTE_STARTS + _SIGNATURE_STARTS):
            break
        kept.append(line.rstrip())
    return "\n".join(kept).strip()


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, TypeError, IndexError, AttributeError):
        return ""
    try:
        return "" if value is None else str(value)
    except (ValueError, TypeError, LookupError):
        return ""


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _address(value: str) -> tuple[str, str | None]:
    name, address = parseaddr(value)
    address = address.strip().lower()
    if "@" not in address or any(ch.isspace() for ch in address):
        return name, None
    return _one_line(name), address


def _recipients(message: Message) -> tuple[str, ...]:
    values = [_header(message, "To"), _header(message, "Cc")]
    return tuple(a.lower() for _, a in getaddresses(values) if "@" in a)


def _references(message: Message) -> tuple[str, ...]:
    ids = _MSGID.findall(_header(message, "In-Reply-To"))
    ids += _MSGID.findall(_header(message, "References"))[::-1]
    return tuple(dict.fromkeys(ids))


def _is_automatic(message: Message, sender: str | None) -> bool:
    if sender is None:
        return True
    auto = _header(message, "Auto-Submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if _header(message, "Precedence").strip().lower() in _AUTOMATIC_PRECEDENCE:
        return True
    return any(_header(message, h) for h in ("List-Id", "X-Autoreply", "X-Autorespond"))


def _body_text(message: Message) -> str:
    """The text/plain part, else the text of the HTML part, decoded with replacement."""
    plain = html = None
    for part in message.walk() if message.is_multipart() else [message]:
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and plain is None:
            plain = _decode(part)
        elif content_type == "text/html" and html is None:
            html = _decode(part)
    if plain is not None:
        return plain
    return html_to_text(html) if html is not None else ""


def _decode(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "blockquote", "table"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.quote_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        if tag == "blockquote":
            self.quote_depth += 1
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1
        if tag == "blockquote" and self.quote_depth:
            self.quote_depth -= 1
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.quote_depth:
            data = "\n".join("> " + line for line in data.splitlines())
        self.parts.append(data)


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except (AssertionError, ValueError):
        pass
    lines = (" ".join(line.split()) for line in "".join(extractor.parts).splitlines())
    return "\n".join(lines).strip()


def plus_key(address: str, bot_local_part: str) -> str | None:
    """The key after ``+`` in an address to the bot, e.g. changes+KEY@domain."""
    local = address.partition("@")[0]
    base, plus, key = local.partition("+")
    if plus and base.lower() == bot_local_part.lower() and key:
        return key
    return None
