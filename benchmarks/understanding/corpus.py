"""Corpora laid out like ``shared/corpus``: a ``manifest.tsv`` and the messages.

A row that cannot be read (too few columns, a missing or empty message, an
expected file that is missing or not a JSON object) becomes an ``Unscorable``
with the reason, never an exception: the benchmark must run on any corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

CONTACT = '"Alice Martin" <alice@customer.example>'
BOT = "changes@mailbot.example"
COLUMNS = ("path", "category", "client_or_mta", "language", "expected_file")
MAX_MESSAGE_BYTES = 20_000_000
ENCODINGS = [("utf-8", None), ("utf-8", "base64"), ("iso-8859-1", "quoted-printable")]


@dataclass(frozen=True)
class Entry:
    path: str
    category: str
    client: str
    language: str
    expected: dict[str, Any]
    raw: bytes
    """The whole message (bodies-only files wrapped into one)."""
    body: str | None
    """For .txt/.html corpus files: the body as written."""
    corpus: str = ""
    """The corpus it comes from (its directory name), to tell corpora apart."""
    has_expected: bool = False
    row: int = 0
    """Its line in the manifest (a message may be listed on several rows)."""

    @property
    def label(self) -> str:
        return f"{self.corpus}/{self.path}" if self.corpus else self.path

    @property
    def key(self) -> str:
        return f"{self.corpus}:{self.row}"


@dataclass(frozen=True)
class Unscorable:
    """A row the benchmark cannot score, and why."""

    label: str
    reason: str
    category: str = "-"


@dataclass
class Corpus:
    root: Path
    entries: list[Entry] = field(default_factory=list)
    unscorable: list[Unscorable] = field(default_factory=list)


def find_corpora(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Corpus roots: each path holding a manifest, or else its subdirs that do."""
    roots: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if (path / "manifest.tsv").is_file():
            roots.append(path)
            continue
        found = sorted(p.parent for p in path.glob("*/manifest.tsv")) if path.is_dir() else []
        if not found:
            problems.append(f"{path}: no manifest.tsv in it nor in its subdirectories")
        roots.extend(found)
    return roots, problems


def read_corpus(root: Path, name: str = "") -> Corpus:
    """Every row of a corpus: loaded, or set aside with the reason."""
    corpus = Corpus(root)
    try:
        lines = (root / "manifest.tsv").read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        corpus.unscorable.append(Unscorable(f"{name or root}/manifest.tsv", f"unreadable: {error}"))
        return corpus
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip() or (number == 1 and line.lstrip("\ufeff").startswith("path\t")):
            continue
        loaded = _row(root, name, line, number)
        if isinstance(loaded, Entry):
            corpus.entries.append(loaded)
        else:
            corpus.unscorable.append(loaded)
    return corpus


def load_corpus(root: Path) -> list[Entry]:
    """The rows of a corpus that could be loaded."""
    return read_corpus(root).entries


def _row(root: Path, name: str, line: str, number: int) -> Entry | Unscorable:
    cells = line.split("\t")
    if len(cells) < len(COLUMNS):
        where = f"{name or root.name}/manifest.tsv line {number}"
        return Unscorable(where, f"manifest row with {len(cells)} columns, not {len(COLUMNS)}")
    path, category, client, language, expected_file = (c.strip() for c in cells[:5])
    label = f"{name}/{path}" if name else path
    where = f"{label} (manifest line {number})"
    expected = _expected(root, expected_file)
    if isinstance(expected, str):
        return Unscorable(where, expected, category)
    data = _message(root, path)
    if isinstance(data, str):
        return Unscorable(where, data, category)
    body = None
    if path.endswith((".txt", ".html")):
        body = data.decode("utf-8", errors="replace")
        subject = str(expected.get("input_subject", "Re: your message"))
        data = wrap(body, subject, html=path.endswith(".html"))
    return Entry(
        path, category, client or "-", language or "-", expected, data, body, name,
        has_expected=expected_file not in ("", "-"), row=number,
    )  # fmt: skip


def _expected(root: Path, expected_file: str) -> dict[str, Any] | str:
    """The expected values, or why there are none usable."""
    if expected_file in ("", "-"):
        return {}
    try:
        value = json.loads((root / expected_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "expected file missing"
    except (OSError, UnicodeDecodeError) as error:
        return f"expected file unreadable ({type(error).__name__})"
    except json.JSONDecodeError:
        return "expected file is not valid JSON"
    if not isinstance(value, dict):
        return "expected file is not a JSON object"
    return value


def _message(root: Path, path: str) -> bytes | str:
    """The message's bytes, or why it cannot be read."""
    try:
        file = root / path
        if file.stat().st_size > MAX_MESSAGE_BYTES:
            return "message file too big"
        data = file.read_bytes()
    except FileNotFoundError:
        return "message file missing"
    except OSError as error:
        return f"message file unreadable ({type(error).__name__})"
    if not data.strip():
        return "message file empty"
    return data


def wrap(
    body: str,
    subject: str,
    *,
    html: bool = False,
    sender: str = CONTACT,
    encoding: tuple[str, str | None] = ENCODINGS[0],
) -> bytes:
    """A bodies-only corpus file as the message a mail client would have sent."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = BOT
    message["Subject"] = subject
    message["Message-ID"] = "<benchmark@customer.example>"
    charset, cte = encoding
    if charset != "utf-8" and body.encode(charset, errors="replace").decode(charset) != body:
        charset, cte = "utf-8", None  # text the legacy charset cannot hold
    message.set_content(body, subtype="html" if html else "plain", charset=charset, cte=cte)
    return message.as_bytes()


def reading(raw: bytes) -> tuple[str, str, bool]:
    """(subject, body, whether the body is HTML) as a library user reads a message:
    the first text/plain part, else the first text/html one."""
    message = as_message(raw)
    html: str | None = None
    for part in message.walk():
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html") or part.get_filename():
            continue
        text = _decoded(part)
        if kind == "text/plain":
            return _subject(message), text, False
        html = text if html is None else html
    return _subject(message), html or "", html is not None


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    try:
        text = data.decode(part.get_content_charset() or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def _subject(message: Message) -> str:
    try:
        return str(make_header(decode_header(str(message.get("Subject", "")))))
    except Exception:  # a badly encoded subject: as written
        return str(message.get("Subject", ""))


def body_of(raw: bytes) -> tuple[str, bool]:
    """The body a library user reads, and whether it is HTML."""
    _, text, html = reading(raw)
    return text, html


def as_message(raw: bytes) -> Message:
    """The message as the standard library reads it (what flufl.bounce is given)."""
    return message_from_bytes(raw)
