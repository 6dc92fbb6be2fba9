"""The sender of a message, read strictly from the raw ``From`` header. Pure.

The address is taken from the header as sent, before any RFC 2047 decoding,
so that a display name can never supply it (``=?utf-8?q?alice@client.test?=
<attacker@evil.test>`` is the classic trick). Anything that a lenient parser
would have to guess at is refused with a reason, never reinterpreted: several
addresses or ``From`` headers, group syntax, an encoded word in or as the
address, a display name that looks like another address, control characters
(raw or encoded), unbalanced quotes, comments or brackets.

The grammar accepted is RFC 5322's single ``mailbox``: an ``addr-spec``
alone (with comments around it), or a display name (atoms, dots and quoted
strings, encoded words as whole atoms) followed by ``<addr-spec>``. The
address itself is a dot-atom local part and a domain of dot-separated labels.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.header import decode_header
from email.message import Message

from mailbot.mailparse import mime

MAX_ADDRESS_CHARS = 254
"""RFC 5321's longest usable path, less its brackets."""

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_SPECIALS = frozenset('()<>[]:;@\\,"')
_LOCAL_ASCII = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_LABEL_ASCII = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_NAME_SEPARATORS = re.compile(r"[\s<>()\"',;:\[\]]+")
_WORD_SPECIALS = frozenset(_SPECIALS - {"@"})


@dataclass(frozen=True)
class Sender:
    """A ``From`` read strictly: the address (None when refused) and why not."""

    address: str | None
    """Lower-cased; None when the header is missing or refused."""
    name: str
    """The display name (or the comment beside a bare address), decoded, one line."""
    problem: str = ""
    """Why the header was refused ("" when it was read, or is simply missing)."""


class Refused(ValueError):
    """The header cannot be read unambiguously; the message says why."""


@dataclass(frozen=True)
class _Token:
    kind: str
    """``word``, ``quoted``, ``comment`` or ``angle``."""
    text: str


def sender_of(message: Message) -> Sender:
    """The sender of ``message`` from its single ``From`` header, read strictly."""
    try:
        values = [v for k, v in message.raw_items() if str(k).strip().lower() == "from"]
    except Exception:  # any input: headers that cannot even be listed
        return Sender(None, "", "unreadable From header")
    if len(values) > 1:
        return Sender(None, "", "more than one From header")
    if not values:
        return Sender(None, "")
    raw = values[0] if isinstance(values[0], str) else ""
    if not raw or len(raw) > mime.MAX_HEADER_CHARS:
        return Sender(None, "", "unreadable or too long From header")
    return read_from(_as_text(raw))


def _as_text(raw: str) -> str:
    """Raw 8-bit header bytes (kept by the parser as surrogates) as UTF-8 text."""
    data = raw.encode("utf-8", errors="surrogateescape")
    return mime.decode_bytes(data, None)


def read_from(value: str) -> Sender:
    """A raw ``From`` value (as sent, not decoded) to its sender, or refused."""
    try:
        address, name = _mailbox(_FOLD.sub("", value))
    except Refused as why:
        return Sender(None, "", str(why))
    return Sender(address, name)


def _mailbox(value: str) -> tuple[str, str]:
    if _has_control(value, allow_tab=True):
        raise Refused("control character in From")
    tokens = _tokens(value)
    angles = [t for t in tokens if t.kind == "angle"]
    if len(angles) > 1:
        raise Refused("more than one address in From")
    if angles:
        return _name_addr(tokens)
    return _bare_addr_spec(tokens)


def _name_addr(tokens: list[_Token]) -> tuple[str, str]:
    """``display name <address>``: comments only after the brackets."""
    at = next(i for i, t in enumerate(tokens) if t.kind == "angle")
    if any(t.kind != "comment" for t in tokens[at + 1 :]):
        raise Refused("text after the address in From")
    address = _addr_spec(tokens[at].text)
    phrase = [t for t in tokens[:at] if t.kind != "comment"]
    for token in phrase:
        if token.kind == "word" and "@" in token.text:
            raise Refused("unquoted @ in the display name of From")
    name = _display(phrase) or _display([t for t in tokens if t.kind == "comment"])
    _check_name(name, address)
    return address, name


def _bare_addr_spec(tokens: list[_Token]) -> tuple[str, str]:
    """``address (comment)``: one word, the address, nothing else but comments."""
    words = [t for t in tokens if t.kind != "comment"]
    if not words:
        raise Refused("no address in From")
    if len(words) > 1 or words[0].kind != "word":
        raise Refused("display name without angle brackets in From")
    address = _addr_spec(words[0].text)
    name = _display([t for t in tokens if t.kind == "comment"])
    _check_name(name, address)
    return address, name


def _tokens(value: str) -> list[_Token]:
    """Words, quoted strings, comments and the bracketed address, in order."""
    tokens: list[_Token] = []
    at = 0
    while at < len(value):
        char = value[at]
        if char in " \t":
            at += 1
        elif char == "(":
            at = _comment(value, at, tokens)
        elif char == '"':
            at = _quoted(value, at, tokens)
        elif char == "<":
            end = value.find(">", at)
            if end < 0:
                raise Refused("unclosed < in From")
            tokens.append(_Token("angle", value[at + 1 : end]))
            at = end + 1
        elif char in _SPECIALS and char != "@":
            raise Refused(_special_problem(char))
        else:
            end = at
            while end < len(value) and value[end] not in " \t" and value[end] not in _WORD_SPECIALS:
                end += 1
            tokens.append(_Token("word", value[at:end]))
            at = end
    return tokens


def _special_problem(char: str) -> str:
    if char == ",":
        return "more than one address in From"
    if char in ":;":
        return "group syntax in From"
    return f"unexpected {char!r} in From"


def _comment(value: str, start: int, tokens: list[_Token]) -> int:
    """A comment, nested and with quoted pairs; its text is kept as a name candidate."""
    depth, at, text = 0, start, []
    while at < len(value):
        char = value[at]
        if char == "\\" and at + 1 < len(value):
            text.append(value[at + 1])
            at += 2
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            tokens.append(_Token("comment", "".join(text[1:])))
            return at + 1
        text.append(char)
        at += 1
    raise Refused("unbalanced parenthesis in From")


def _quoted(value: str, start: int, tokens: list[_Token]) -> int:
    at, text = start + 1, []
    while at < len(value):
        char = value[at]
        if char == "\\" and at + 1 < len(value):
            text.append(value[at + 1])
            at += 2
            continue
        if char == '"':
            tokens.append(_Token("quoted", "".join(text)))
            return at + 1
        text.append(char)
        at += 1
    raise Refused("unclosed quote in From")


def _addr_spec(text: str) -> str:
    """``local@domain`` exactly: dot-atom local part, labelled domain, no encoded word."""
    text = text.strip(" \t")
    if "=?" in text:
        raise Refused("encoded word in the address of From")
    local, at, domain = text.partition("@")
    if not at or not local or not domain or "@" in domain:
        raise Refused("not one address in From")
    if len(text) > MAX_ADDRESS_CHARS:
        raise Refused("address too long in From")
    if not _valid_local(local) or not _valid_domain(domain):
        raise Refused("malformed address in From")
    return text.lower()


def _valid_local(local: str) -> bool:
    return all(_LOCAL_ASCII.fullmatch(ch) or _word_letter(ch) for ch in local)


def _valid_domain(domain: str) -> bool:
    return all(_valid_label(label) for label in domain.split("."))


def _valid_label(label: str) -> bool:
    if _LABEL_ASCII.fullmatch(label):
        return True
    return bool(label) and all(_word_letter(ch) or ch == "-" for ch in label)


def _word_letter(char: str) -> bool:
    """A non-ASCII letter, mark or digit (RFC 6532 addresses); never a space or control."""
    return not char.isascii() and unicodedata.category(char)[0] in "LMN"


def _display(tokens: list[_Token]) -> str:
    """A display name or comment as people read it: encoded words decoded, one line."""
    parts = [_decode(t.text) if "=?" in t.text else t.text for t in tokens]
    name = " ".join(parts)
    if _has_control(name, allow_tab=False):
        raise Refused("control character in the display name of From")
    return " ".join(name.split())


def _decode(text: str) -> str:
    """RFC 2047 words decoded, keeping every character (a NUL included) for checking."""
    try:
        chunks = decode_header(text)
    except Exception:  # malformed encoded words stay as written
        return text
    return "".join(
        chunk if isinstance(chunk, str) else mime.decode_bytes(chunk, charset)
        for chunk, charset in chunks
    )


def _check_name(name: str, address: str) -> None:
    """A display name may not name another address (whatever the address says)."""
    for word in _NAME_SEPARATORS.split(name) if "@" in name else ():
        local, at, domain = word.strip(".").rpartition("@")
        looks_like_one = at and local and "." in domain.strip(".")
        if looks_like_one and word.strip(".").lower() != address:
            raise Refused("display name of From looks like another address")


def _has_control(text: str, *, allow_tab: bool) -> bool:
    return any(unicodedata.category(ch) == "Cc" and not (allow_tab and ch == "\t") for ch in text)
