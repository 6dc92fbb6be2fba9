"""Inline forwards of every major client, in every language they ship: one case per row
of ``tests/mail/forwards/manifest.tsv`` (the client x language table).

Each row's message goes through ``mailparse.parse``; its expected file says
whether it is a forward, who wrote the forwarded message, its subject, and for
a forwarded decision the command ``commands.find_command`` finds in the
forwarded message's own new text, with its token. Rows that are replies with a
header block (not forwards) must stay replies, with their new text cut above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailbot import commands, mailparse

ROOT = Path(__file__).resolve().parent / "mail" / "forwards"
COLUMNS = ("path", "category", "client_or_mta", "language", "expected_file")
AGENCY = "Agency <agency@agency.example>"


@dataclass(frozen=True)
class Row:
    path: str
    category: str
    client: str
    language: str
    expected: dict[str, Any]

    def __str__(self) -> str:
        return self.path


def rows() -> list[Row]:
    lines = (ROOT / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == [
        "path",
        "category",
        "client_or_mta",
        "language",
        "expected_file",
    ]
    found = []
    for line in lines[1:]:
        path, category, client, language, expected_file = line.split("\t")
        expected = json.loads((ROOT / expected_file).read_text(encoding="utf-8"))
        found.append(Row(path, category, client, language, expected))
    return found


ROWS = rows()


def message(row: Row) -> bytes:
    """The row's message: an .eml as it is, a body-only file wrapped as the agency's mail."""
    data = (ROOT / row.path).read_bytes()
    if row.path.endswith(".eml"):
        return data
    mail = EmailMessage()
    mail["From"] = AGENCY
    mail["To"] = "changes@mailbot.example"
    mail["Subject"] = row.expected.get("input_subject", "Fwd: Validation")
    subtype = "html" if row.path.endswith(".html") else "plain"
    mail.set_content(data.decode("utf-8"), subtype=subtype)
    return mail.as_bytes()


def test_the_table_covers_every_client_and_language() -> None:
    forwards = [row for row in ROWS if row.category == "forwarded"]
    languages = {row.language for row in forwards}
    assert {"en", "fr", "de", "es", "it", "nl", "pt"} <= languages
    clients = " ".join(row.client for row in forwards)
    for client in ("Gmail", "Outlook", "Apple Mail", "Thunderbird", "Yahoo", "Proton", "GMX"):
        assert client in clients
    for client in ("Web.de", "Zoho", "Orange", "SFR", "Free", "La Poste"):
        assert client in clients


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_forward_fixture(row: Row) -> None:
    parsed = mailparse.parse(message(row))
    expected = row.expected
    forwarded = parsed.forwarded
    assert (forwarded is not None) == expected["is_forwarded"]
    if forwarded is None:
        assert parsed.new_text == expected["reply_text"]
        return
    author = expected["forwarded_from"]
    assert forwarded.sender == author["address"]
    assert forwarded.sender_name == author["name"]
    assert forwarded.subject == expected["forwarded_subject"]
    if "forward_message" in expected:
        assert parsed.forwarder_note == expected["forward_message"]
    if "forwarded_decision" in expected:
        command = commands.find_command("", forwarded.new_text)
        assert command.verb == expected["forwarded_decision"]
        assert forwarded.tokens_in_new_text[:1] == tuple(expected["forwarded_tokens"][:1])


def test_a_mailto_link_keeps_its_address_only_in_a_header_block() -> None:
    """Outlook writes the forwarded sender as a link whose text is the name only; a link
    in the text itself stays as written."""
    html = (
        '<p>Write to <a href="mailto:help@agency.example">our help desk</a>.</p>'
        '<div><b>From:</b> <a href="mailto:bob@client.example">Bob Client</a><br>'
        "<b>Sent:</b> Monday, March 2, 2026 11:00 AM<br><b>Subject:</b> Validation</div>"
    )
    assert mailparse.html_to_text(html).splitlines() == [
        "Write to our help desk.",
        "",
        "From: Bob Client <bob@client.example>",
        "Sent: Monday, March 2, 2026 11:00 AM",
        "Subject: Validation",
    ]
