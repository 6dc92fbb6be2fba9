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
  so they count as a forward only when the subject says so (FW:, TR:, WG:…);
- webmails (GMX, Zoho, Orange, Zimbra, Proton…): the same, with their own
  separators ("----- Mail transféré -----", "==== Forwarded message ====") or
  an intro line ("Message du 02/03/26 11:00").

The block itself is read by ``fieldblocks`` whatever its layout (one field a
line, a table, run together on one line) and language (``labels``). A
forwarder's signature above the forward is looked past.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr

from mailbot.mailparse import attributions, fieldblocks, headerblocks, quotes
from mailbot.mailparse.lines import dequote, quote_depth
from mailbot.mailparse.subjects import FORWARD_SUBJECT, strip_subject_prefixes

MAX_SIGNATURE_LINES = 30
"""Lines of a forwarder's signature looked past for the forward below it."""

_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_MAILTO_TWIN = re.compile(r"<mailto:[^<>]*>|\[mailto:[^\]]*\]", re.IGNORECASE)
_MAILTO_INSIDE = re.compile(r"<\s*mailto:", re.IGNORECASE)
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
    if cut is not None and cut.kind == "signature":
        cut = _past_signature(lines, cut)
    if cut is None:
        return None
    note = "" if split.bottom_posted else split.new
    marker = _marker_at(lines, cut)
    if marker is not None:
        return _after_separator(lines, marker, note, subject)
    if not has_forward_subject(subject):
        return None
    return _at_cut(lines, cut, note, subject)


def _at_cut(lines: list[str], cut: quotes.Cut, note: str, subject: str) -> ForwardBlock | None:
    """A forward that only its subject announces: read from where the quote starts."""
    if cut.kind == "header":
        start = cut.index + (0 if headerblocks.header_key(lines[cut.index]) else 1)
        return _from_header_block(lines, start, note, subject)
    if cut.kind == "separator":
        return _after_separator(lines, cut.index, note, subject)
    if cut.kind == "attribution":
        return _from_attribution(lines, cut, note, subject)
    if cut.kind == "quote":
        return _from_header_block(lines, cut.index, note, subject, intro=True)
    return None


def _after_separator(lines: list[str], index: int, note: str, subject: str) -> ForwardBlock | None:
    """The forward below a separator: its header block (on the separator's own line
    when HTML-to-text ran them together), else an "On … wrote:" line (Proton)."""
    run_on = headerblocks.run_on_block(dequote(lines[index]))
    if run_on is not None:
        lines[index] = run_on
        return _from_header_block(lines, index, note, subject)
    return _from_header_block(lines, index + 1, note, subject) or _attribution_after(
        lines, index + 1, note, subject
    )


def _past_signature(lines: list[str], cut: quotes.Cut) -> quotes.Cut | None:
    """The first cut below a forwarder's signature that is not part of it."""
    index = cut.index + 1
    while index < min(cut.index + MAX_SIGNATURE_LINES, len(lines)):
        found = quotes.cut_at(lines, index)
        if found is not None and found.kind != "signature":
            return found
        index += 1
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
    lines: list[str], start: int, note: str, subject: str, *, intro: bool = False
) -> ForwardBlock | None:
    """The forward whose header block starts at ``start`` (or the line after an intro line,
    such as Orange's "Message du 02/03/26 11:00"); its body follows the block."""
    depth, index = _first_content(lines, start)
    if index is None:
        return None
    block = fieldblocks.read(lines, index, depth)
    if block is None and intro:
        block = fieldblocks.read(lines, index + 1, depth)
    if block is None:
        return None
    fields = block.fields
    body = _body(lines[fieldblocks.body_start(lines, block.end, depth) :], depth)
    name, address = person(fields["from"])
    forwarded_subject = fields.get("subject") or strip_subject_prefixes(subject)
    return ForwardBlock(note, address, name, forwarded_subject, fields.get("date", ""), body)


def _first_content(lines: list[str], start: int) -> tuple[int, int | None]:
    """Quote depth and index of the first non-blank line from ``start``."""
    for index in range(start, min(start + 4, len(lines))):
        if dequote(lines[index]).strip():
            return quote_depth(lines[index]), index
    return 0, None


def _body(lines: list[str], depth: int) -> str:
    """The forwarded text, unquoted to the header block's depth, and one level further
    when all of it is quoted below an unquoted block (Proton's HTML, some webmails)."""
    body = [fieldblocks.strip_depth(line, depth) for line in lines]
    depths = [quote_depth(line) for line in body if dequote(line).strip()]
    if depths and min(depths) > 0:
        body = [fieldblocks.strip_depth(line, min(depths)) for line in body]
    return _dedent(body).strip("\n").strip()


def _dedent(lines: list[str]) -> str:
    """Remove the indentation Outlook puts before every line of a forwarded body."""
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    margin = min(indents) if indents else 0
    return "\n".join(line[margin:].rstrip() for line in lines)


def _attribution_after(
    lines: list[str], start: int, note: str, subject: str
) -> ForwardBlock | None:
    """A separator followed by "On <date>, <person> wrote:" (Proton, some webmails)."""
    _, index = _first_content(lines, start)
    if index is None:
        return None
    length = attributions.attribution_at(lines, index)
    if length is None:
        return None
    return _from_attribution(lines, quotes.Cut(index, "attribution", length), note, subject)


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
    value = _MAILTO_INSIDE.sub("<", value)
    value = value.replace("<<", "<").replace(">>", ">")
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
