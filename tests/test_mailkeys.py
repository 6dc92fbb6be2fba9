"""What identifies a message before it is parsed: its Message-ID is read as
the email parser reads it, whatever the bytes, though most messages are read
without the parser."""

from __future__ import annotations

import random
import re
import zlib
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

import pytest

from mailbot import mailkeys

MAIL = sorted(p for p in (Path(__file__).parent / "mail").rglob("*.eml") if p.is_file())
PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"From ",
    b"Message-ID: <a@b.test>",
    b"message-id:",
    b"MESSAGE-ID :",
    b"\xc3\xa9",
    b"<x@y.test>",
    b"\r\n ",
    b"\n\t<z@w.test>",
    b":x",
    b"X: y",
    b"\r\n\r\n",
]


def parsed_message_id(raw: bytes) -> str | None:
    """The Message-ID as the standard library's parser reads the header section."""
    head = BytesParser(policy=compat32).parsebytes(mailkeys.bounded(raw), headersonly=True)
    value = head.get("Message-ID")
    text = "" if value is None else str(value)
    if any("\udc80" <= ch <= "\udcff" for ch in text):  # raw 8-bit bytes, escaped
        data = text.encode("utf-8", errors="surrogateescape")
        text = data.decode("utf-8", errors="replace")
    found = re.search(r"<([^<>\s]+)>", text[:8000])
    return found.group(1)[:900] if found else None


def mutations(raw: bytes, count: int, seed: int) -> list[bytes]:
    """``raw``'s head with pieces of header syntax dropped in at random places."""
    chance = random.Random(seed)
    variants = []
    for _ in range(count):
        data = bytearray(raw[:3000])
        for _ in range(chance.randint(1, 4)):
            at = chance.randint(0, len(data))
            data[at : at + chance.randint(0, 3)] = chance.choice(PIECES)
        variants.append(bytes(data))
    return variants


def test_the_sample_mail_is_there() -> None:
    assert len(MAIL) > 50


@pytest.mark.parametrize("path", MAIL[::4], ids=lambda p: p.name)
def test_the_message_id_is_the_one_the_email_parser_reads(path: Path) -> None:
    raw = path.read_bytes()
    for n, variant in enumerate([raw, *mutations(raw, 25, seed=zlib.crc32(path.name.encode()))]):
        assert mailkeys.message_id(variant) == parsed_message_id(variant), (n, variant[:400])


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"Message-ID: <a@b.test>\r\n\r\nbody", "a@b.test"),
        (b"message-id:\r\n  <folded@b.test>\r\nSubject: x\r\n\r\n", "folded@b.test"),
        (b"Message-ID: <first@b.test>\nMessage-ID: <second@b.test>\n\n", "first@b.test"),
        (b"Subject: x\r\n\r\nMessage-ID: <in-body@b.test>\r\n", None),
        (b"Subject: x\r\nnot a field\r\nMessage-ID: <after@b.test>\r\n\r\n", None),
        (b"From someone Mon Mar  2 09:00:00 2026\nMessage-ID: <mbox@b.test>\n\n", "mbox@b.test"),
        (b"Subject: caf\xc3\xa9\r\nMessage-ID: <x@b.test>\r\n\r\n", "x@b.test"),
        (b"Message-ID: <caf\xc3\xa9@b.test>\r\n\r\n", "caf\ufffd\ufffd@b.test"),
        (b"Message-ID: no brackets\r\n\r\n", None),
        (b"", None),
    ],
)
def test_a_message_id_is_found_in_the_header_section_only(head: bytes, expected: str) -> None:
    assert mailkeys.message_id(head) == expected
    assert parsed_message_id(head) == expected
