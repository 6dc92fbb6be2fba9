"""Replies to mailbot's token mail from every client and language in tests/mail/replies.

Each row of ``tests/mail/replies/manifest.tsv`` (the table of which client and
language a fixture stands for) is a reply to the token mail, which itself
contains ACCEPT, REFUSE and the token: the command written above (or below)
the quote must be the decision, and a reply whose own words hold no command
must end as "not understood", never as a decision read out of the quote.
"""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailbot import commands, mailparse
from mailbot.errors import UnknownCommand

REPLIES = Path(__file__).parent / "mail" / "replies"
TOKEN = "7KQ2X9JM4TRD8WPA3HNB"
LANGUAGES = {"en", "fr", "de", "es", "it", "nl", "pt"}


def manifest() -> list[dict[str, str]]:
    lines = (REPLIES / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def message(row: dict[str, str], expected: dict[str, Any]) -> bytes:
    """The fixture as received: a whole message, or a body wrapped into one."""
    data = (REPLIES / row["path"]).read_bytes()
    if row["path"].endswith(".eml"):
        return data
    wrapped = EmailMessage()
    wrapped["From"] = '"Alice Martin" <alice@customer.example>'
    wrapped["To"] = "changes@mailbot.example"
    wrapped["Subject"] = expected["input_subject"]
    wrapped["Message-ID"] = "<reply@customer.example>"
    wrapped.set_content(data.decode("utf-8"))
    return wrapped.as_bytes()


def same_text(found: str, wanted: str) -> bool:
    """Equal once trailing spaces and surrounding blank lines are ignored."""

    def norm(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip().splitlines())

    return norm(found) == norm(wanted)


def test_the_table_covers_every_language_and_has_negatives() -> None:
    rows = manifest()
    assert len(rows) >= 50
    assert {row["language"] for row in rows} >= LANGUAGES
    for row in rows:
        assert (REPLIES / row["path"]).is_file(), row["path"]
        assert (REPLIES / row["expected_file"]).is_file(), row["expected_file"]
    decisions = [
        json.loads((REPLIES / row["expected_file"]).read_text(encoding="utf-8"))["decision"]
        for row in rows
    ]
    assert {"ACCEPT", "REFUSE", None} <= set(decisions)


@pytest.mark.parametrize("row", manifest(), ids=lambda row: row["path"])
def test_the_reply_is_read_as_its_sender_wrote_it(row: dict[str, str]) -> None:
    expected: dict[str, Any] = json.loads(
        (REPLIES / row["expected_file"]).read_text(encoding="utf-8")
    )
    parsed = mailparse.parse(message(row, expected))
    assert parsed.parse_error == ""
    assert same_text(parsed.new_text, expected["reply_text"]), parsed.new_text
    assert parsed.tokens_in_new_text == tuple(expected["tokens_in_new_text"])
    assert TOKEN in parsed.tokens_in_quote
    assert (parsed.forwarded is not None) == expected["is_forwarded"]
    assert (parsed.bounce is not None) == expected["is_bounce"]
    assert parsed.autoreply == expected["is_autoreply"]
    assert not parsed.automatic
    if expected["decision"] is None:
        with pytest.raises(UnknownCommand):
            commands.find_command(parsed.subject, parsed.new_text)
    else:
        assert commands.find_command(parsed.subject, parsed.new_text).verb == expected["decision"]
