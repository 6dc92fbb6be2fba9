"""mailbot under abuse: it cannot be used to mail a stranger over and over, its
answers to strangers carry none of their text, robots and mail to the bounce
address get no answer, and a reply is read from its new text, not from the
subject of the mail it answers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from factories import (
    ALICE,
    BOB,
    CAROL,
    MailFactory,
    Sent,
    dmarc,
    maildir_messages,
    outbox,
    request_state,
    send,
    token_in,
)

from mailbot import commands
from mailbot.adapters.maildir_out import MaildirTransport
from mailbot.clock import FixedClock
from mailbot.service import Mailbot
from mailbot.service.importer import ImportFile, apply_import
from mailbot.storage import queries
from mailbot.storage.engine import transaction

VICTIM = "victim@victim.test"
SPAM = "CHEAP PILLS http://pills.example/buy"


def deliver(bot: Mailbot) -> list[Any]:
    """Send what is queued to the Maildir; every mail that reached it so far."""
    root = Path(bot.settings.outgoing.maildir)
    bot.flush_outbox(MaildirTransport(root))
    return maildir_messages(root)


def to(messages: list[Any], address: str) -> list[Any]:
    return [m for m in messages if address in str(m["To"])]


def opened_request(mails: list[Sent]) -> str:
    request_id = next(m.row.request_id for m in mails if m.row.request_id)
    assert request_id
    return request_id


@pytest.mark.usefixtures("world")
def test_change_and_cancel_cycles_mail_a_stranger_at_most_three_times(
    bot: Mailbot, mail: MailFactory
) -> None:
    """Even from an admin whose mail passes DMARC (a hijacked mailbox, a rogue
    customer), cycles of CHANGE and CANCEL reach a stranger three times a day."""
    ids = []
    passing = dmarc(ALICE)
    for _ in range(30):
        change = mail(ALICE, "CHANGE example.com", f"tech: {VICTIM}", headers=passing)
        request_id = opened_request(send(bot, change))
        send(bot, mail(ALICE, f"CANCEL {request_id}", headers=passing))
        ids.append(request_id)
    delivered = deliver(bot)
    assert 1 <= len(to(delivered, VICTIM)) <= 3
    # The admin, a known contact, got every one of its mails.
    assert (
        len([m for m in to(delivered, ALICE) if m["X-Mailbot-Event"] == "request-cancelled"]) == 30
    )
    # What was held back is in the event log of the request it belonged to.
    events = request_state(bot, ids[-1])["events"]
    held = [e for e in events if e["kind"] == "mail-held"]
    assert held
    assert all(VICTIM in str(e) for e in held)


@pytest.mark.usefixtures("world")
def test_forged_cycles_cannot_cancel_and_mail_the_stranger_once(
    bot: Mailbot, mail: MailFactory
) -> None:
    """Without an authentication verdict a CANCEL waits for the admin's own
    confirmation, so forged cycles stop at the first request."""
    for _ in range(30):
        for sent in send(bot, mail(ALICE, "CHANGE example.com", f"tech: {VICTIM}")):
            if sent.row.request_id:
                send(bot, mail(ALICE, f"CANCEL {sent.row.request_id}"))
    delivered = deliver(bot)
    assert len(to(delivered, VICTIM)) == 1
    with transaction(bot.engine) as session:
        statuses = [r.status for r in queries.requests(session)]
    assert statuses == ["pending"]
    asked = [m for m in to(delivered, ALICE) if m["X-Mailbot-Event"] == "confirmation-requested"]
    assert len(asked) == 1  # one live confirmation per request, action and address


def test_many_forged_admins_mail_a_stranger_at_most_three_times_and_known_contacts_always(
    bot: Mailbot, mail: MailFactory
) -> None:
    admins = [f"admin{n}@customer{n}.test" for n in range(98)]
    world = {
        "contacts": [
            {"handle": f"AD{n}-MB", "email": a, "name": f"Admin {n}"} for n, a in enumerate(admins)
        ]
        + [{"handle": "CA400-MB", "email": CAROL, "name": "Carol Agency"}],
        "services": [
            {
                "name": f"site{n}.test",
                "admin": f"AD{n}-MB",
                "tech": f"AD{n}-MB",
                "billing": f"AD{n}-MB",
            }
            for n in range(98)
        ],
    }
    apply_import(bot.engine, ImportFile.model_validate(world), bot.clock.now())
    for n, admin in enumerate(admins):
        send(bot, mail(admin, f"CHANGE site{n}.test", f"billing: {VICTIM}"))
    for n, admin in enumerate(admins[:20]):  # an agency's busy hour, for a known contact
        send(bot, mail(admin, f"CHANGE site{n}.test", f"tech: {CAROL}"))
    queued = outbox(bot)
    assert 1 <= len([m for m in queued if m.to == VICTIM]) <= 3
    assert len([m for m in queued if m.to == CAROL]) == 20


@pytest.mark.usefixtures("world")
def test_a_stranger_who_answered_is_no_longer_limited(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {VICTIM}"))
    (ask,) = [m for m in mails if m.to == VICTIM]
    send(bot, mail(VICTIM, "x", f"ACCEPT {token_in(ask)}"))
    for _ in range(4):
        send(bot, mail(VICTIM, "HELP"))
    assert len([m for m in outbox(bot) if m.to == VICTIM and m.event == "help"]) == 4


def spam(mail: MailFactory, sender: str, n: int) -> bytes:
    return mail(
        sender,
        SPAM,
        f"{SPAM}\nBest prices at http://pills.example/{n} !!!",
        message_id=f"<CHEAP-PILLS-pills.example-{n}@{sender.partition('@')[2]}>",
    )


def test_forged_senders_get_one_answer_a_day_that_quotes_nothing_of_theirs(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    senders = [f"victim{n}@backscatter{n % 7}.test" for n in range(200)]
    for n, sender in enumerate(senders):
        send(bot, spam(mail, sender, n))
    for n, sender in enumerate(senders[:20]):  # the same victims again, the same day
        send(bot, spam(mail, sender, 1000 + n))
    answers = outbox(bot)
    assert len(answers) == 200
    for answer in answers:
        message = answer.message
        assert message is not None
        whole = message.as_string() + "".join(
            str(part.get_content())
            for part in message.walk()
            if part.get_content_maintype() == "text"
        )
        for text in ("CHEAP", "PILLS", "pills.example", "Best prices"):
            assert text not in whole
        assert message["In-Reply-To"] is None
        assert message["X-Mailbot-Error"] == "unknown-command"
        assert "HELP" in message.get_body(("plain",)).get_content()
    assert sorted(m.to for m in answers) == sorted(senders)
    # A day later one of them may be answered again, still without quoting.
    clock.at += timedelta(days=1, minutes=1)
    (again,) = send(bot, spam(mail, senders[0], 5000))
    assert "PILLS" not in again.text


@pytest.mark.usefixtures("world")
def test_known_contacts_still_see_what_was_read_from_their_mail(
    bot: Mailbot, mail: MailFactory
) -> None:
    (answer,) = send(bot, mail(CAROL, "CHANGE example.com", "teck: dave@example.org"))
    assert 'message "CHANGE example.com"' in answer.text
    assert "teck: dave@example.org" in answer.text
    assert answer.header("In-Reply-To")


@pytest.mark.parametrize(
    ("sender", "headers", "recipient"),
    [
        # An out-of-office without any auto-reply header, sent to the bounce address.
        ("carol@agency.test", {}, "changes+bounce-20260302.abc@bot.test"),
        ("noreply@shop.test", {}, "changes@bot.test"),
        ("no-reply-alerts@bank.test", {}, "changes@bot.test"),
        ("do_not_reply@bank.test", {}, "changes@bot.test"),
        ("postmaster@mx.test", {}, "changes@bot.test"),
        ("mailer-daemon@mx.test", {}, "changes@bot.test"),
        ("carol@agency.test", {"Precedence": "junk"}, "changes@bot.test"),
        ("carol@agency.test", {"Precedence": "list"}, "changes@bot.test"),
    ],
)
@pytest.mark.usefixtures("world")
def test_robots_and_mail_to_the_bounce_address_get_no_answer(
    bot: Mailbot, mail: MailFactory, sender: str, headers: dict[str, str], recipient: str
) -> None:
    for n in range(20):
        raw = mail(
            sender,
            "Re: [CR-7K2QX9MD] I am away",
            f"Back on Monday ({n}).",
            to=recipient,
            headers=headers,
        )
        assert send(bot, raw, recipients=(recipient,)) == []
    assert "ignored" in bot.receive(
        mail(sender, "HELP", to=recipient, headers=headers), recipients=(recipient,)
    )


@pytest.mark.usefixtures("world")
def test_a_person_whose_name_only_resembles_a_robot_is_answered(
    bot: Mailbot, mail: MailFactory
) -> None:
    assert [m.event for m in send(bot, mail("noreen.post@agency.test", "HELP"))] == ["help"]


@pytest.mark.parametrize("word", ["ACCEPT", "accepter", "Valider", "REFUSE", "refuser"])
@pytest.mark.usefixtures("world")
def test_a_reply_to_the_request_opened_mail_is_read_from_its_new_text(
    bot: Mailbot, mail: MailFactory, word: str
) -> None:
    # Bob, the tech contact, hands his role over; he reads English.
    mails = send(bot, mail(BOB, "CHANGE example.com", f"tech: {CAROL}"))
    (opened,) = [m for m in mails if m.event == "request-opened"]
    subject = opened.header("Subject") or ""
    assert "Change request opened for example.com" in subject
    reply = mail(
        opened.to,
        f"Re: {subject}",
        f"{word}\n\nOn Monday, mailbot wrote:\n> {subject}",
        in_reply_to=opened.header("Message-ID"),
    )
    answers = send(bot, reply)
    state = request_state(bot, opened_request(mails))
    validations = {v["email"]: v["status"] for v in state["validations"]}
    expected = "refused" if word.upper().startswith("REF") else "accepted"
    assert validations[opened.to] == expected
    assert "error" not in [m.event for m in answers]


@pytest.mark.usefixtures("world")
def test_a_reply_prefixed_subject_is_still_a_command_when_the_text_holds_none(
    bot: Mailbot, mail: MailFactory
) -> None:
    mails = send(bot, mail(ALICE, "Re: CHANGE example.com", f"tech: {CAROL}"))
    assert "request-opened" in [m.event for m in mails]


@pytest.mark.parametrize(
    ("subject", "text", "verb"),
    [
        ("Re: [CR-7K2QX9MD] Change request opened for example.com", "ACCEPT", "ACCEPT"),
        ("TR: [CR-7K2QX9MD] Change request opened for example.com", "Refuser.", "REFUSE"),
        ("[CR-7K2QX9MD] Change request opened for example.com", "Bonjour,\nvalider", "ACCEPT"),
        ("Re: CHANGE example.com", "tech: carol@agency.test", "CHANGE"),
        ("CHANGE example.com", "tech: carol@agency.test", "CHANGE"),
    ],
)
def test_the_new_text_of_a_reply_speaks_before_its_subject(
    subject: str, text: str, verb: str
) -> None:
    assert commands.find_command(subject, text).verb == verb


@pytest.mark.usefixtures("world")
def test_tagged_variants_of_a_strangers_address_share_its_three_mails(
    bot: Mailbot, mail: MailFactory
) -> None:
    for n in range(6):
        change = mail(ALICE, "CHANGE example.com", f"tech: victim+{n}@victim.test")
        mails = send(bot, change)
        send(bot, mail(ALICE, f"CANCEL {opened_request(mails)}", headers=dmarc(ALICE)))
    for n in range(6):  # and answers to forged senders, tagged the same way
        send(bot, mail(f"victim+x{n}@victim.test", SPAM))
    assert 1 <= len([m for m in outbox(bot) if m.to.endswith("@victim.test")]) <= 3
