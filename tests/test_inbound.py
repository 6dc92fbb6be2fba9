"""Real-world inbound mail through the service: forwards through the agency mailbox,
replies above a quoted token mail, robots, bounces, loops and floods."""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import pytest
from conftest import make_settings
from factories import (
    ALICE,
    BOB,
    CAROL,
    STRANGER,
    MailFactory,
    Sent,
    request_state,
    send,
    token_in,
)

from mailbot.config import Settings
from mailbot.outgoing.outbox import CommitPoint
from mailbot.service import Mailbot

pytestmark = pytest.mark.usefixtures("world")
AGENCY_BOX = "desk@agency.test"


@pytest.fixture
def settings(tmp_path: Any, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, policy={"trusted_forwarders": [AGENCY_BOX]})


def opened(bot: Mailbot, mail: MailFactory) -> tuple[str, dict[str, Sent]]:
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    asks = {m.to: m for m in mails if m.event == "validation-requested"}
    request_id = mails[0].row.request_id
    assert request_id
    return request_id, asks


def validation(bot: Mailbot, request_id: str, email: str) -> dict[str, Any]:
    data = request_state(bot, request_id)
    return next(v for v in data["validations"] if v["email"] == email) | {
        "request": data["status"],
        "events": data["events"],
    }


def quoted(ask: Sent) -> str:
    return "\n".join("> " + line for line in ask.text.splitlines())


def gmail_forward(
    forwarder: str, original_from: str, subject: str, body: str, note: str = ""
) -> bytes:
    text = (
        f"{note}\n\n---------- Forwarded message ---------\n"
        f"From: Carol Agency <{original_from}>\nDate: Mon, 2 Mar 2026 at 09:00\n"
        f"Subject: {subject}\nTo: <changes@bot.test>\n\n{body}\n"
    )
    return MailFactory()(forwarder, f"Fwd: {subject}", text)


def test_the_agency_mailbox_forward_speaks_for_the_original_sender(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    raw = gmail_forward(
        "customer-care@agency.test", CAROL, "validation", f"ACCEPT {token_in(asks[CAROL])}"
    )
    mails = send(bot, raw, source="imap")
    assert [(m.event, m.to) for m in mails] == [("validation-recorded", CAROL)]
    found = validation(bot, request_id, CAROL)
    assert found["status"] == "accepted"
    assert "forwarded by customer-care@agency.test" in [e["detail"] for e in found["events"]]


def test_a_trusted_forwarder_by_smtp_is_read_like_the_mailbox(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    raw = gmail_forward(AGENCY_BOX, CAROL, "validation", f"REFUSE {token_in(asks[CAROL])}")
    assert {m.event for m in send(bot, raw)} == {"request-refused"}
    assert validation(bot, request_id, CAROL)["request"] == "refused"


def outlook_forward_by_name(body: str) -> bytes:
    """Outlook inside one organisation: the forwarded sender is a name, no address."""
    text = (
        "\n\n________________________________\nFrom: Carol Agency\n"
        "Sent: Monday, March 2, 2026 9:00 AM\nTo: Desk\nSubject: RE: validation\n\n"
        f"{body}\n"
    )
    return MailFactory()(AGENCY_BOX, "FW: RE: validation", text)


def test_a_forward_hiding_its_senders_address_acts_by_its_token_alone(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    mails = send(bot, outlook_forward_by_name(f"ACCEPT {token_in(asks[CAROL])}"))
    assert [(m.event, m.to) for m in mails] == [("validation-recorded", CAROL)]
    assert validation(bot, request_id, CAROL)["status"] == "accepted"


def test_a_forward_hiding_its_senders_address_cannot_decide_without_a_token(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = opened(bot, mail)
    mails = send(bot, outlook_forward_by_name("ACCEPT"))
    assert [(m.to, m.header("X-Mailbot-Error")) for m in mails] == [(AGENCY_BOX, "bad-token")]
    assert validation(bot, request_id, CAROL)["status"] == "pending"


def test_an_untrusted_forwarder_speaks_for_itself(bot: Mailbot, mail: MailFactory) -> None:
    _, asks = opened(bot, mail)
    raw = gmail_forward(
        STRANGER, CAROL, "validation", f"ACCEPT {token_in(asks[CAROL])}", note="FYI"
    )
    mails = send(bot, raw)
    assert [(m.event, m.to, m.header("X-Mailbot-Error")) for m in mails] == [
        ("error", STRANGER, "unknown-command")
    ]


def test_refuse_above_a_quoted_token_mail_that_says_accept(bot: Mailbot, mail: MailFactory) -> None:
    _request_id, asks = opened(bot, mail)
    ask = asks[CAROL]
    assert "ACCEPT" in ask.text
    assert "REFUSE" in ask.text
    attribution = "Le lundi 2 mars 2026 à 09:00, mailbot <changes@bot.test> a écrit :"
    body = f"REFUSE\n\n{attribution}\n{quoted(ask)}"
    raw = mail(CAROL, f"RE: {ask.header('Subject')}", body, in_reply_to=ask.header("Message-ID"))
    assert {m.event for m in send(bot, raw)} == {"request-refused"}


def test_a_bare_answer_quoting_the_token_mail_uses_the_quoted_token(
    bot: Mailbot, mail: MailFactory
) -> None:
    _request_id, asks = opened(bot, mail)
    attribution = "On Mon, 2 Mar 2026 at 09:00, mailbot <changes@bot.test> wrote:"
    body = f"Accept\n\n{attribution}\n{quoted(asks[CAROL])}"
    mails = send(bot, mail(CAROL, "no thread, no plus address", body))
    assert [(m.event, m.to) for m in mails] == [("validation-recorded", CAROL)]


def test_a_forwarded_reply_whose_token_is_only_in_its_quote_is_read_like_a_direct_one(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    attribution = "On Mon, 2 Mar 2026 at 09:00, mailbot <changes@bot.test> wrote:"
    reply = f"REFUSE\n\n{attribution}\n{quoted(asks[CAROL])}"
    raw = gmail_forward(AGENCY_BOX, CAROL, "Re: validation", reply)
    mails = send(bot, raw, source="imap")
    assert {m.event for m in mails} == {"request-refused"}
    found = validation(bot, request_id, CAROL)
    assert found["status"] == "refused"
    assert "forwarded by desk@agency.test" in [e["detail"] for e in found["events"]]


def test_an_attached_forwarded_reply_is_matched_by_its_own_thread(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    ask = asks[CAROL]
    subject, thread = f"Re: {ask.header('Subject')}", ask.header("Message-ID")
    answer = mail(CAROL, subject, "Accept", in_reply_to=thread)
    forward = EmailMessage()
    forward["From"], forward["To"], forward["Subject"] = AGENCY_BOX, "changes@bot.test", "Fwd: Re"
    forward.set_content("See attached.")
    forward.add_attachment(message_from_bytes(answer))
    mails = send(bot, forward.as_bytes(), source="imap")
    assert [(m.event, m.to) for m in mails] == [("validation-recorded", CAROL)]
    assert validation(bot, request_id, CAROL)["status"] == "accepted"


def test_tokens_of_two_validations_are_ambiguous(bot: Mailbot, mail: MailFactory) -> None:
    request_id, asks = opened(bot, mail)
    body = f"ACCEPT {token_in(asks[CAROL])}\n{token_in(asks[ALICE])}"
    mails = send(bot, mail(CAROL, "x", body))
    assert [m.header("X-Mailbot-Error") for m in mails] == ["ambiguous-decision"]
    assert validation(bot, request_id, CAROL)["status"] == "pending"


@pytest.mark.parametrize(
    ("subject", "headers"),
    [
        ("Réponse automatique : absent", {}),
        ("Out of Office: validation", {}),
        ("Automatic reply: validation", {"X-Auto-Response-Suppress": "All"}),
        ("Re: validation", {"Auto-Submitted": "auto-replied"}),
        ("Re: validation", {"X-Autoreply": "yes"}),
    ],
)
def test_auto_replies_quoting_the_token_mail_are_ignored(
    bot: Mailbot, mail: MailFactory, subject: str, headers: dict[str, str]
) -> None:
    request_id, asks = opened(bot, mail)
    ask = asks[CAROL]
    body = f"Je suis absente jusqu'au 10 mars.\n\n{ask.text}"
    raw = mail(CAROL, subject, body, headers=headers, in_reply_to=ask.header("Message-ID"))
    assert send(bot, raw) == []
    assert validation(bot, request_id, CAROL)["status"] == "pending"


def test_our_own_mail_coming_back_is_dropped(bot: Mailbot, mail: MailFactory) -> None:
    raw = mail(STRANGER, "HELP", "", headers={"X-Loop": "changes@bot.test"})
    assert send(bot, raw) == []


def dsn(ask: Sent, action: str = "failed", status: str = "5.1.1") -> bytes:
    """An RFC 3464 report for ``ask``, sent to the VERP address it went out with."""
    return f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.agency.test>
To: {ask.row.envelope_from}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn.{ask.row.id}.{action}@mx.agency.test>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be
delivered to {ask.to}.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.agency.test

Final-Recipient: rfc822; {ask.to}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 5.1.1 <{ask.to}>: no such user

--BOUNDARY
Content-Type: text/rfc822-headers

Message-ID: {ask.header("Message-ID")}
Subject: {ask.header("Subject")}

--BOUNDARY--
""".replace("\n", "\r\n").encode()


def test_a_bounced_token_mail_marks_delivery_failed_and_tells_the_requester(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    bot.flush_outbox(_Sink())
    raw = dsn(asks[CAROL])
    mails = send(bot, raw, envelope_from="", recipients=(asks[CAROL].row.envelope_from,))
    assert [(m.event, m.to) for m in mails] == [("delivery-failed", ALICE)]
    assert CAROL in mails[0].text
    assert validation(bot, request_id, CAROL)["delivery"] == "failed"
    assert validation(bot, request_id, ALICE)["delivery"] == "sent"
    assert send(bot, dsn(asks[CAROL]).replace(b"dsn.", b"dsn2."), envelope_from="") == []


def test_a_bounce_holding_nul_bytes_is_read_on_every_database(
    bot: Mailbot, mail: MailFactory
) -> None:
    """A report's text and diagnostic with stray NULs: the bounce is recorded,
    with the diagnostic kept (PostgreSQL, which cannot store a NUL, gets
    U+FFFD in its place; before, the message failed unprocessed)."""
    request_id, asks = opened(bot, mail)
    bot.flush_outbox(_Sink())
    raw = dsn(asks[CAROL]).replace(b"no such user", b"no such\x00 user")
    raw = raw.replace(b"could not be", b"could\x00not be")
    mails = send(bot, raw, envelope_from="", recipients=(asks[CAROL].row.envelope_from,))
    assert [(m.event, m.to) for m in mails] == [("delivery-failed", ALICE)]
    found = validation(bot, request_id, CAROL)
    assert found["delivery"] == "failed"
    (detail,) = [e["detail"] for e in found["events"] if e["kind"] == "delivery-failed"]
    assert detail.replace("\ufffd", "\x00").endswith("no such\x00 user")


def test_a_delay_notice_is_not_a_failure(bot: Mailbot, mail: MailFactory) -> None:
    request_id, asks = opened(bot, mail)
    bot.flush_outbox(_Sink())
    assert send(bot, dsn(asks[CAROL], "delayed", "4.4.7"), envelope_from="") == []
    assert validation(bot, request_id, CAROL)["delivery"] == "sent"


@pytest.mark.usefixtures("world")
def test_error_answers_are_rate_limited_per_address(bot: Mailbot, mail: MailFactory) -> None:
    limit = bot.settings.policy.max_answers_per_hour
    answered = [send(bot, mail(CAROL, "Hello", f"message {n}")) for n in range(limit + 3)]
    assert [len(a) for a in answered] == [1] * limit + [0, 0, 0]
    # Other addresses are unaffected; an unknown one is answered once a day.
    assert len(send(bot, mail(BOB, "Hello", "x"))) == 1
    assert [len(send(bot, mail(STRANGER, "Hello", f"x{n}"))) for n in range(3)] == [1, 0, 0]


class _Sink:
    def send(
        self, envelope_from: str, recipient: str, payload: bytes, commit_point: CommitPoint
    ) -> None:
        """Accepts everything (the delivery itself is not under test here)."""


def test_words_that_look_like_a_token_do_not_hide_the_real_one(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, asks = opened(bot, mail)
    spaced = token_in(asks[CAROL]).replace("-", " ")
    mails = send(bot, mail(CAROL, "x", f"Accept\ncode {spaced}"))
    assert [(m.event, m.to) for m in mails] == [("validation-recorded", CAROL)]
    assert validation(bot, request_id, CAROL)["status"] == "accepted"
