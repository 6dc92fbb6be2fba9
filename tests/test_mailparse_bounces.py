"""mailparse: bounces from many MTAs and languages, and what is not a bounce.

``tests/mail/bounces/manifest.tsv`` is the table of which MTA and language
each fixture stands for (laid out like the shared corpus): whole messages as
the MTAs send them to mailbot's VERP return path, with the expected reading in
``NAME.expected.json``. Every row is replayed through ``mailparse.parse``, once
with the flufl.bounce detectors and once with mailbot's own rules alone, so
that neither hides a gap in the other. Delay warnings must stay delays, and
auto-replies, read receipts and people quoting or forwarding a report must
never read as bounces.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from mailbot import mailparse
from mailbot.mailparse import bounces

HERE = Path(__file__).parent / "mail" / "bounces"
MANIFEST = HERE / "manifest.tsv"
COLUMNS = ["path", "category", "client_or_mta", "language", "expected_file"]
TEMPORARY = "temporary (delivery delay warning)"


def rows() -> list[dict[str, str]]:
    with MANIFEST.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def expected_of(row: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / row["expected_file"]).read_text(encoding="utf-8"))
    return data


def row_id(row: dict[str, str]) -> str:
    return row["path"].removesuffix(".eml")


ROWS = rows()


def test_the_manifest_lists_every_fixture_once() -> None:
    header = MANIFEST.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == COLUMNS
    listed = [row["path"] for row in ROWS]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in HERE.glob("*.eml"))
    for row in ROWS:
        assert row["category"] in ("bounce", "autoreply", "other")
        assert "_source" in expected_of(row)


def test_the_table_covers_the_formats_and_languages() -> None:
    failures = [r for r in ROWS if expected_of(r).get("bounce_kind") == "permanent"]
    delays = [r for r in ROWS if expected_of(r).get("bounce_kind") == TEMPORARY]
    negatives = [r for r in ROWS if expected_of(r).get("is_bounce") is False]
    assert len(failures) >= 35
    assert len(delays) >= 6
    assert len(negatives) >= 8
    assert {r["language"] for r in failures} >= {"en", "fr", "de", "es"}
    assert {r["language"] for r in delays} >= {"en", "fr", "de", "es"}


@pytest.mark.parametrize("library", [True, False], ids=["with-flufl", "own-rules"])
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_fixture_is_read_as_expected(
    row: dict[str, str], library: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounces, "LIBRARY_DETECTORS", library)
    expected = expected_of(row)
    parsed = mailparse.parse((HERE / row["path"]).read_bytes())
    assert parsed.parse_error == ""
    bounce = parsed.bounce
    assert (bounce is not None) == expected["is_bounce"], row["client_or_mta"]
    if "is_autoreply" in expected:
        assert parsed.autoreply == expected["is_autoreply"]
    if bounce is None:
        return
    assert parsed.automatic
    assert not parsed.autoreply
    assert parsed.forwarded is None
    assert sorted(bounce.recipients) == sorted(a.lower() for a in expected["bounced_recipients"])
    delayed = expected["bounce_kind"] == TEMPORARY
    assert bounce.delayed == delayed
    assert bounce.permanent == (not delayed)
    if "status" in expected:
        assert expected["status"] in bounce.status
    if "original_message_id" in expected:
        assert bounce.original_message_id == expected["original_message_id"]


@pytest.mark.parametrize(
    "row", [r for r in ROWS if "original_message_id" in expected_of(r)], ids=row_id
)
def test_the_returned_message_names_our_mail(row: dict[str, str]) -> None:
    """The returned message (attached, or pasted below a marker line in any of the
    MTAs' languages) gives back the VERP return path the mail was sent with."""
    bounce = mailparse.parse((HERE / row["path"]).read_bytes()).bounce
    assert bounce is not None
    key = expected_of(row)["original_message_id"].partition("@")[0]
    assert bounce.original_envelope_from == f"changes+bounce-{key}@mailbot.example"


def test_a_delay_warning_that_also_says_could_not_be_delivered_stays_a_delay() -> None:
    """Postfix's warning says "could not be delivered for more than 4 hour(s)":
    the words that it is still trying decide."""
    raw = (
        b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        b"To: changes+bounce-ab12@mailbot.example\r\n"
        b"Subject: Delayed Mail (still being retried)\r\n\r\n"
        b"# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\r\n"
        b"Your message could not be delivered for more than 4 hour(s).\r\n"
        b"It will be retried until it is 5 day(s) old.\r\n\r\n"
        b"<someone@slow.example>: connect to mx.slow.example[192.0.2.1]:25: timed out\r\n"
    )
    bounce = mailparse.parse(raw).bounce
    assert bounce is not None
    assert bounce.delayed
    assert not bounce.permanent
    assert bounce.recipients == ("someone@slow.example",)


def test_a_report_that_gave_up_is_a_failure_even_if_it_mentions_retrying() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\n"
        b"To: changes+bounce-ab12@mailbot.example\r\n"
        b"Subject: failure notice\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.example.net.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        b"<someone@slow.example>:\r\n"
        b"Connected to 192.0.2.1 but connection died. (#4.4.2)\r\n"
        b"I'm not going to try again; this message has been in the queue too long.\r\n"
    )
    bounce = mailparse.parse(raw).bounce
    assert bounce is not None
    assert bounce.permanent
    assert not bounce.delayed


def test_a_report_naming_nobody_is_about_the_sole_addressee_of_the_returned_mail() -> None:
    """Only one addressee: a returned message sent to several says nothing."""
    report = (
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n"
        "To: changes+bounce-ab12@mailbot.example\r\n"
        "Subject: Delivery Status Notification (Failure)\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\n** Message not delivered **\r\n\r\n"
        "There was a problem delivering your message.\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: changes@mailbot.example\r\nTo: {to}\r\nMessage-ID: <ab12@mailbot.example>\r\n"
        "Subject: x\r\n\r\nbody\r\n--b--\r\n"
    )
    one = mailparse.parse(report.format(to="only@one.example").encode()).bounce
    several = mailparse.parse(report.format(to="a@one.example, b@two.example").encode()).bounce
    assert one is not None
    assert one.recipients == ("only@one.example",)
    assert several is not None
    assert several.recipients == ()


def test_a_report_that_returns_nothing_still_names_the_mail_it_answers() -> None:
    raw = (
        b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n"
        b"To: changes+bounce-ab12@mailbot.example\r\n"
        b"In-Reply-To: <ab12@mailbot.example>\r\n"
        b"Subject: Delivery Status Notification (Failure)\r\n\r\n"
        b"** Address not found **\r\n\r\n"
        b"Your message wasn't delivered to gone@away.example because the address couldn't "
        b"be found, or is unable to receive mail.\r\n"
    )
    bounce = mailparse.parse(raw).bounce
    assert bounce is not None
    assert bounce.recipients == ("gone@away.example",)
    assert bounce.original_message_id == "ab12@mailbot.example"


def report(sender: str, subject: str, body: str) -> bytes:
    """A bare report to the VERP address: sender, subject and words only."""
    head = f"From: {sender}\nTo: changes+bounce-ab12@mailbot.example\nSubject: {subject}\n\n"
    return (head + body).replace("\n", "\r\n").encode()


@pytest.mark.parametrize(
    ("sender", "subject", "body", "delayed"),
    [
        (
            "postmaster@corp.example",
            "Undeliverable: x",
            "Delivery has failed to these recipients or distribution lists:\n\nJohn Smith\n"
            "The recipient's e-mail address was not found.\n\nDiagnostic information for "
            "administrators:\n\nGenerating server: ex.corp.example\n\njohn@corp.example\n"
            "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##\n",
            False,
        ),
        (
            "System Administrator <postmaster@corp.example>",
            "Undeliverable: x",
            "Your message did not reach some or all of the intended recipients.\n\nThe following "
            "recipient(s) could not be reached:\n\n      john@corp.example on 3/2/2026 10:00 AM\n"
            "            <ex.corp.example #5.1.1>\n",
            False,
        ),
        (
            "MAILER-DAEMON@mx.firma.example (Mail Delivery System)",
            "Unzustellbare Nachricht",
            "Leider konnte Ihre Nachricht nicht an einen oder mehrere Empfänger\nzugestellt "
            "werden.\n\n<john@corp.example>: host mx.corp.example sagte: 550 5.1.1 unbekannt\n",
            False,
        ),
        (
            "MAILER-DAEMON@mx.empresa.example",
            "Mensaje no entregado",
            "Su mensaje no pudo ser entregado a las siguientes direcciones.\nEste es un error "
            "permanente.\n\n<john@corp.example>:\nno existe el buzón\n",
            False,
        ),
        (
            "MAILER-DAEMON@mx.firma.example",
            "Verzögerte Nachricht",
            "# DIES IST NUR EINE WARNUNG. SIE MÜSSEN IHRE NACHRICHT NICHT ERNEUT SENDEN. #\n\n"
            "Ihre Nachricht konnte seit mehr als 4 Stunden nicht zugestellt werden.\n\n"
            "<john@corp.example>: connect to mx.corp.example: Connection timed out\n",
            True,
        ),
        (
            "MAILER-DAEMON@mx.firme.example",
            "Courrier retardé",
            "# CECI EST UN AVERTISSEMENT SEULEMENT. #\n\nVotre message n'a pas pu être remis "
            "depuis plus de 4 heures.\n\n<john@corp.example> : connexion expirée\n",
            True,
        ),
    ],
)
def test_report_wordings(sender: str, subject: str, body: str, delayed: bool) -> None:
    bounce = mailparse.parse(report(sender, subject, body)).bounce
    assert bounce is not None
    assert bounce.recipients == ("john@corp.example",)
    assert bounce.delayed == delayed


@pytest.mark.parametrize(
    ("sender", "subject", "body"),
    [
        (
            "postmaster@corp.example",
            "Delivery Status Notification (Success)",
            "This is an automatically generated Delivery Status Notification.\n\nYour message "
            "has been successfully relayed to the following recipients.\n\n   john@corp.example\n",
        ),
        (
            "postmaster@corp.example",
            "Relayed: x",
            "Delivery to these recipients or groups is complete, but no delivery notification "
            "was sent by the destination server:\n\njohn@corp.example\n",
        ),
        (
            "Postmaster <postmaster@corp.example>",
            "Automatic reply: x",
            "This mailbox is not monitored: mail sent here could not be delivered to a person.\n",
        ),
        (
            "noreply@shop.example",
            "Your order could not be delivered",
            "Dear customer, your parcel could not be delivered. Track it here.\n",
        ),
    ],
)
def test_notices_that_are_not_bounces(sender: str, subject: str, body: str) -> None:
    assert mailparse.parse(report(sender, subject, body)).bounce is None
