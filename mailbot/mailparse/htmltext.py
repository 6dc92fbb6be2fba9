"""HTML mail to plain text that keeps what the reply parser needs to see.

Mail clients mark quoted and signature regions in HTML rather than with ``>``:
Gmail's ``blockquote.gmail_quote``, Thunderbird's ``blockquote type=cite``,
Yahoo's ``div.yahoo_quoted``, Outlook's ``div#divRplyFwdMsg`` and
``div#appendonsend`` (after which everything is the quoted original), Apple's
``div#AppleMailSignature``. Quoted regions come out prefixed with ``> ``,
signatures after a ``-- `` line, and Outlook's quote start and every ``<hr>``
(the rule a client draws above the original) as a line of underscores, so
that the plain-text rules in ``quotes`` apply unchanged to HTML-only mail.
"""

from __future__ import annotations

import re
from contextlib import suppress
from html.parser import HTMLParser

from mailbot.mailparse import labels

MAX_HTML_CHARS = 500_000
"""HTML read from one part; a reply's own words are at the top."""
MAX_STACK = 400
MAX_QUOTE_MARKS = 10
"""Nested blockquotes deeper than this are marked as this deep (output stays linear)."""
MAX_OUTPUT_CHARS = 1_000_000
OUTLOOK_SEPARATOR = "_" * 32
MAX_HEADER_LINE_CHARS = 300
"""Longer lines are never a header block's "From:" line (see ``end_mailto``)."""

_PARAGRAPHS = frozenset(
    {
        "address", "blockquote", "center", "dl", "fieldset", "figure", "form", "h1", "h2",
        "h3", "h4", "h5", "h6", "hr", "ol", "p", "pre", "table", "ul",
    }
)  # fmt: skip
"""Tags that separate paragraphs (a blank line)."""
_LINES = frozenset(
    {
        "article", "aside", "dd", "div", "dt", "footer", "header", "li", "main", "nav",
        "section", "tbody", "tfoot", "thead", "tr",
    }
)  # fmt: skip
"""Tags that only start a new line (Gmail writes one ``div`` per line)."""
_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript", "object"})
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr"}
)  # fmt: skip
_QUOTE_CLASSES = ("yahoo_quoted", "gmail_quote_container")
_SIGNATURE_IDS = ("applemailsignature", "signature", "ms-outlook-mobile-signature")
_SIGNATURE_CLASSES = ("gmail_signature", "moz-signature", "signature")
_QUOTE_START_IDS = ("divrplyfwdmsg", "appendonsend", "stopspelling", "olk_src_body_section")
_HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_STRAY_LT = re.compile(r"<(?![A-Za-z/!?])")
_NOTABLE = frozenset({"id", "class", "style", "data-smartmail", "tabindex"})
_HEADER_LINE = re.compile(
    rf"^\s*\**\s*(?:{labels.ALL_LABELS})\s*\**(?:\s*[:：]|[ ]*\t)", re.IGNORECASE
)
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
_SPACES = re.compile(r"[ \t\r\n\f\v\u00a0]+")


class _Element:
    __slots__ = ("quote", "skip", "tag")

    def __init__(self, tag: str, *, quote: bool, skip: bool) -> None:
        self.tag = tag
        self.quote = quote
        self.skip = skip


class _TextExtractor(HTMLParser):
    """Collects lines of text, each with the blockquote depth it was written at."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[int, str]] = []
        self.current: list[str] = []
        self.current_depth = 0
        self.stack: list[_Element] = []
        self.pre = 0
        self.depth = 0
        self.hidden = 0
        self.length = 0
        """Characters in ``current``."""
        self.mailto: tuple[str, int] | None = None
        """A mailto link being read: its address and where its text starts."""

    @property
    def skipping(self) -> bool:
        return self.hidden > 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.block(tag)
        if tag in ("td", "th") and self.current:
            self.write("\t")  # a table's cells stay apart: "From:<tab>value", "From<tab>value"
        if tag == "a":
            self.mailto = _mailto(attrs, self.length)
        notable = {name: value for name, value in attrs if name in _NOTABLE}
        marker = _marker(tag, notable)
        if marker == "quote-start":
            self.emit_line(OUTLOOK_SEPARATOR)
        elif marker == "signature" and not self.skipping:
            self.emit_line("-- ")
        if tag == "pre":
            self.pre += 1
        if tag in _VOID or len(self.stack) >= MAX_STACK:
            return
        hidden = tag in _SKIP or _HIDDEN.search(notable.get("style") or "") is not None
        element = _Element(tag, quote=marker == "quote", skip=hidden)
        self.stack.append(element)
        self.depth += element.quote
        self.hidden += element.skip

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.block(tag)
        if (
            _marker(tag, {name: value for name, value in attrs if name in _NOTABLE})
            == "quote-start"
        ):
            self.emit_line(OUTLOOK_SEPARATOR)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self.mailto is not None:
            self.end_mailto(*self.mailto)
        if tag == "pre" and self.pre:
            self.pre -= 1
        for index in range(len(self.stack) - 1, max(-1, len(self.stack) - 40), -1):
            if self.stack[index].tag == tag:
                for element in self.stack[index:]:
                    self.depth -= element.quote
                    self.hidden -= element.skip
                del self.stack[index:]
                break
        if tag != "br":
            self.block(tag)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if not self.current and "\u00a0" in data and not data.strip(" \t\r\n\u00a0"):
            self.newline(force=True)  # Outlook's <div>&nbsp;</div>: a deliberate blank line
            return
        if self.pre:
            pieces = data.split("\n")
            for piece in pieces[:-1]:
                self.write(piece)
                self.newline(force=True)
            self.write(pieces[-1])
            return
        self.write(_SPACES.sub(" ", data))

    def end_mailto(self, address: str, start: int) -> None:
        """In a header block's "From: <a href=mailto:…>Name</a>", keep the address the
        link hides (Outlook writes the name only): "From: Name <address>"."""
        self.mailto = None
        if self.length > MAX_HEADER_LINE_CHARS:
            return
        line = "".join(self.current)
        if "@" not in line[start:] and _HEADER_LINE.match(line) and not self.skipping:
            self.write(f" <{address}>")

    def write(self, text: str) -> None:
        if not text:
            return
        if not self.current:
            self.current_depth = self.depth
            text = text.lstrip(" ") if not self.pre else text
            if not text:
                return
        self.current.append(text)
        self.length += len(text)

    def block(self, tag: str) -> None:
        """Line and paragraph breaks around block elements; ``<br>`` always breaks."""
        if tag == "br":
            self.newline(force=True)
        elif tag in _PARAGRAPHS:
            self.newline()
            if self.lines and self.lines[-1][1] != "":
                self.lines.append((self.depth, ""))
        elif tag in _LINES:
            self.newline()

    def newline(self, *, force: bool = False) -> None:
        if self.current or force:
            depth = self.current_depth if self.current else self.depth
            self.lines.append((depth, "".join(self.current).rstrip()))
            self.current = []
            self.length = 0

    def emit_line(self, text: str) -> None:
        self.newline()
        recent = [line for _, line in self.lines[-3:] if line]
        if not recent or recent[-1] != text:
            self.lines.append((self.depth, text))


def _defused(html: str) -> str:
    """Markup the standard parser would rescan quadratically, made harmless in linear time.

    Comments are removed (an unclosed one ends the document), a ``<`` that
    cannot start a tag becomes text, and so does every ``<`` after the last ``>``.
    """
    pieces: list[str] = []
    position = 0
    while True:
        start = html.find("<!--", position)
        if start < 0:
            pieces.append(html[position:])
            break
        pieces.append(html[position:start])
        end = html.find("-->", start + 4)
        if end < 0:
            break
        position = end + 3
    text = _STRAY_LT.sub("&lt;", "".join(pieces))
    last = text.rfind(">")
    return text[: last + 1] + text[last + 1 :].replace("<", "&lt;")


def _mailto(attrs: list[tuple[str, str | None]], start: int) -> tuple[str, int] | None:
    """The address of a ``mailto:`` link, and where its text starts in the line."""
    href = next((value for name, value in attrs if name == "href"), None) or ""
    if href[:7].lower() != "mailto:":
        return None
    address = href[7:].split("?", 1)[0].strip()
    return (address, start) if _ADDRESS.fullmatch(address) else None


def _marker(tag: str, attrs: dict[str, str | None]) -> str | None:
    """What a tag means for reply parsing: quote, quote-start, signature, or nothing."""
    ident = (attrs.get("id") or "").lower()
    classes = (attrs.get("class") or "").lower().split()
    if tag == "blockquote":
        return "quote"
    if any(ident.startswith(prefix) for prefix in _QUOTE_START_IDS):
        return "quote-start"
    if tag == "hr":  # Outlook's, Zimbra's, any client's rule above the original
        return "quote-start"
    if any(name in classes for name in _QUOTE_CLASSES) or ident.startswith("yahoo_quoted"):
        return "quote"
    if ident in _SIGNATURE_IDS or any(name in classes for name in _SIGNATURE_CLASSES):
        return "signature"
    if (attrs.get("data-smartmail") or "") == "gmail_signature":
        return "signature"
    return None


def html_to_text(html: str) -> str:
    """Readable text of an HTML body, quotes marked with ``> `` (never raises)."""
    extractor = _TextExtractor()
    with suppress(Exception):  # a parser bug on hostile markup: keep what was read so far
        extractor.feed(_defused(html[:MAX_HTML_CHARS]))
        extractor.close()
    extractor.newline()
    out: list[str] = []
    blank = 0
    size = 0
    for depth, text in extractor.lines:
        line = ("> " * min(depth, MAX_QUOTE_MARKS) + text) if depth else text
        size += len(line) + 1
        if size > MAX_OUTPUT_CHARS:
            break
        if not line.strip():
            blank += 1
            if blank > 1:
                continue
            line = ">" if depth else ""
        else:
            blank = 0
        out.append(line.rstrip())
    return "\n".join(out).strip("\n")
