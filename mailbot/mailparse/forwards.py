"""Inline forwards: who wrote the forwarded message, and what it said.

An agency forwards its customers' mail into mailbot's mailbox, so the sender
that counts is the original one, found in the header block that every client
writes above a forwarded message:

- Gmail, HubSpot, Thunderbird, Yahoo: a separator ("---------- Forwarded
  message ---------", "-------- Message transféré --------", "Message
  transmis") then ``From:``/``De :``/``Von:`` lines;
- Apple Mail: "Begin forwarded message:" / "Début du message réexpédié :",
  often with the whole forward quoted with ``>``;
- Outlook: only the header block ("From: … Sent: … To: … Subject: …"), or
  even only an "On … wrote:" line; these look exactly like a reply's quote,
  so they count as a forward only when the subject says so (FW:, TR:, WG:…).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr

from mailbot.mailparse import attributions, headerblocks, quotes
from mailbot.mailparse.lines import dequote, quote_depth
from mailbot.mailparse.subjects import FORWARD_SUBJECT, strip_subject_prefixes

MAX_HEADER_LINES = 14

_SUBJECT_KEYS = (
    "subject", "objet", "sujet", "betreff", "asunto", "assunto", "oggetto", "onderwerp", "emne",
    "ämne", "amne", "temat", "тема", "aihe", "tárgy", "targy", "konu", "主题", "件名",
)  # fmt: skip
_DATE_KEYS = (
    "date", "sent", "sent at", "datum", "envoyé", "envoye", "envoyé le", "envoye le",
    "gesendet", "fecha", "enviado", "enviada", "enviado el", "inviato", "data", "verzonden",
    "sendt", "skickat", "wysłano", "wyslano", "отправлено", "дата", "dato", "lähetetty",
    "lahetetty", "päivämäärä", "elküldve", "tarih", "gönderildi", "发送时间", "日期", "送信日時",
)  # fmt: skip
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_MAILTO_TWIN = re.compile(r"<mailto:[^<>]*>|\[mailto:[^\]]*\]", re.IGNORECASE)
_MAILTO_BRACKET = re.compile(r"\[mailto:([^\]\s]+)\]", re.IGNORECASE)
_ATTRIBUTION_PERSON = re.compile(
    r"(?P<name>[\"«“][^\"«»“”]{1,100}[\"»”]|[^,<>()\"]{1,100}?)\s*[<(\[]\s*"
    r"(?:mailto:)?(?P<address>[^<>()\[\]\s]+@[^<>()\[\]\s]+?)\s*[>)\]]"
)


@dataclass(frozen=True)
class ForwardBlock:
    """A forward found in a text body: the forwarder's note, the header block
    of the forwarded message, and its text (``ForwardedMail`` is what comes of it)."""

    note: str
    """The forwarder's own words above the forwarded message."""
    sender: str | None
    sender_name: str
    subject: str
    date: str
    body: str
    """The forwarded message's text, unquoted."""


def has_forward_subject(subject: str) -> bool:
    return FORWARD_SUBJECT.match(subject) is not None


def find(split: quotes.Split, subject: str) -> ForwardBlock | None:
    """The inline forward in a split text body, if its first quoted matter is one."""
    lines, cut = list(split.lines), split.cut
    if cut is None:
        return None
    note = "" if split.bottom_posted else split.new
    marker = _marker_at(lines, cut)
    if marker is not None:
        return _from_header_block(lines, marker + 1, note, subject)
    if not has_forward_subject(subject):
        return None
    if cut.kind == "header":
        start = cut.index + (0 if headerblocks.header_key(lines[cut.index]) else 1)
        return _from_header_block(lines, start, note, subject)
    if cut.kind == "separator":
        return _from_header_block(lines, cut.index + 1, note, subject)
    if cut.kind == "attribution":
        return _from_attribution(lines, cut, note, subject)
    return None


def _marker_at(lines: list[str], cut: quotes.Cut) -> int | None:
    """The forward marker line at the cut (first non-blank line of a quote block)."""
    if cut.kind == "forward":
        return cut.index
    if cut.kind != "quote":
        return None
    for index in range(cut.index, min(cut.index + 4, len(lines))):
        content = dequote(lines[index]).strip()
        if content:
            return index if headerblocks.is_forward_marker(lines[index]) else None
    return None


def _from_header_block(
    lines: list[str], start: int, note: str, subject: str
) -> ForwardBlock | None:
    """Parse "Key: value" lines from ``start``; the body follows the blank line after them."""
    depth, index = _first_content(lines, start)
    if index is None:
        return None
    fields: dict[str, str] = {}
    last: str | None = None
    previous = ""
    count = 0
    while index < len(lines) and count < MAX_HEADER_LINES:
        line = _strip_depth(lines[index], depth)
        if not line.strip():
            if fields:
                break
            index += 1
            continue
        key = headerblocks.header_key(line)
        if key is not None:
            last = _field(key)
            value = line.split(":", 1)[1] if ":" in line else line.split("：", 1)[-1]
            fields.setdefault(last, value.strip(" *\t"))
        elif last is not None and _continues(line, previous, last, fields):
            fields[last] = f"{fields[last]} {line.strip()}"
        elif last is not None:
            break
        else:
            return None
        previous = line
        count += 1
        index += 1
    if "from" not in fields:
        return None
    body = _body(lines[index:], depth)
    name, address = person(fields["from"])
    forwarded_subject = fields.get("subject") or strip_subject_prefixes(subject)
    return ForwardBlock(note, address, name, forwarded_subject, fields.get("date", ""), body)


def _continues(line: str, previous: str, last: str, fields: dict[str, str]) -> bool:
    """A wrapped header value: indented, an address on its own line, or after a long line.

    Otherwise the line is the forwarded body itself, which some clients (Outlook's
    HTML) start right below the headers without a blank line.
    """
    if line[:1] in (" ", "\t") or line.lstrip().startswith("<"):
        return True
    if last == "from" and "@" not in fields.get("from", ""):
        return "@" in line
    return len(previous) >= 60


def _field(key: str) -> str:
    key = key.lower()
    if headerblocks.is_from_key(key):
        return "from"
    if key in _SUBJECT_KEYS:
        return "subject"
    if key in _DATE_KEYS:
        return "date"
    return key


def _first_content(lines: list[str], start: int) -> tuple[int, int | None]:
    """Quote depth and index of the first non-blank line from ``start``."""
    for index in range(start, min(start + 4, len(lines))):
        if dequote(lines[index]).strip():
            return quote_depth(lines[index]), index
    return 0, None


def _strip_depth(line: str, depth: int) -> str:
    for _ in range(depth):
        stripped = dequote(line)
        if stripped == line:
            break
        line = stripped
    return line


def _body(lines: list[str], depth: int) -> str:
    body = [_strip_depth(line, depth) for line in lines]
    return _dedent(body).strip("\n").strip()


def _dedent(lines: list[str]) -> str:
    """Remove the indentation Outlook puts before every line of a forwarded body."""
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    margin = min(indents) if indents else 0
    return "\n".join(line[margin:].rstrip() for line in lines)


def _from_attribution(
    lines: list[str], cut: quotes.Cut, note: str, subject: str
) -> ForwardBlock | None:
    """Outlook for Mac forwards as "On <date>, "Name" <address> wrote:" + indented text."""
    window = " ".join(line.strip() for line in lines[cut.index : cut.index + cut.length])
    found = _ATTRIBUTION_PERSON.search(window)
    if found is None:
        return None
    name = _clean_name(found.group("name"))
    name = re.sub(r"^.*?\d[^,]*,\s*", "", name) if "," in name else name
    address = found.group("address").lower()
    body = _body(lines[cut.index + cut.length :], 0)
    date = window[: found.start()].strip(" ,")
    date = re.sub(r"^\S+\s+", "", date, count=1)
    date = re.sub(rf"[\s,]*(?:{attributions.VERBS})$", "", date, flags=re.IGNORECASE)
    return ForwardBlock(note, address, name, strip_subject_prefixes(subject), date, body)


def person(value: str) -> tuple[str, str | None]:
    """Name and lower-cased address from a quoted From value, in any client's notation."""
    value = _MAILTO_BRACKET.sub(r"<\1>", value)
    if value.count("<") > 1:
        value = _MAILTO_TWIN.sub("", value)
    value = value.replace("«", '"').replace("»", '"').replace("*", "").strip()
    name, address = parseaddr(value)
    if "@" not in address:
        found = _ADDRESS.search(value)
        if found is None:
            return _clean_name(value), None
        address = found.group()
        name = value.replace(address, "")
    return _clean_name(name), address.strip().lower()


def _clean_name(name: str) -> str:
    return " ".join(name.replace("<>", "").strip(" \"'«»“”<>[]()").split())
