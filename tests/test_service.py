"""The use cases on a real database (SQLite and PostgreSQL), asserting on the mails queued."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import make_settings
from factories import (
    ALICE,
    BILL,
    BOB,
    CAROL,
    DAVE,
    STRANGER,
    MailFactory,
    Sent,
    another_instance,
    seed_world,
    send,
    token_in,
)
from servers import wait_for
from sqlmodel import select

from mailbot import commands
from mailbot.domain import Channel, Decision
from mailbot.errors import BadToken, StorageUnavailable, TokenUsed
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import InboundRow
from mailbot.tokens import new_token

pytestmark = pytest.mark.usefixtures("world")


def by_event(mails: list[Sent]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for mail in mails:
        found.setdefault(mail.event, []).append(mail.to)
    return found


def open_tech_change(
    bot: Mailbot, mail: MailFactory, to: str = CAROL
) -> tuple[str, dict[str, str]]:
    """Alice (admin) asks to make ``to`` the tech contact; returns request id and tokens."""
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {to}\n"))
    request_id = mails[0].row.request_id
    assert request_id
    tokens = {m.to: token_in(m) for m in mails if m.event == "validation-requested"}
    return request_id, tokens


def error_code(mails: list[Sent]) -> str | None:
    assert len(mails) == 1, [m.event for m in mails]
    assert mails[0].event == "error"
    return mails[0].header("X-Mailbot-Error")


def status_of(bot: Mailbot, request_id: str) -> str:
    with transaction(bot.engine) as session:
        row = queries.request_row(session, request_id)
        assert row is not None
        return row.status


def tech_of(bot: Mailbot, service: str = "example.com") -> str:
    with transaction(bot.engine) as session:
        row = queries.service_row(session, service)
        assert row is not None
        return queries.service(session, row).holders[queries.Role.TECH].email


def test_the_whole_story(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail(ALICE, "CHANGE example.com", "tech: carol@agency.test\n"))
    assert by_event(mails) == {
        "request-opened": [ALICE],
        "validation-requested": [ALICE, CAROL],
    }
    asks = [m for m in mails if m.event == "validation-requested"]
    assert len({token_in(m) for m in asks}) == 2
    request_id = mails[0].row.request_id
    assert request_id
    assert request_id.startswith("CR-")
    for m in mails:
        assert m.header("X-Mailbot-Request") == request_id
        assert m.header("Auto-Submitted") in ("auto-replied", "auto-generated")
        assert m.header("Message-ID")
    # Alice writes French (her contact language) and sees her own token.
    alice_ask = next(m for m in asks if m.to == ALICE)
    assert alice_ask.header("Content-Language") == "fr"
    assert f"https://bot.test/v/{token_in(alice_ask).replace('-', '')}" in alice_ask.text

    typed = token_in(alice_ask).lower().replace("-", " ")
    accept = mail(ALICE, "ok", f"ACCEPT {typed}\n")
    mails = send(bot, accept)
    assert by_event(mails) == {"validation-recorded": [ALICE]}
    assert "carol@agency.test" in mails[0].text
    assert send(bot, accept) == []  # the same message again: no effect

    carol_token = token_in(next(m for m in asks if m.to == CAROL))
    mails = send(bot, mail(CAROL, "Re: validation", f"ACCEPTER {carol_token}\n"))
    assert by_event(mails) == {"request-done": [ALICE, CAROL, BOB]}
    assert status_of(bot, request_id) == "done"
    assert tech_of(bot) == CAROL


def test_a_reused_token_is_refused(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = open_tech_change(bot, mail)
    send(bot, mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}"))
    assert error_code(send(bot, mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}"))) == "token-used"
    assert error_code(send(bot, mail(ALICE, "x", f"REFUSE {tokens[ALICE]}"))) == "token-used"
    assert status_of(bot, request_id) == "pending"


@pytest.mark.parametrize(
    ("sender", "subject", "body", "code"),
    [
        (STRANGER, "CHANGE example.com", "tech: carol@agency.test", "not-authorized"),
        (BOB, "CHANGE example.com", "billing: carol@agency.test", "not-authorized"),
        (ALICE, "CHANGE nosuch.example", "tech: carol@agency.test", "unknown-service"),
        (ALICE, "CHANGE unpaid.example", "tech: carol@agency.test", "not-in-good-standing"),
        (ALICE, "CHANGE example.com", "tech: dave@example.org", "not-in-good-standing"),
        (ALICE, "CHANGE example.com", "tech: bob@example.com", "no-change"),
        (ALICE, "CHANGE example.com", "tech: BB200-MB", "no-change"),
        (ALICE, "CHANGE example.com", "owner: carol@agency.test", "malformed-request"),
        (ALICE, "CHANGE example.com", "Please do it", "malformed-request"),
        (ALICE, "CHANGE example.com", "tech: XX999-MB", "unknown-contact"),
        (ALICE, "CHANGE example.com", "tech: not an address@", "malformed-request"),
        (ALICE, "Hello", "Can we talk about the invoice?", "unknown-command"),
        (ALICE, "x", "ACCEPT 7KQ2-X9JM-4TRD-8WPA-3HNB", "bad-token"),
        (ALICE, "x", "ACCEPT 7KQ2-X9JM", "bad-token"),
        (ALICE, "x", "ACCEPT", "bad-token"),
        (ALICE, "ACCEPT", "REFUSE", "ambiguous-decision"),
    ],
)
def test_each_bad_mail_gets_one_error_with_its_code(
    bot: Mailbot, mail: MailFactory, sender: str, subject: str, body: str, code: str
) -> None:
    mails = send(bot, mail(sender, subject, body))
    # Besides the error, a contact not in good standing is told why in private.
    private = [(m.event, m.to) for m in mails if m.to != sender]
    assert private == ([("good-standing-required", DAVE)] if DAVE in body else [])
    mails = [m for m in mails if m.to == sender]
    assert error_code(mails) == code
    assert mails[0].to == sender
    assert code in mails[0].text
    with transaction(bot.engine) as session:
        assert queries.requests(session) == []


def test_error_mails_answer_in_the_senders_language(bot: Mailbot, mail: MailFactory) -> None:
    french = send(bot, mail(STRANGER, "CHANGER example.com", "technique: carol@agency.test"))
    assert french[0].header("Content-Language") == "fr"
    english = send(bot, mail("eve@evil.test", "CHANGE example.com", "tech: carol@agency.test"))
    assert english[0].header("Content-Language") == "en"


def test_a_second_request_for_a_pending_role_is_a_duplicate(
    bot: Mailbot, mail: MailFactory
) -> None:
    open_tech_change(bot, mail)
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {BILL}"))
    assert error_code(mails) == "duplicate-request"
    # Another role of the same service is free.
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"billing: {CAROL}"))
    assert "request-opened" in by_event(mails)


def test_a_refusal_closes_the_request_and_kills_the_other_token(
    bot: Mailbot, mail: MailFactory
) -> None:
    mails = send(bot, mail(ALICE, "CHANGER example.com", "facturation: carol@agency.test"))
    request_id = mails[0].row.request_id
    assert request_id
    tokens = {m.to: token_in(m) for m in mails if m.event == "validation-requested"}
    mails = send(bot, mail(CAROL, "non", f"REFUSER {tokens[CAROL]}"))
    assert by_event(mails) == {"request-refused": [ALICE, CAROL]}
    assert status_of(bot, request_id) == "refused"
    with transaction(bot.engine) as session:
        row = queries.service_row(session, "example.com")
        assert row is not None
        assert queries.service(session, row).holders[queries.Role.BILLING].email == BILL
    assert error_code(send(bot, mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}"))) == "request-closed"


def test_a_holder_hands_over_their_own_role(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail(BOB, "CHANGE example.com", f"tech: {CAROL}"))
    assert by_event(mails) == {
        "request-opened": [BOB],
        "validation-requested": [BOB, CAROL],
    }
    tokens = {m.to: token_in(m) for m in mails if m.event == "validation-requested"}
    send(bot, mail(BOB, "x", f"ACCEPT {tokens[BOB]}"))
    mails = send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    assert by_event(mails) == {"request-done": [BOB, CAROL, ALICE]}
    assert tech_of(bot) == CAROL


def test_the_admin_takes_the_tech_role_back_alone(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail(ALICE, "CHANGE example.com", "tech: AM1234-MB"))
    assert by_event(mails) == {"request-opened": [ALICE], "validation-requested": [ALICE]}
    mails = send(bot, mail(ALICE, "x", f"ACCEPT {token_in(mails[1])}"))
    assert by_event(mails) == {"request-done": [ALICE, BOB]}
    assert tech_of(bot) == ALICE


def test_an_operator_opens_for_the_admin(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail("Ops Desk <ops@agency.test>", "CHANGE example.com", f"tech: {CAROL}"))
    assert by_event(mails) == {
        "request-opened": ["ops@agency.test"],
        "validation-requested": [ALICE, CAROL],
    }


def test_an_unknown_new_contact_named_by_email_is_created(bot: Mailbot, mail: MailFactory) -> None:
    _, tokens = open_tech_change(bot, mail, to="Newbie@Fresh.TEST")
    assert set(tokens) == {ALICE, "newbie@fresh.test"}
    with transaction(bot.engine) as session:
        assert queries.contact_by_email(session, "newbie@fresh.test") is not None


def test_a_failed_request_creates_no_contact(bot: Mailbot, mail: MailFactory) -> None:
    send(bot, mail(ALICE, "CHANGE unpaid.example", "tech: fresh@new.test"))
    with transaction(bot.engine) as session:
        assert queries.contact_by_email(session, "fresh@new.test") is None


def reply_to_ask(
    mail: MailFactory, ask: Sent, sender: str, body: str, *, to: str | None = None
) -> bytes:
    return mail(
        sender,
        "Re: " + (ask.header("Subject") or ""),
        body,
        to=to or "changes@bot.test",
        in_reply_to=ask.header("Message-ID"),
    )


def test_a_bare_reply_is_matched_by_its_thread(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    ask = next(m for m in mails if m.event == "validation-requested" and m.to == CAROL)
    quoted = "\n".join("> " + line for line in ask.text.splitlines())
    mails = send(
        bot, reply_to_ask(mail, ask, CAROL, f"Accept\n\nOn Monday mailbot wrote:\n{quoted}")
    )
    assert by_event(mails) == {"validation-recorded": [CAROL]}


def test_a_bare_reply_is_matched_by_its_plus_address(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    ask = next(m for m in mails if m.event == "validation-requested" and m.to == CAROL)
    reply_to = ask.header("Reply-To") or ""
    assert reply_to.startswith("mailbot <changes+") or "changes+" in reply_to
    address = reply_to[reply_to.index("<") + 1 : reply_to.index(">")]
    mails = send(bot, mail(CAROL, "no thread here", "REFUSE", to=address))
    assert by_event(mails) == {"request-refused": [ALICE, CAROL]}


def test_a_bare_reply_from_someone_else_is_refused(bot: Mailbot, mail: MailFactory) -> None:
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    ask = next(m for m in mails if m.event == "validation-requested" and m.to == CAROL)
    assert error_code(send(bot, reply_to_ask(mail, ask, STRANGER, "ACCEPT"))) == "not-authorized"


def test_a_token_speaks_for_its_contact_whoever_carries_it(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = open_tech_change(bot, mail)
    mails = send(bot, mail("desk@agency.test", "fwd", f"ACCEPT {tokens[CAROL]}"))
    assert by_event(mails) == {"validation-recorded": [CAROL]}
    with transaction(bot.engine) as session:
        row = queries.request_row(session, request_id)
        assert row is not None
        validation = queries.request(session, row).validations[1]
    assert validation.actor == "desk@agency.test"


def test_guessing_tokens_is_throttled(bot: Mailbot, mail: MailFactory) -> None:
    _, tokens = open_tech_change(bot, mail)
    for _ in range(bot.settings.policy.max_bad_tokens_per_hour):
        assert (
            error_code(send(bot, mail(DAVE, "x", "ACCEPT 7KQ2-X9JM-4TRD-8WPA-3HNB"))) == "bad-token"
        )
    # Even the right token is not looked at any more this hour.
    assert error_code(send(bot, mail(DAVE, "x", f"ACCEPT {tokens[CAROL]}"))) == "too-many-attempts"


@pytest.mark.parametrize(
    ("sender", "headers", "envelope_from"),
    [
        (CAROL, {"Auto-Submitted": "auto-replied"}, None),
        (CAROL, {"Precedence": "bulk"}, None),
        (CAROL, {"List-Id": "<x.lists.test>"}, None),
        ("MAILER-DAEMON@mx.test", {}, ""),
        ("changes@bot.test", {}, None),
        ("", {}, None),
    ],
)
def test_never_answers_robots_bounces_or_itself(
    bot: Mailbot, mail: MailFactory, sender: str, headers: dict[str, str], envelope_from: str | None
) -> None:
    _, tokens = open_tech_change(bot, mail)
    raw = mail(sender, "Out of office", f"ACCEPT {tokens[CAROL]}", headers=headers)
    assert send(bot, raw, envelope_from=envelope_from) == []
    with transaction(bot.engine) as session:
        inbound = session.exec(select(InboundRow).order_by(InboundRow.id.desc())).first()  # type: ignore[union-attr]
        assert inbound is not None
        assert inbound.status == "ignored"


def test_a_message_without_message_id_is_deduplicated_by_content(
    bot: Mailbot, mail: MailFactory
) -> None:
    raw = mail(ALICE, "Hello", "nothing").replace(b"Message-ID:", b"X-Old-Id:")
    assert len(send(bot, raw)) == 1
    assert send(bot, raw) == []


def test_the_link_page_decision_goes_through_the_same_service(
    bot: Mailbot, mail: MailFactory
) -> None:
    _request_id, tokens = open_tech_change(bot, mail)
    bot.decide_with_token(tokens[ALICE], Decision.ACCEPT, Channel.WEB)
    request = bot.decide_with_token(tokens[CAROL].lower(), Decision.ACCEPT, Channel.WEB)
    assert request.status.value == "done"
    assert {v.channel for v in request.validations} == {Channel.WEB}
    with pytest.raises(TokenUsed):
        bot.decide_with_token(tokens[CAROL], Decision.ACCEPT, Channel.WEB)
    with pytest.raises(BadToken):
        bot.decide_with_token("0000-0000-0000-0000-0000", Decision.ACCEPT, Channel.WEB)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_answers_at_the_same_instant_are_recorded_once(bot: Mailbot, mail: MailFactory) -> None:
    """A contact replies and, on another instance, clicks the link at the same
    instant: both find the validation pending before they take the request's
    lock, and the one that gets it second must see the first's answer.
    (PostgreSQL only: on SQLite a writer takes the lock before it reads.)"""
    request_id, tokens = open_tech_change(bot, mail)
    by_mail: list[str] = []
    by_link: list[object] = []

    def reply() -> None:
        by_mail.extend(m.event for m in send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}")))

    def click(other: Mailbot) -> None:
        try:
            by_link.append(other.decide_with_token(tokens[CAROL], Decision.ACCEPT, Channel.WEB))
        except TokenUsed as error:
            by_link.append(error)

    with another_instance(bot) as other, bot.engine.connect() as holder:
        holder.execute(
            sa.text("SELECT id FROM change_request WHERE id = :id FOR UPDATE"), {"id": request_id}
        )
        answers = [threading.Thread(target=reply), threading.Thread(target=click, args=[other])]
        for answer in answers:
            answer.start()
        wait_for(lambda: waiting_for_a_lock(bot) == 2)
        holder.rollback()
        for answer in answers:
            answer.join()

    with transaction(bot.engine) as session:
        kinds = [e.kind for e in queries.events(session, request_id)]
    assert kinds.count("validation-accepted") == 1, kinds
    mail_lost = "error" in by_mail  # answered: token already used
    link_lost = isinstance(by_link[0], TokenUsed)
    assert mail_lost != link_lost, (by_mail, by_link)


def waiting_for_a_lock(bot: Mailbot) -> int:
    with bot.engine.connect() as connection:
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return int(connection.execute(sa.text(query)).scalar_one())


def test_every_transition_is_in_the_event_log(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = open_tech_change(bot, mail)
    send(bot, mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}"))
    send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    with transaction(bot.engine) as session:
        kinds = [e.kind for e in queries.events(session, request_id)]
    assert kinds == ["request-opened", "validation-accepted", "validation-accepted", "request-done"]


def test_a_new_admin_not_in_good_standing_is_refused(bot: Mailbot, mail: MailFactory) -> None:
    # A contact not in good standing may not even be the requester's new admin.
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"admin: {DAVE}"))
    assert error_code([m for m in mails if m.to == ALICE]) == "not-in-good-standing"
    assert [(m.event, m.to) for m in mails if m.to != ALICE] == [("good-standing-required", DAVE)]


@pytest.mark.parametrize("sender", [BOB, ALICE], ids=["en", "fr"])
def test_the_help_mail_lists_every_registered_verb(
    bot: Mailbot, mail: MailFactory, sender: str
) -> None:
    """HELP is generated from the registry: each verb's English and French words
    are in the answer, whichever language it is written in."""
    mails = send(bot, mail(sender, "HELP"))
    assert [m.event for m in mails] == ["help"]
    text = " ".join(mails[0].text.split())
    for verb in commands.VERBS:
        for word in verb.words:
            assert word in text, (verb.name, word)


def test_the_help_mail_speaks_of_the_bot_by_its_configured_name(
    tmp_path: Path, database_url: str, mail: MailFactory
) -> None:
    settings = make_settings(tmp_path, database_url, bot={"name": "Registrar Desk"})
    named = Mailbot.from_settings(settings)
    try:
        seed_world(named)
        (answer,) = send(named, mail(BOB, "HELP"))
        assert "Registrar Desk" in answer.text
        assert "mailbot" not in answer.text.lower()
    finally:
        named.engine.dispose()


def test_every_registered_word_reaches_its_verb(bot: Mailbot, mail: MailFactory) -> None:
    """Dispatch is the registry: every word of every verb is understood (whatever
    the verb then says of a command without its argument); other words are not."""
    for verb in commands.VERBS:
        for word in verb.words:
            outcome = bot.receive(mail(BOB, word.lower()))
            assert "unknown-command" not in outcome, (word, outcome)
    assert "unknown-command" in bot.receive(mail(BOB, "FROBNICATE"))


def test_a_database_outage_is_the_services_own_error(bot: Mailbot, mail: MailFactory) -> None:
    """Adapters see StorageUnavailable, never the database driver's errors."""
    unreachable = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    down = Mailbot(bot.settings, unreachable, bot.clock)
    try:
        with pytest.raises(StorageUnavailable):
            down.receive(mail(BOB, "HELP"))
        with pytest.raises(StorageUnavailable):
            down.process_inbound(1)
        with pytest.raises(StorageUnavailable):
            down.token_page(new_token())
        with pytest.raises(StorageUnavailable):
            down.sweep()
    finally:
        unreachable.dispose()
