"""Requests living and dying on time, and the commands to follow and steer them.
The clock is passed in: days pass without sleeping."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import START, make_settings
from factories import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    STRANGER,
    MailFactory,
    Sent,
    another_instance,
    dmarc,
    last_outbox_id,
    outbox,
    request_state,
    send,
    token_in,
)

from mailbot.clock import FixedClock
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import RequestRow, ValidationRow

pytestmark = pytest.mark.usefixtures("world")
DAY = timedelta(days=1)


def sweep(bot: Mailbot, at: timedelta) -> list[Sent]:
    before = last_outbox_id(bot)
    bot.sweep(START + at)
    return outbox(bot, after=before)


def accepted_by_alice(bot: Mailbot, mail: MailFactory) -> tuple[str, dict[str, str]]:
    """Alice opens a tech change to Carol and accepts it: Carol is awaited."""
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    tokens = {m.to: token_in(m) for m in mails if m.event == "validation-requested"}
    send(bot, mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}"))
    request_id = mails[0].row.request_id
    assert request_id
    return request_id, tokens


def status(bot: Mailbot, request_id: str) -> str:
    with transaction(bot.engine) as session:
        row = queries.request_row(session, request_id)
        assert row is not None
        return row.status


def events(mails: list[Sent]) -> list[tuple[str, str]]:
    return [(m.event, m.to) for m in mails]


def test_reminders_go_once_per_offset_to_the_silent_only(bot: Mailbot, mail: MailFactory) -> None:
    accepted_by_alice(bot, mail)
    assert sweep(bot, 2 * DAY) == []
    reminders = sweep(bot, 3 * DAY)
    assert events(reminders) == [("reminder", CAROL)]
    assert sweep(bot, 3 * DAY + timedelta(hours=5)) == []
    # A sweep that ran late (day 12, offsets 7 and 12 both passed) reminds once.
    assert events(sweep(bot, 12 * DAY + timedelta(hours=1))) == [("reminder", CAROL)]
    assert sweep(bot, 13 * DAY) == []


def test_a_reminder_token_works_and_settles_the_validation(bot: Mailbot, mail: MailFactory) -> None:
    _request_id, tokens = accepted_by_alice(bot, mail)
    (reminder,) = sweep(bot, 3 * DAY)
    fresh = token_in(reminder)
    assert fresh != tokens[CAROL]
    assert "https://bot.test/v/" in reminder.text
    assert events(send(bot, mail(CAROL, "x", f"ACCEPT {fresh}")))[0][0] == "request-done"
    (error,) = send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    assert error.header("X-Mailbot-Error") == "token-used"


def test_the_first_token_still_works_after_a_reminder(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = accepted_by_alice(bot, mail)
    sweep(bot, 3 * DAY)
    send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    assert status(bot, request_id) == "done"


def test_a_stale_request_expires_and_everyone_is_told(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = accepted_by_alice(bot, mail)
    assert [e for e in events(sweep(bot, 13 * DAY)) if e[0] == "request-expired"] == []
    mails = sweep(bot, 14 * DAY)
    assert sorted(events(mails)) == [("request-expired", ALICE), ("request-expired", CAROL)]
    assert status(bot, request_id) == "expired"
    assert sweep(bot, 15 * DAY) == []
    (error,) = send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    assert error.header("X-Mailbot-Error") == "request-closed"
    with transaction(bot.engine) as session:
        row = queries.service_row(session, "example.com")
        assert row is not None
        assert queries.service(session, row).holders[queries.Role.TECH].email == BOB


def test_status_tells_parties_and_reveals_nothing_to_others(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id, _ = accepted_by_alice(bot, mail)
    (answer,) = send(bot, mail(ALICE, f"STATUS {request_id}"))
    assert answer.event == "status"
    assert CAROL in answer.text
    stranger = send(bot, mail(DAVE, f"STATUS {request_id}"))
    unknown = send(bot, mail(DAVE, "STATUS CR-00000000"))
    assert [m.header("X-Mailbot-Error") for m in stranger] == ["not-authorized"]
    assert [m.header("X-Mailbot-Error") for m in unknown] == ["not-authorized"]
    assert stranger[0].text.replace(request_id, "CR-00000000") == unknown[0].text
    assert request_id not in stranger[0].header("Subject")  # type: ignore[operator]


def test_my_requests_lists_what_awaits_me(bot: Mailbot, mail: MailFactory) -> None:
    request_id, _ = accepted_by_alice(bot, mail)
    (answer,) = send(bot, mail(CAROL, "MES DEMANDES"))
    assert answer.event == "list"
    assert request_id in answer.text
    # Bob, the outgoing tech contact, neither opened it nor validates it.
    (empty,) = send(bot, mail(BOB, "LIST"))
    assert request_id not in empty.text


def test_resend_replaces_the_tokens_of_the_awaited(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = accepted_by_alice(bot, mail)
    mails = send(bot, mail(ALICE, f"RESEND {request_id}", headers=dmarc(ALICE)))
    assert events(mails) == [("validation-requested", CAROL)]
    fresh = token_in(mails[0])
    (error,) = send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    assert error.header("X-Mailbot-Error") == "bad-token"
    (too_soon,) = send(bot, mail(ALICE, f"RESEND {request_id}", headers=dmarc(ALICE)))
    assert too_soon.header("X-Mailbot-Error") == "too-many-attempts"
    said = " ".join(too_soon.text.split())  # Alice reads French
    assert "déjà été renvoyés il y a moins d'une heure" in said  # the resend limit
    assert "codes erronés" not in said  # not the wrong-token limit
    assert "tokens were resent" not in said  # and no English detail
    send(bot, mail(CAROL, "x", f"ACCEPT {fresh}"))
    assert status(bot, request_id) == "done"


def test_an_awaited_contact_may_resend_for_themselves(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    request_id, _ = accepted_by_alice(bot, mail)
    assert events(send(bot, mail(CAROL, f"RESEND {request_id}", headers=dmarc(CAROL)))) == [
        ("validation-requested", CAROL)
    ]
    clock.at += 2 * timedelta(hours=1)
    (refused,) = send(bot, mail(STRANGER, f"RESEND {request_id}"))
    assert refused.header("X-Mailbot-Error") == "not-authorized"


def test_cancel_by_the_requester_not_by_a_stranger(bot: Mailbot, mail: MailFactory) -> None:
    request_id, tokens = accepted_by_alice(bot, mail)
    (refused,) = send(bot, mail(STRANGER, f"CANCEL {request_id}"))
    assert refused.header("X-Mailbot-Error") == "not-authorized"
    mails = send(bot, mail(ALICE, f"ANNULER {request_id}", headers=dmarc(ALICE)))
    assert sorted(events(mails)) == [("request-cancelled", ALICE), ("request-cancelled", CAROL)]
    assert status(bot, request_id) == "cancelled"
    (dead,) = send(bot, mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
    assert dead.header("X-Mailbot-Error") == "request-closed"
    (again,) = send(bot, mail(ALICE, f"CANCEL {request_id}"))
    assert again.header("X-Mailbot-Error") == "request-closed"


def test_help_lists_the_commands(bot: Mailbot, mail: MailFactory) -> None:
    (answer,) = send(bot, mail(STRANGER, "AIDE"))
    assert answer.event == "help"
    for verb in ("CHANGE", "ACCEPT", "REFUSE", "STATUS", "CANCEL", "RESEND"):
        assert verb in answer.text


def test_two_sweeps_at_once_remind_and_expire_once(bot: Mailbot, mail: MailFactory) -> None:
    accepted_by_alice(bot, mail)
    send(bot, mail(ALICE, "CHANGE example.com", f"billing: {CAROL}"))
    before = last_outbox_id(bot)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(instance: Mailbot, at: timedelta) -> None:
        barrier.wait()
        try:
            instance.sweep(START + at)
        except BaseException as exc:  # reported below
            errors.append(exc)

    with another_instance(bot) as other:
        for at in (3 * DAY, 14 * DAY):
            threads = [threading.Thread(target=run, args=(b, at)) for b in (bot, other)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    assert errors == []
    sent = [m.event for m in outbox(bot, after=before)]
    assert sent.count("reminder") == 3  # Carol on the first, Alice and Carol on the second
    assert sent.count("request-expired") == 4


def test_one_sweep_keeps_a_strangers_daily_cap_across_its_requests(
    bot: Mailbot, mail: MailFactory, clock: FixedClock, tmp_path: Path
) -> None:
    """A sweep handles its due requests together, yet counts the mail it queues to
    an address that never answered as it goes: one reminder goes, the other waits."""
    strict_settings = make_settings(
        tmp_path,
        bot.settings.database.url,
        policy={"operators": ["ops@agency.test"], "max_unsolicited_per_day": 1},
    )
    strict = Mailbot.from_settings(strict_settings, bot.clock)
    try:
        first = send(strict, mail(ALICE, "CHANGE example.com", f"tech: {STRANGER}"))
        second = send(strict, mail(ALICE, "CHANGE example.com", f"billing: {STRANGER}"))
        assert [m.to for m in first + second].count(STRANGER) == 1
        clock.at = START + 3 * DAY
        reminders = sweep(strict, 3 * DAY)
    finally:
        strict.engine.dispose()
    assert sorted(events(reminders)) == [
        ("reminder", ALICE),
        ("reminder", ALICE),
        ("reminder", STRANGER),
    ]
    held = [
        e
        for m in (first[0], second[0])
        for e in request_state(bot, str(m.row.request_id))["events"]
        if e["kind"] == "mail-held"
    ]
    assert sorted(e["detail"] for e in held) == [
        "reminder not sent: 1 mails a day to an address that never answered",
        "validation-requested not sent: 1 mails a day to an address that never answered",
    ]


def test_the_sweep_reads_only_due_rows(bot: Mailbot, mail: MailFactory) -> None:
    """The sweep's work grows with what is due, not with the size of the database."""
    send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    send(bot, mail(ALICE, "CHANGE example.com", f"billing: {CAROL}"))
    small = count_statements(bot, lambda: bot.sweep(START + 3 * DAY))
    reset_reminders(bot)
    add_idle_requests(bot, 10_000)
    large = count_statements(bot, lambda: bot.sweep(START + 3 * DAY))
    assert large == small
    assert len(outbox(bot)) == 6 + 4 + 4  # opened, then two rounds of four reminders


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_sweep_steps_only_through_due_rows(bot: Mailbot, mail: MailFactory) -> None:
    """SQLite's own work in a sweep (the steps of its virtual machine) does not
    grow with idle requests: each due query goes through its due-time index."""
    send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    send(bot, mail(ALICE, "CHANGE example.com", f"billing: {CAROL}"))
    small = count_sqlite_steps(bot, lambda: bot.sweep(START + 3 * DAY))
    reset_reminders(bot)
    add_idle_requests(bot, 10_000)
    large = count_sqlite_steps(bot, lambda: bot.sweep(START + 3 * DAY))
    assert len(outbox(bot)) == 6 + 4 + 4
    assert large < 2 * small, (small, large)


def count_sqlite_steps(bot: Mailbot, action: Any) -> int:
    """Tens of SQLite virtual machine steps ``action`` takes."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0  # go on

    def listener(connection: sa.Connection, *args: Any) -> None:
        connection.connection.driver_connection.set_progress_handler(tick, 10)

    sa.event.listen(bot.engine, "before_cursor_execute", listener)
    try:
        action()
    finally:
        sa.event.remove(bot.engine, "before_cursor_execute", listener)
        bot.engine.dispose()  # the pooled connections go, their handlers with them
    return steps[0]


def count_statements(bot: Mailbot, action: Any) -> int:
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(bot.engine, "before_cursor_execute", listener)
    try:
        action()
    finally:
        sa.event.remove(bot.engine, "before_cursor_execute", listener)
    return len(seen)


def reset_reminders(bot: Mailbot) -> None:
    """Make the reminded validations due again, as they were for the first count."""
    with bot.engine.begin() as connection:
        connection.execute(
            sa.update(ValidationRow)
            .where(ValidationRow.reminders_sent > 0)  # type: ignore[arg-type]
            .values(reminders_sent=0, next_reminder_at=START + 3 * DAY)
        )


def add_idle_requests(bot: Mailbot, count: int) -> None:
    """Bulk-insert requests that are pending but not due for anything."""
    far = START + 300 * DAY
    with bot.engine.begin() as connection:
        service_id, contact_id = connection.execute(
            sa.text("SELECT id, admin_id FROM service WHERE name = 'example.com'")
        ).one()
        connection.execute(
            sa.insert(RequestRow),
            [
                {
                    "id": f"CR-Z{n:07d}",
                    "service_id": service_id,
                    "requester_email": ALICE,
                    "status": "pending",
                    "created_at": START,
                    "expires_at": far,
                }
                for n in range(count)
            ],
        )
        connection.execute(
            sa.insert(ValidationRow),
            [
                {
                    "request_id": f"CR-Z{n:07d}",
                    "contact_id": contact_id,
                    "side": "current",
                    "status": "pending",
                    "delivery": "sent",
                    "reminders_sent": 0,
                    "next_reminder_at": far,
                    "created_at": START,
                }
                for n in range(count)
            ],
        )
