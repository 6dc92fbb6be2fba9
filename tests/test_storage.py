"""Storage guarantees: migrations match the models, the lookups are indexed, no live
token rests in the database, and simultaneous decisions close a request once."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from factories import ALICE, CAROL, DAVE, MailFactory, another_instance, outbox, send, token_in
from sqlmodel import SQLModel
from test_outbox import FlakyTransport

from mailbot import tokens
from mailbot.clock import FixedClock
from mailbot.config import Settings
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction


def test_migrations_build_exactly_the_models(bot: Mailbot) -> None:
    with bot.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert [d for d in differences if not _only_timezone_type(d)] == []


def _only_timezone_type(diff: object) -> bool:
    """UTCDateTime is a decorator over DateTime(timezone=True): the same column type."""
    text = repr(diff)
    return "modify_type" in text and "UTCDateTime" in text


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("validation_token", ["digest"]),
        ("validation_token", ["reply_key_digest"]),
        ("change_request", ["status", "expires_at"]),
        ("outbox", ["status", "next_attempt_at"]),
        ("outbox", ["message_id"]),
        ("inbound_message", ["dedup_key"]),
        ("contact", ["email"]),
        ("service", ["name"]),
    ],
)
def test_every_lookup_is_indexed(bot: Mailbot, table: str, columns: list[str]) -> None:
    inspector = sa.inspect(bot.engine)
    indexed = [i["column_names"] for i in inspector.get_indexes(table)]
    indexed += [u["column_names"] for u in inspector.get_unique_constraints(table)]
    assert columns in indexed


def dump(bot: Mailbot) -> str:
    """Every value of every table, as text."""
    chunks: list[str] = []
    with bot.engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for row in connection.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        chunks.append(bytes(value).decode("utf-8", "replace"))
                    else:
                        chunks.append(str(value))
    return "\n".join(chunks)


@pytest.mark.usefixtures("world")
def test_no_live_token_rests_in_the_database_once_sent(bot: Mailbot, mail: MailFactory) -> None:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    asks = [m for m in outbox(bot) if m.event == "validation-requested"]
    secrets = set()
    for ask in asks:
        grouped = token_in(ask)
        secrets |= {grouped, grouped.replace("-", ""), grouped.replace("-", "").lower()}
        reply_to = ask.header("Reply-To") or ""
        secrets.add(re.search(r"changes\+(\w+)@", reply_to).group(1))  # type: ignore[union-attr]
    assert any(secret in dump(bot) for secret in secrets)  # queued, not yet sent
    bot.flush_outbox(FlakyTransport())
    content = dump(bot)
    for secret in secrets:
        assert secret not in content
        assert secret.upper() not in content
    # What is kept is the digest, which is what a typed token is checked against.
    assert tokens.digest(token_in(asks[0]).replace("-", "")) in content
    bot.engine.dispose()
    if bot.engine.url.get_backend_name() == "sqlite":
        database = Path(str(bot.engine.url.database))
        raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
        for secret in secrets:
            assert secret.encode() not in raw, "a token survives in the database file"


@pytest.mark.usefixtures("world")
def test_simultaneous_last_decisions_close_the_request_once(
    bot: Mailbot, mail: MailFactory
) -> None:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    asks = {m.to: token_in(m) for m in outbox(bot) if m.event == "validation-requested"}
    messages = [
        mail(ALICE, "x", f"ACCEPT {asks[ALICE]}"),
        mail(CAROL, "x", f"ACCEPT {asks[CAROL]}"),
    ]
    barrier = threading.Barrier(len(messages))
    errors: list[BaseException] = []

    def deliver(instance: Mailbot, raw: bytes) -> None:
        barrier.wait()
        try:
            instance.receive(raw)
        except BaseException as exc:
            errors.append(exc)

    with another_instance(bot) as other:
        pairs = zip((bot, other), messages, strict=True)
        threads = [threading.Thread(target=deliver, args=pair) for pair in pairs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    events = [m.event for m in outbox(bot)]
    assert events.count("request-done") == 3
    assert events.count("validation-recorded") == 1
    with transaction(bot.engine) as session:
        rows = queries.requests(session)
        assert [r.status for r in rows] == ["done"]


@pytest.mark.usefixtures("world")
def test_two_instances_share_the_wrong_token_limit(
    bot: Mailbot, settings: Settings, clock: FixedClock, mail: MailFactory
) -> None:
    """Rate limits live in the database: wrong tokens counted by one instance count
    for another on the same database, and the window slides with the clock."""
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    good = {m.to: token_in(m) for m in outbox(bot) if m.event == "validation-requested"}
    other = Mailbot.from_settings(settings, clock)
    try:
        for _ in range(settings.policy.max_bad_tokens_per_hour):
            answers = send(bot, mail(DAVE, "x", "ACCEPT 7KQ2-X9JM-4TRD-8WPA-3HNB"))
            assert [a.header("X-Mailbot-Error") for a in answers] == ["bad-token"]
        refused = send(other, mail(DAVE, "x", f"ACCEPT {good[CAROL]}"))
        assert [a.header("X-Mailbot-Error") for a in refused] == ["too-many-attempts"]

        clock.at += timedelta(hours=1)
        other.sweep()  # forgets the attempts out of the window
        wrong_again = send(other, mail(DAVE, "x", "ACCEPT 7KQ2-X9JM-4TRD-8WPA-3HNB"))
        assert [a.header("X-Mailbot-Error") for a in wrong_again] == ["bad-token"]
    finally:
        other.engine.dispose()


def test_a_turn_is_one_process_at_a_time_on_postgresql(bot: Mailbot) -> None:
    """Two instances ask for the same turn: one has it until it gives it up or
    its session ends; on SQLite (one instance) it is always this process's."""
    with another_instance(bot) as other:
        mine, theirs = bot.turn("the agency mailbox"), other.turn("the agency mailbox")
        assert mine.take()
        if bot.engine.dialect.name == "sqlite":
            assert theirs.take()
            return
        assert not theirs.take()
        assert mine.take()  # kept while held
        elsewhere = other.turn("another mailbox")
        assert elsewhere.take()
        elsewhere.release()
        mine.release()
        assert theirs.take()
        assert not mine.take()
        with bot.engine.connect() as admin:  # the holder's session ends: a kill, a restart
            admin.execute(sa.text(HOLDERS_END))
        assert mine.take()
        assert not theirs.take()  # its lost session is noticed: the turn is not its own
        mine.release()
        assert theirs.take()
        theirs.release()


HOLDERS_END = """SELECT pg_terminate_backend(pid) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"""
