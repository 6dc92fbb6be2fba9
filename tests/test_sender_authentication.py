"""A forged From is never believed: strictly parsed senders, the front MTA's
Authentication-Results, and CANCEL/RESEND confirmed by the real address.

Every test runs on SQLite and PostgreSQL; the forged-From corpus also goes
through SMTP into a running ``serve``.
"""

from __future__ import annotations

import smtplib
from datetime import timedelta

import pytest
import sqlalchemy as sa
from factories import (
    ALICE,
    BOB,
    CAROL,
    STRANGER,
    MailFactory,
    Sent,
    dmarc,
    outbox,
    send,
    token_in,
)
from servers import running, wait_for
from sqlmodel import select

from mailbot.clock import FixedClock
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import ConfirmationRow, EventRow, InboundRow, RequestRow

pytestmark = pytest.mark.usefixtures("world")

FORGED_FROMS = [
    b"=?utf-8?q?alice@example.com?= <mallory@evil.test>",
    b"alice@example.com <mallory@evil.test>",
    b'"alice@example.com" <mallory@evil.test>',
    b"alice@example.com, mallory@evil.test",
    b"alice@example.com)<mallory@evil.test>",
    b"<alice@example.com>\r\nFrom: <mallory@evil.test>",
    b"=?utf-8?q?Alice=0D=0ABcc=3A_mallory=40evil.test?= <alice@example.com>",
    b"ali\x00ce@example.com",
    b"=?utf-8?q?alice=40example.com?=",
]


def forged(from_line: bytes, subject: str, body: str = "", n: int = 0) -> bytes:
    return (
        b"From: " + from_line + b"\r\nTo: changes@bot.test\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <forged"
        + str(n).encode()
        + b"."
        + subject.encode()[:12].replace(b" ", b"")
        + b"@evil.test>\r\n\r\n"
        + body.encode()
        + b"\r\n"
    )


def opened(bot: Mailbot, mail: MailFactory) -> tuple[str, list[Sent]]:
    """Alice (the admin) asks for Carol as tech contact: a pending request."""
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    request_id = mails[0].row.request_id
    assert request_id
    return request_id, mails


def status(bot: Mailbot, request_id: str) -> str:
    with transaction(bot.engine) as session:
        row = session.get(RequestRow, request_id)
        assert row is not None
        return row.status


def request_count(bot: Mailbot) -> int:
    with transaction(bot.engine) as session:
        return len(session.exec(select(RequestRow)).all())


def outcomes(bot: Mailbot) -> list[tuple[str, str]]:
    with transaction(bot.engine) as session:
        rows = session.exec(select(InboundRow).order_by(InboundRow.id)).all()  # type: ignore[arg-type]
        return [(row.status, row.outcome) for row in rows]


# --- strict sender parsing, through SMTP into a running serve -------------------


def test_a_forged_from_opens_cancels_and_answers_nothing_over_smtp(
    served: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = opened(served, mail)
    mails_before = len(outbox(served))
    commands = [
        ("CHANGE example.com", f"tech: {STRANGER}"),
        (f"CANCEL {request_id}", ""),
        (f"STATUS {request_id}", ""),
        ("HELP", ""),
        ("CHEAP PILLS http://evil.test/", ""),
    ]
    settings = served.settings.smtp
    with running(served):
        with smtplib.SMTP(settings.host, settings.port, timeout=10) as client:
            for n, from_line in enumerate(FORGED_FROMS):
                for subject, body in commands:
                    client.sendmail(
                        STRANGER, ["changes@bot.test"], forged(from_line, subject, body, n)
                    )
        expected = 1 + len(FORGED_FROMS) * len(commands)
        wait_for(lambda: sum(s != "received" for s, _ in outcomes(served)) == expected)
    refused = outcomes(served)[1:]
    assert len(refused) == len(FORGED_FROMS) * len(commands)
    assert all(s == "ignored" and "sender refused" in o for s, o in refused), refused
    assert request_count(served) == 1
    assert status(served, request_id) == "pending"
    assert len(outbox(served)) == mails_before  # no answer to anyone


def test_a_refused_sender_is_recorded_with_its_reason(bot: Mailbot) -> None:
    result = bot.receive(forged(b"alice@example.com <mallory@evil.test>", "HELP"))
    assert result == "ignored: sender refused: unquoted @ in the display name of From"
    assert outbox(bot) == []


# --- DMARC fails: nothing but a token is believed --------------------------------


def test_a_sender_whose_dmarc_fails_is_not_believed(bot: Mailbot, mail: MailFactory) -> None:
    request_id, mails = opened(bot, mail)
    own = next(m for m in mails if m.event == "validation-requested" and m.to == ALICE)
    fail = dmarc(ALICE, "fail")
    attempts = [
        mail(ALICE, f"CANCEL {request_id}", headers=fail),
        mail(ALICE, f"RESEND {request_id}", headers=fail),
        mail(ALICE, f"STATUS {request_id}", headers=fail),
        mail(ALICE, "LIST", headers=fail),
        mail(ALICE, "HELP", headers=fail),
        mail(ALICE, "CHANGE example.com", f"billing: {STRANGER}", headers=fail),
        # bare replies: by the thread, and to the reply address
        mail(
            ALICE,
            f"Re: {own.row.subject}",
            "ACCEPT",
            in_reply_to=f"<{own.row.message_id}>",
            headers=fail,
        ),
        mail(ALICE, "ACCEPT", to=own.header("Reply-To") or "", headers=fail),
        mail(ALICE, "ACCEPT XXXX-XXXX-XXXX-XXXX-XXXX", headers=fail),  # a wrong token
    ]
    before = len(outbox(bot))
    for raw in attempts:
        bot.receive(raw)
    assert len(outbox(bot)) == before  # no answer at all
    assert status(bot, request_id) == "pending"
    assert request_count(bot) == 1
    with transaction(bot.engine) as session:
        request = queries.request(session, queries.request_row(session, request_id))  # type: ignore[arg-type]
    assert all(v.pending for v in request.validations)
    assert "DMARC fails" in outcomes(bot)[-1][1]


def test_a_typed_token_still_decides_whoever_carries_it(bot: Mailbot, mail: MailFactory) -> None:
    request_id, mails = opened(bot, mail)
    tokens = {m.to: token_in(m) for m in mails if m.event == "validation-requested"}
    send(bot, mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}", headers=dmarc(ALICE, "fail")))
    send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}", headers=dmarc(CAROL, "fail")))
    assert status(bot, request_id) == "done"


def test_a_foreign_authserv_id_is_ignored(bot: Mailbot, mail: MailFactory) -> None:
    request_id, _ = opened(bot, mail)
    foreign = dmarc(ALICE, "fail", authserv_id="mx.evil.test")
    (answer,) = send(bot, mail(ALICE, f"STATUS {request_id}", headers=foreign))
    assert answer.event == "status"
    # A forged "pass" under a foreign id does not cancel at once either.
    foreign_pass = dmarc(ALICE, "pass", authserv_id="mx.evil.test")
    (asked,) = send(bot, mail(ALICE, f"CANCEL {request_id}", headers=foreign_pass))
    assert asked.event == "confirmation-requested"
    assert status(bot, request_id) == "pending"


# --- no verdict: CANCEL and RESEND wait for the real address ---------------------


def test_cancel_without_a_verdict_waits_for_the_confirmation(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = opened(bot, mail)
    (asked,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))
    assert asked.event == "confirmation-requested"
    assert asked.to == ALICE
    assert asked.header("X-Mailbot-Event") == "confirmation-requested"
    assert asked.header("X-Mailbot-Request") == request_id
    assert asked.header("Auto-Submitted") == "auto-replied"
    assert asked.row.carries_secret
    assert status(bot, request_id) == "pending"
    assert send(bot, mail(ALICE, f"ANNULER {request_id}")) == []  # one pending confirmation
    token = token_in(asked)

    (wrong,) = send(bot, mail(ALICE, "x", "CONFIRM 7KQ2-X9JM-4TRD-8WPA-3HNB"))
    assert wrong.header("X-Mailbot-Error") == "bad-token"
    assert status(bot, request_id) == "pending"

    done = send(bot, mail(STRANGER, "x", f"CONFIRMER {token.lower()}"))  # a credential
    assert sorted((m.event, m.to) for m in done) == [
        ("request-cancelled", ALICE),
        ("request-cancelled", CAROL),
    ]
    assert status(bot, request_id) == "cancelled"
    (used,) = send(bot, mail(ALICE, "x", f"CONFIRM {token}"))
    assert used.header("X-Mailbot-Error") == "token-used"
    with transaction(bot.engine) as session:
        kinds = [e.kind for e in queries.events(session, request_id)]
        stored = session.exec(select(ConfirmationRow)).one()
    assert kinds.count("request-cancelled") == 1
    assert "confirmation-requested" in kinds
    assert token.replace("-", "") not in (stored.digest, stored.reply_key_digest)


def test_a_bare_reply_to_the_confirmation_confirms_from_the_real_address_only(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = opened(bot, mail)
    (asked,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))
    reply_to = asked.header("Reply-To")
    assert reply_to
    assert "+" in reply_to
    address = reply_to.rpartition("<")[2].rstrip(">")
    thread = f"<{asked.row.message_id}>"
    # Someone else replying to the address, and Alice's address with DMARC failing.
    (refused,) = send(bot, mail(STRANGER, f"Re: {asked.row.subject}", "yes", to=address))
    assert refused.header("X-Mailbot-Error") == "not-authorized"
    failing = mail(ALICE, "Re: x", "", to=address, in_reply_to=thread, headers=dmarc(ALICE, "fail"))
    assert send(bot, failing) == []
    assert status(bot, request_id) == "pending"
    # Alice's reply, whatever its subject says.
    send(bot, mail(ALICE, "Re: your mail", "", to=address, in_reply_to=thread))
    assert status(bot, request_id) == "cancelled"


def test_a_confirmation_expires(bot: Mailbot, mail: MailFactory, clock: FixedClock) -> None:
    request_id, _ = opened(bot, mail)
    (asked,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))
    clock.at += timedelta(days=2, minutes=1)
    (late,) = send(bot, mail(ALICE, "x", f"CONFIRM {token_in(asked)}"))
    assert late.header("X-Mailbot-Error") == "bad-token"
    assert status(bot, request_id) == "pending"
    (again,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))  # a fresh one may be asked
    assert again.event == "confirmation-requested"


def test_resend_without_a_verdict_sends_tokens_once_confirmed(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = opened(bot, mail)
    (asked,) = send(bot, mail(CAROL, f"RESEND {request_id}"))  # awaited: for herself
    assert asked.event == "confirmation-requested"
    assert asked.to == CAROL
    confirmed = send(bot, mail(CAROL, "x", f"CONFIRM {token_in(asked)}"))
    assert [(m.event, m.to) for m in confirmed] == [("validation-requested", CAROL)]
    (refused,) = send(bot, mail(BOB, f"RESEND {request_id}"))  # only informed: not his
    assert refused.header("X-Mailbot-Error") == "not-authorized"


def test_an_impossible_cancel_is_refused_before_any_confirmation(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = opened(bot, mail)
    (refused,) = send(bot, mail(CAROL, f"CANCEL {request_id}"))  # a party, not the requester
    assert refused.header("X-Mailbot-Error") == "not-authorized"
    (stranger,) = send(bot, mail(STRANGER, f"CANCEL {request_id}"))
    assert stranger.header("X-Mailbot-Error") == "not-authorized"
    with transaction(bot.engine) as session:
        assert session.exec(select(ConfirmationRow)).all() == []


# --- pass: at once ---------------------------------------------------------------


def test_an_authenticated_cancel_acts_at_once(bot: Mailbot, mail: MailFactory) -> None:
    request_id, _ = opened(bot, mail)
    done = send(bot, mail(ALICE, f"CANCEL {request_id}", headers=dmarc(ALICE)))
    assert {m.event for m in done} == {"request-cancelled"}
    assert status(bot, request_id) == "cancelled"
    with transaction(bot.engine) as session:
        (cancelled,) = [
            e for e in queries.events(session, request_id) if e.kind == "request-cancelled"
        ]
    assert cancelled.detail == "by email, sender authenticated (dmarc=pass)"
    dkim = {"Authentication-Results": "mx.bot.test; dkim=pass header.d=example.com"}
    (answer,) = send(bot, mail(ALICE, f"STATUS {request_id}", headers=dkim))
    assert answer.event == "status"


def test_the_verdict_is_in_the_event_log(bot: Mailbot, mail: MailFactory) -> None:
    request_id, _ = opened(bot, mail)
    (asked,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))
    with transaction(bot.engine) as session:
        event = session.exec(
            select(EventRow).where(EventRow.kind == "confirmation-requested")
        ).one()
    assert event.detail == "cancel; sender authentication: none"
    assert event.actor_email == ALICE
    send(bot, mail(ALICE, "x", f"CONFIRM {token_in(asked)}"))
    with transaction(bot.engine) as session:
        kinds = {e.kind: e.detail for e in queries.events(session, request_id)}
    assert kinds["request-cancelled"] == f"by email, confirmed by {ALICE}"


def test_confirmation_tokens_are_stored_as_digests_only(bot: Mailbot, mail: MailFactory) -> None:
    request_id, _ = opened(bot, mail)
    (asked,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))
    token = token_in(asked).replace("-", "")
    with bot.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM confirmation")).all()
    assert rows
    assert all(token not in str(row) and token.lower() not in str(row) for row in rows)
