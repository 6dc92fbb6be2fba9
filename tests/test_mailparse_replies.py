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


GREETINGS = [
    "Bonjour,", "Bonjour Madame,", "Hello,", "Hi team,", "Dear Sir or Madam,", "Dear Mr. Smith,",
    "Guten Tag,", "Hallo Herr Müller,", "Sehr geehrte Damen und Herren,", "Buenos días,",
    "Hola Ana,", "Estimado Sr. García:", "Ciao,", "Buongiorno,", "Gentile dott. Rossi,",
    "Goedemorgen,", "Beste Jan,", "Olá,", "Bom dia,", "Prezados,",
]  # fmt: skip


@pytest.mark.parametrize("greeting", GREETINGS)
def test_the_command_is_the_first_line_that_is_not_a_greeting(greeting: str) -> None:
    subject = "Re: [CR-7K2QX9MD] Validation requested"
    assert commands.find_command(subject, f"{greeting}\n\nREFUSE").verb == "REFUSE"
    assert commands.find_command(subject, f"{greeting}\nHi again,\nACCEPT").verb == "ACCEPT"
    with pytest.raises(UnknownCommand):
        commands.find_command(subject, f"{greeting}\n\nWho asked for this?\nACCEPT")


def reply(body: str, subject: str = "Re: [CR-7K2QX9MD] Validation requested") -> bytes:
    wrapped = EmailMessage()
    wrapped["From"] = "agency@agency.example"
    wrapped["To"] = "changes@mailbot.example"
    wrapped["Subject"] = subject
    wrapped.set_content(body)
    return wrapped.as_bytes()


def test_a_table_is_not_a_quote_marked_with_bars() -> None:
    body = "ACCEPT\n\n| role | contact |\n| tech | Carol |\n"
    assert mailparse.parse(reply(body)).new_text == body.strip()


@pytest.mark.parametrize(
    "attribution",
    ["mailbot wrote:", "mailbot <changes@mailbot.example> a écrit :", "Alice Martin schrieb:"],
)
def test_a_command_right_above_an_undated_attribution_is_kept(attribution: str) -> None:
    """No blank line between: the command with its token is not taken into the attribution."""
    body = f"ACCEPT {TOKEN}\n{attribution}\n> Reply ACCEPT or REFUSE.\n"
    assert mailparse.parse(reply(body)).new_text == f"ACCEPT {TOKEN}"


def test_a_wrapped_dated_attribution_still_starts_on_its_first_line() -> None:
    body = "REFUSE\n\nOn Mon, 2 Mar 2026 at 10:00,\nAlice Martin wrote:\n> ACCEPT it\n"
    assert mailparse.parse(reply(body)).new_text == "REFUSE"


def test_an_html_rule_above_the_unmarked_original_ends_the_new_text() -> None:
    html = (
        "<html><body><p>REFUSE</p><hr><p>Your personal validation token: "
        f"{TOKEN}</p><p>reply ACCEPT or REFUSE as the first line</p></body></html>"
    )
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@agency.example", "b@x.example", "Re: x"
    message.set_content(html, subtype="html")
    parsed = mailparse.parse(message.as_bytes())
    assert parsed.new_text == "REFUSE"
    assert parsed.tokens_in_quote == (TOKEN,)


FORWARDED = (
    "From: Bob Customer <bob@customer.example>\nSent: Monday, March 2, 2026 11:00\n"
    "To: agency@agency.example\nSubject: RE: [CR-7K2QX9MD] Validation requested\n\n"
    f"ACCEPT {TOKEN}\n"
)


@pytest.mark.parametrize(
    "above",
    [
        "See below what the customer wrote:\n\n---------- Forwarded message ---------\n",
        "FYI\n\n-----\nAgency Ltd\n+33 1 23 45 67 89\n\n",
        "FYI\n\n________________________________\n",
    ],
)
def test_words_or_a_rule_above_a_forward_leave_the_forward_found(above: str) -> None:
    parsed = mailparse.parse(reply(above + FORWARDED, subject="FW: Validation requested"))
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender == "bob@customer.example"
    assert parsed.forwarded.tokens_in_new_text == (TOKEN,)


def test_a_rule_in_a_long_signature_above_a_forward_leaves_the_forward_found() -> None:
    signature = "Agency Ltd\n" + "\n".join(f"Disclaimer line {n}" for n in range(12)) + "\n\n"
    body = "FYI\n\n-----\n" + signature + "________________________________\n" + FORWARDED
    parsed = mailparse.parse(reply(body, subject="FW: Validation requested"))
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender == "bob@customer.example"
