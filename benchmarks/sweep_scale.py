"""The sweep at scale: one sweep over 10,000 and over 1,000,000 requests, 0.1% of them due.

For each size this makes a fresh database (``mailbot init``'s schema upgrade),
bulk-loads it with the rows the service writes (contacts, services, requests,
their role changes, validations, tokens, events and token mails: mostly
closed requests, done, refused, expired or cancelled, and some pending), then,
for each run, makes a fresh set of pending requests due (reminders, expiries
and held link-page decisions, as ``mailbot/service/sweeping.py`` looks for
them) and times one sweep in-process, as ``mailbot sweep`` and ``serve`` call
it: ``Mailbot(...).sweep(now)``. A sweep queues the mail it sends; sending it
is the outbox's job and is not timed. One more fresh due set is swept by
``mailbot sweep --now ... --no-flush`` as a subprocess, whose wall time
(interpreter start and imports included) is printed apart.

Each sweep's CPU seconds in this process are printed beside its wall time
(SQLite's work is in this process, PostgreSQL's is not), with the load
average at the end: on a busy machine the wall time is mostly waiting.

The goals: one sweep over 1,000,000 requests under 0.5 s, and under 3x the
same sweep (as many due requests) over 10,000. The 10,000 database is swept
twice over: with 0.1% of it due, and with as many due requests as the
largest size has, which is "the same sweep" the ratio compares.

``--explain`` prints the plan of each statement a sweep runs (EXPLAIN QUERY
PLAN on SQLite, EXPLAIN on PostgreSQL) over the largest database, and flags
full scans of a table.

On SQLite always; on PostgreSQL too with ``--postgres URL`` (a server where
this may create databases), or when a local server can be started from the
PostgreSQL binaries found on this machine. PostgreSQL tables are ANALYZEd
after the load, as autovacuum would do soon after; SQLite is left as
mailbot leaves it (no ANALYZE). Either is then put on disk (an fsync of the
SQLite file, a CHECKPOINT), as a database that has been running is, so that
no sweep waits for the load's own writes.

``--reuse DIR`` keeps each loaded database in DIR (a copy of the SQLite file;
a template database on PostgreSQL, whose local server then keeps its data
directory there too) and starts later runs from that copy instead of loading
again: the 1,000,000-request load takes minutes. A copy is named by its size,
its pending pool and the schema revision, so a new migration loads afresh;
delete DIR after changing how the rows are made here.

    python benchmarks/sweep_scale.py [--sizes 10000,1000000] [--runs 3] [--explain]
        [--postgres postgresql+psycopg://...] [--no-postgres | --no-sqlite] [--reuse DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from process_cpu import local_postgres

from mailbot import migrations
from mailbot.clock import FixedClock
from mailbot.config import Settings
from mailbot.service import Mailbot, SweepReport
from mailbot.storage.engine import make_engine, upgrade
from mailbot.storage.tables import (
    ContactRow,
    EventRow,
    OutboxRow,
    RequestRow,
    RoleChangeRow,
    ServiceRow,
    TokenRow,
    UTCDateTime,
    ValidationRow,
)
from mailbot.tokens import ALPHABET

MAILBOT = str(Path(sys.executable).parent / "mailbot")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TTL = 14 * DAY  # [policy] request_ttl_days, default
FIRST_REMINDER = 3 * DAY  # [policy] reminder_days = [3, 7, 12], default
REMINDERS = 3
BOT_LOCAL, BOT_DOMAIN = "changes", "bot.test"
CLOSED_MIX = (("done", 70), ("refused", 8), ("expired", 15), ("cancelled", 7))
"""Closed requests by status, in percent."""
PENDING_SHARE = 0.02
"""Pending requests (not due) as a share of all: requests live two weeks at most."""
CHUNK = 50_000


# -- the shape of the data -------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """How many rows of each kind; the first ``pool`` requests are pending."""

    requests: int
    pool: int

    @property
    def services(self) -> int:
        return max(self.requests // 2, self.pool)

    @property
    def contacts(self) -> int:
        return max(self.requests // 2, 1000)

    @property
    def imported(self) -> int:
        """Contacts 1..imported came from the import (a handle); the rest were named
        by address in a request, and hold no role until a change makes them."""
        return self.contacts * 9 // 10


def request_id(i: int) -> str:
    """A distinct, random-looking id like the service's ``CR-`` + 8 characters."""
    number = (i * 0x9E3779B97F + 0x5BD1E995) % 32**8  # odd multiplier: a bijection
    chars = []
    for _ in range(8):
        number, digit = divmod(number, 32)
        chars.append(ALPHABET[digit])
    return "CR-" + "".join(chars)


def hex64(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()


def email(contact: int) -> str:
    return f"c{contact}@client{contact % 997}.test"


@dataclass(frozen=True, slots=True)
class Facts:
    """One loaded request, from which every row of it follows."""

    index: int
    id: str
    service: int
    admin: int
    tech: int
    newcomer: int
    status: str
    created: datetime
    closed: datetime | None


def facts(shape: Shape, i: int) -> Facts:
    service = 1 + i if i < shape.pool else 1 + i % shape.services
    admin, tech = holders(shape, service)
    newcomer = shape.imported + 1 + i % (shape.contacts - shape.imported)
    if i < shape.pool:
        created = NOW - DAY - timedelta(minutes=i % 600)
        return Facts(i, request_id(i), service, admin, tech, newcomer, "pending", created, None)
    spread = (i * 2654435761) % 100
    status = next(s for s, bound in _bounds() if spread < bound)
    created = NOW - 20 * DAY - timedelta(minutes=10 * (i % 50_000))
    closed = {
        "done": created + timedelta(hours=1 + i % 200),
        "refused": created + DAY,
        "expired": created + TTL,
        "cancelled": created + 2 * DAY,
    }[status]
    return Facts(i, request_id(i), service, admin, tech, newcomer, status, created, closed)


@lru_cache(maxsize=1)
def _bounds() -> list[tuple[str, int]]:
    running = itertools.accumulate(share for _, share in CLOSED_MIX)
    return [(status, bound) for (status, _), bound in zip(CLOSED_MIX, running, strict=True)]


def holders(shape: Shape, service: int) -> tuple[int, int]:
    """Admin (also billing) and tech of a service: imported contacts."""
    return 1 + service % shape.imported, 1 + (service * 7 + 3) % shape.imported


# -- rows, as the service writes them ---------------------------------------------


class Rows:
    """Each table's rows, with timestamps and booleans in the dialect's stored form."""

    def __init__(self, dialect: sa.Dialect, shape: Shape) -> None:
        self.shape = shape
        convert = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        self.when: Callable[[datetime | None], Any] = lru_cache(maxsize=1_000_000)(
            lambda value: None if value is None or convert is None else convert(value)
        )
        if convert is None:
            self.when = lambda value: value
        truth = sa.Boolean().dialect_impl(dialect).bind_processor(dialect)
        self.true = truth(True) if truth else True

    def contacts(self) -> Iterator[tuple[Any, ...]]:
        epoch = self.when(NOW - 400 * DAY)
        for k in range(1, self.shape.contacts + 1):
            handle = f"C{k}-MB" if k <= self.shape.imported else None
            language = "fr" if k % 5 == 0 else "en"
            yield (k, handle, email(k), f"Contact {k}", language, self.true, epoch, epoch)

    def services(self) -> Iterator[tuple[Any, ...]]:
        epoch = self.when(NOW - 400 * DAY)
        for s in range(1, self.shape.services + 1):
            admin, tech = holders(self.shape, s)
            yield (s, f"s{s}.example", "domain", admin, tech, admin, self.true, epoch)

    def requests(self, all_facts: list[Facts]) -> Iterator[tuple[Any, ...]]:
        for f in all_facts:
            created = self.when(f.created)
            expires = self.when(f.created + TTL)
            closed = self.when(f.closed)
            yield (f.id, f.service, email(f.admin), f.admin, f.status, created, expires, closed)

    def role_changes(self, all_facts: list[Facts]) -> Iterator[tuple[Any, ...]]:
        for f in all_facts:
            yield (f.index + 1, f.id, "tech", f.tech, f.newcomer)

    def validations(self, all_facts: list[Facts]) -> Iterator[tuple[Any, ...]]:
        for f in all_facts:
            created = self.when(f.created)
            decided = self.when(f.created + timedelta(hours=1 + f.index % 20))
            channel = "web" if f.index % 3 == 0 else "email"
            status, reminded, next_at = _validation_state(f)
            for offset, (contact, side) in enumerate(((f.admin, "current"), (f.newcomer, "new"))):
                state = status[offset]
                decision = (channel, decided) if state != "pending" else (None, None)
                yield (
                    2 * f.index + 1 + offset,
                    f.id,
                    contact,
                    side,
                    state,
                    *decision,
                    None,
                    "sent",
                    reminded,
                    self.when(next_at),
                    None,
                    None,
                    None,
                    created,
                )

    def tokens(self, all_facts: list[Facts]) -> Iterator[tuple[Any, ...]]:
        for f in all_facts:
            issued = self.when(f.created)
            for vid in (2 * f.index + 1, 2 * f.index + 2):
                yield (vid, vid, hex64("t", vid), hex64("k", vid), issued, None)

    def events(self, all_facts: list[Facts]) -> Iterator[tuple[Any, ...]]:
        for f in all_facts:
            change = [{"role": "tech", "from": email(f.tech), "to": email(f.newcomer)}]
            opened = (self.when(f.created), f.id, "request-opened", email(f.admin))
            yield (2 * f.index + 1, *opened, None, None, None, json.dumps(change))
            if f.closed is not None:
                actor = None if f.status == "expired" else email(f.admin)
                closing = (self.when(f.closed), f.id, f"request-{f.status}", actor)
                yield (2 * f.index + 2, *closing, None, None, None, "")

    def outbox(self, all_facts: list[Facts]) -> Iterator[tuple[Any, ...]]:
        """The token mail of each validation, sent (its payload dropped once sent)."""
        for f in all_facts:
            created = self.when(f.created)
            for vid, contact in ((2 * f.index + 1, f.admin), (2 * f.index + 2, f.newcomer)):
                key = hex64("m", vid)[:32]
                yield (
                    vid,
                    f"{key}@{BOT_DOMAIN}",
                    "validation-requested",
                    f.id,
                    vid,
                    email(contact),
                    f"{BOT_LOCAL}+bounce-{key}@{BOT_DOMAIN}",
                    f"[{f.id}] Please confirm the change to s{f.service}.example",
                    None,
                    self.true,
                    "sent",
                    1,
                    created,
                    None,
                    created,
                    created,
                    created,
                )


def _validation_state(f: Facts) -> tuple[tuple[str, str], int, datetime | None]:
    """Statuses of (current, new), reminders sent, next reminder time."""
    if f.status == "pending":
        return ("pending", "pending"), 0, f.created + FIRST_REMINDER
    return {
        "done": (("accepted", "accepted"), f.index % 2),
        "refused": (("refused", "pending"), 0),
        "expired": (("pending", "pending"), REMINDERS),
        "cancelled": (("pending", "pending"), 1),
    }[f.status] + (None,)


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COLUMNS: dict[sa.Table, tuple[str, ...]] = {
    ContactRow.__table__: _names(
        "id handle email name language in_good_standing created_at updated_at"
    ),
    ServiceRow.__table__: _names(
        "id name kind admin_id tech_id billing_id in_good_standing updated_at"
    ),
    RequestRow.__table__: _names(
        "id service_id requester_email requester_id status created_at expires_at closed_at"
    ),
    RoleChangeRow.__table__: _names("id request_id role from_contact_id to_contact_id"),
    ValidationRow.__table__: _names(
        "id request_id contact_id side status channel decided_at actor_email delivery "
        "reminders_sent next_reminder_at held_decision held_until undo_digest created_at"
    ),
    TokenRow.__table__: _names("id validation_id digest reply_key_digest issued_at used_at"),
    EventRow.__table__: _names(
        "id at request_id kind actor_email contact_id channel inbound_id detail"
    ),
    OutboxRow.__table__: _names(
        "id message_id event request_id validation_id to_email envelope_from subject payload "
        "carries_secret status attempts next_attempt_at last_error created_at queued_at sent_at"
    ),
}


# -- bulk loading ----------------------------------------------------------------


def load(url: str, shape: Shape) -> dict[str, int]:
    """Fill a freshly migrated database; returns the rows loaded per table."""
    engine = make_engine(Settings(database={"url": url}).database)
    dialect = engine.dialect
    engine.dispose()
    rows = Rows(dialect, shape)
    all_facts = [facts(shape, i) for i in range(shape.requests)]
    streams: list[tuple[sa.Table, Iterable[tuple[Any, ...]]]] = [
        (ContactRow.__table__, rows.contacts()),
        (ServiceRow.__table__, rows.services()),
        (RequestRow.__table__, rows.requests(all_facts)),
        (RoleChangeRow.__table__, rows.role_changes(all_facts)),
        (ValidationRow.__table__, rows.validations(all_facts)),
        (TokenRow.__table__, rows.tokens(all_facts)),
        (EventRow.__table__, rows.events(all_facts)),
        (OutboxRow.__table__, rows.outbox(all_facts)),
    ]
    writer = _sqlite_writer if dialect.name == "sqlite" else _postgres_writer
    with writer(url) as write:
        return {table.name: write(table, COLUMNS[table], stream) for table, stream in streams}


Writer = Callable[[sa.Table, tuple[str, ...], Iterable[tuple[Any, ...]]], int]


@contextmanager
def _sqlite_writer(url: str) -> Iterator[Writer]:
    """executemany in one transaction, without fsyncs (a crash would only lose the test)."""
    connection = sqlite3.connect(sa.make_url(url).database or "", isolation_level=None)
    for pragma in ("journal_mode=DELETE", "synchronous=OFF", "cache_size=-1000000"):
        connection.execute(f"PRAGMA {pragma}")
    connection.execute("BEGIN")
    found = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    indexes = connection.execute(found).fetchall()
    for name, _ in indexes:  # built again after the load: faster than row by row
        connection.execute(f"DROP INDEX {name}")

    def write(table: sa.Table, columns: tuple[str, ...], stream: Iterable[tuple[Any, ...]]) -> int:
        marks = ", ".join("?" for _ in columns)
        names = ", ".join(columns)  # from the table definitions, not from input
        statement = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608
        count = 0
        iterator = iter(stream)
        while chunk := list(itertools.islice(iterator, CHUNK)):
            connection.executemany(statement, chunk)
            count += len(chunk)
        return count

    try:
        yield write
        for _, definition in indexes:
            connection.execute(definition)
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode=WAL")  # as mailbot's engine keeps it
    finally:
        connection.close()


@contextmanager
def _postgres_writer(url: str) -> Iterator[Writer]:
    """COPY in one transaction; the id sequences are moved past the loaded ids."""
    import psycopg

    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo) as connection:
        written: list[str] = []
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        ).fetchall()
        for name, _ in indexes:  # built again after the load: faster than row by row
            connection.execute(f"DROP INDEX {name}")

        def write(
            table: sa.Table, columns: tuple[str, ...], stream: Iterable[tuple[Any, ...]]
        ) -> int:
            count = 0
            with connection.cursor() as cursor:
                command = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
                with cursor.copy(command) as copy:
                    for row in stream:
                        copy.write_row(row)
                        count += 1
            written.append(table.name)
            return count

        yield write
        for _, definition in indexes:
            connection.execute(definition)
        for name in written:
            if name != RequestRow.__tablename__:
                last = f"SELECT max(id) FROM {name}"  # noqa: S608 (a table name of ours)
                connection.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), ({last}))"
                )
        connection.commit()
        connection.autocommit = True
        connection.execute("ANALYZE")


# -- the due set -------------------------------------------------------------------


@dataclass(frozen=True)
class DueSet:
    reminders: list[str]
    expiries: list[str]
    held: list[str]

    @property
    def size(self) -> int:
        return len(self.reminders) + len(self.expiries) + len(self.held)

    def expected(self) -> SweepReport:
        """What a sweep that does all of it reports: two validations per request."""
        return SweepReport(
            expired=len(self.expiries), reminded=2 * len(self.reminders), applied=len(self.held)
        )


class Pool:
    """Pending requests not due yet; each run takes fresh ones and makes them due."""

    def __init__(self, shape: Shape) -> None:
        self.ids = (request_id(i) for i in range(shape.pool))

    def take(self, count: int) -> DueSet:
        held = max(1, count // 10) if count >= 3 else 0
        expiries = (count - held) // 2
        reminders = count - held - expiries
        taken = list(itertools.islice(self.ids, count))
        if len(taken) < count:
            raise SystemExit("not enough pending requests left to make due")
        return DueSet(
            taken[:reminders],
            taken[reminders : reminders + expiries],
            taken[reminders + expiries :],
        )


def make_due(engine: sa.Engine, due: DueSet) -> None:
    """Put the requests of ``due`` in the state a real database has them in when
    they fall due at NOW, as the service would have written it."""
    requests = RequestRow.__table__
    validations = ValidationRow.__table__
    dated = (
        requests.update()
        .where(requests.c.id == sa.bindparam("rid"))
        .values(created_at=sa.bindparam("created"), expires_at=sa.bindparam("expires"))
    )
    reminded = (
        validations.update()
        .where(validations.c.request_id == sa.bindparam("rid"))
        .values(reminders_sent=sa.bindparam("sent"), next_reminder_at=sa.bindparam("next_at"))
    )
    by_side = validations.c.side == sa.bindparam("which")
    holding = validations.c.request_id == sa.bindparam("rid")
    held = (
        validations.update()
        .where(holding, by_side)
        .values(
            held_decision="accept",
            held_until=sa.bindparam("until"),
            undo_digest=sa.bindparam("undo"),
        )
    )
    accepted = (
        validations.update()
        .where(holding, by_side)
        .values(
            status="accepted",
            channel="email",
            decided_at=sa.bindparam("decided"),
            next_reminder_at=None,
        )
    )
    remind_from = NOW - FIRST_REMINDER - timedelta(hours=1)
    expire_from = NOW - TTL - timedelta(hours=1)
    with engine.begin() as connection:
        if due.reminders:
            connection.execute(dated, [_dates(r, remind_from) for r in due.reminders])
            next_at = remind_from + FIRST_REMINDER
            connection.execute(
                reminded, [{"rid": r, "sent": 0, "next_at": next_at} for r in due.reminders]
            )
        if due.expiries:
            connection.execute(dated, [_dates(r, expire_from) for r in due.expiries])
            connection.execute(
                reminded, [{"rid": r, "sent": REMINDERS, "next_at": None} for r in due.expiries]
            )
        if due.held:
            until = NOW - timedelta(minutes=1)
            connection.execute(
                held,
                [
                    {"rid": r, "which": "current", "until": until, "undo": hex64("u" + r, 0)}
                    for r in due.held
                ],
            )
            decided = NOW - timedelta(hours=2)
            connection.execute(
                accepted, [{"rid": r, "which": "new", "decided": decided} for r in due.held]
            )


def _dates(rid: str, created: datetime) -> dict[str, Any]:
    return {"rid": rid, "created": created, "expires": created + TTL}


# -- reusing a load ----------------------------------------------------------------


@dataclass(frozen=True)
class Reuse:
    """Loaded databases kept in ``directory`` for later runs (``--reuse``)."""

    directory: Path

    def _name(self, url: str, shape: Shape) -> str:
        kind = sa.make_url(url).get_backend_name()
        return f"{kind}_{shape.requests}_{shape.pool}_{migrations.head()}"

    def restore(self, url: str, shape: Shape) -> dict[str, int] | None:
        """Make ``url`` the kept copy, if there is one; the rows it holds."""
        name = self._name(url, shape)
        counts = self.directory / f"{name}.json"
        if not counts.exists():
            return None
        target = sa.make_url(url)
        if target.get_backend_name() == "sqlite":
            shutil.copyfile(self.directory / f"{name}.db", target.database or "")
        else:
            with _server(url) as connection:
                connection.exec_driver_sql(f"DROP DATABASE {target.database}")
                connection.exec_driver_sql(f"CREATE DATABASE {target.database} TEMPLATE {name}")
        rows: dict[str, int] = json.loads(counts.read_text())
        return rows

    def keep(self, url: str, shape: Shape, rows: dict[str, int]) -> None:
        """Keep a copy of the database just loaded at ``url`` (no one connected to it)."""
        name = self._name(url, shape)
        source = sa.make_url(url)
        self.directory.mkdir(parents=True, exist_ok=True)
        if source.get_backend_name() == "sqlite":
            shutil.copyfile(source.database or "", self.directory / f"{name}.db")
        else:
            with _server(url) as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {source.database}")
        (self.directory / f"{name}.json").write_text(json.dumps(rows))


def settle(url: str) -> None:
    """Put the loaded database on disk before it is swept, as one that has been
    running is: the load (or the copy) leaves gigabytes of it in the page cache
    to be written, and the first sweep's fsync would wait for all of them."""
    target = sa.make_url(url)
    if target.get_backend_name() == "sqlite":
        descriptor = os.open(target.database or "", os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    else:
        with _server(url) as connection:
            connection.exec_driver_sql("CHECKPOINT")  # as the checkpointer soon would


@contextmanager
def _server(url: str) -> Iterator[sa.Connection]:
    """A connection to the server of ``url``, outside any transaction (for CREATE DATABASE)."""
    server = sa.make_url(url).set(database="postgres")
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            yield connection
    finally:
        admin.dispose()


# -- measuring ---------------------------------------------------------------------


@dataclass
class Case:
    """Sweeps of one due-set size over one database."""

    database: str
    requests: int
    due: int
    times: list[float]
    mismatches: list[str]
    cpu: list[float]
    """This process's CPU seconds in each sweep (SQLite's work included, not
    PostgreSQL's): on a busy machine, what the sweep cost apart from waiting."""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Loaded:
    database: str
    requests: int
    rows: dict[str, int]
    seconds: float
    cli: float | None = None
    cli_output: str = ""


def settings_for(url: str, workdir: Path) -> Settings:
    return Settings(
        bot={"address": f"{BOT_LOCAL}@{BOT_DOMAIN}", "base_url": "https://bot.test"},
        database={"url": url},
        outgoing={"transport": "maildir", "maildir": str(workdir / "sent")},
    )


def sweep_once(bot: Mailbot, pool: Pool, due: int) -> tuple[float, float, str | None]:
    """Make a fresh due set due, sweep once; the wall and CPU seconds, and what went
    amiss if anything."""
    wanted = pool.take(due)
    make_due(bot.engine, wanted)
    cpu, start = time.process_time(), time.perf_counter()
    report = bot.sweep(NOW)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    expected = wanted.expected()
    return seconds, cpu, None if report == expected else f"swept {report}, expected {expected}"


def cli_sweep(url: str, workdir: Path, pool: Pool, due: int) -> tuple[float, str]:
    """``mailbot sweep`` as an operator or a timer unit runs it: wall seconds, its output."""
    engine = make_engine(settings_for(url, workdir).database)
    make_due(engine, pool.take(due))
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
    env |= {
        "MAILBOT_DATABASE__URL": url,
        "MAILBOT_BOT__ADDRESS": f"{BOT_LOCAL}@{BOT_DOMAIN}",
        "MAILBOT_BOT__BASE_URL": "https://bot.test",
        "MAILBOT_OUTGOING__TRANSPORT": "maildir",
        "MAILBOT_OUTGOING__MAILDIR": str(workdir / "sent"),
    }
    command = [MAILBOT, "sweep", "--now", NOW.isoformat(), "--no-flush"]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mailbot sweep failed: {done.stderr.strip()}")
    return seconds, done.stdout.strip()


def statements_of(engine: sa.Engine, action: Callable[[], object]) -> list[tuple[str, Any]]:
    """Each distinct reading, updating or deleting statement ``action`` runs, with the
    parameters of its first run."""
    seen: dict[str, Any] = {}

    def listener(*args: Any) -> None:
        statement, parameters, many = args[2], args[3], args[5]
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            seen.setdefault(statement, parameters[0] if many else parameters)

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    return list(seen.items())


def explain(engine: sa.Engine, statements: list[tuple[str, Any]]) -> int:
    """Print each statement's plan; returns how many scan a whole table."""
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
    scans = 0
    with engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql(prefix + statement, parameters).all()
            lines = [str(row[-1] if sqlite else row[0]) for row in plan]
            full = [
                line
                for line in lines
                if (line.strip().startswith("SCAN ") if sqlite else "Seq Scan on" in line)
            ]
            scans += bool(full)
            print("\n" + " ".join(statement.split()))
            for line in lines:
                print(f"    {line}")
            if full:
                print("    ^^ scans a whole table")
    return scans


def measure(
    database: str,
    url: str,
    workdir: Path,
    shape: Shape,
    dues: list[int],
    args: argparse.Namespace,
    probe: bool,
) -> tuple[Loaded, list[Case]]:
    """Load one database (or restore a kept load), then sweep each due size
    ``args.runs`` times; the first due size is also swept by the CLI and, with
    ``probe``, explained."""
    runs = args.runs
    reuse = Reuse(Path(args.reuse)) if args.reuse else None
    start = time.perf_counter()
    rows = reuse.restore(url, shape) if reuse else None
    how = "restored (--reuse)"
    if rows is None:
        upgrade_engine = make_engine(settings_for(url, workdir).database)
        upgrade(upgrade_engine)
        upgrade_engine.dispose()
        start = time.perf_counter()
        rows, how = load(url, shape), "loaded"
        if reuse:
            reuse.keep(url, shape, rows)
    loaded = Loaded(database, shape.requests, rows, time.perf_counter() - start)
    print(f"{database}: {how} {sum(rows.values()):,} rows in {loaded.seconds:.0f} s", flush=True)
    settle(url)
    pool = Pool(shape)
    settings = settings_for(url, workdir)
    bot = Mailbot(settings, make_engine(settings.database), FixedClock(NOW))
    cases = []
    try:
        for due in dues:
            times, cpu, mismatches = [], [], []
            for _ in range(runs):
                seconds, used, wrong = sweep_once(bot, pool, due)
                times.append(seconds)
                cpu.append(used)
                mismatches += [wrong] if wrong else []
            cases.append(Case(database, shape.requests, due, times, mismatches, cpu))
            print(
                f"  {due:,} due: {', '.join(f'{t:.3f}' for t in times)} s"
                f" (CPU {', '.join(f'{t:.3f}' for t in cpu)} s)",
                flush=True,
            )
        loaded.cli, loaded.cli_output = cli_sweep(url, workdir, pool, dues[0])
        if probe:
            print(f"\nPlans of the statements one sweep runs ({database}, {shape.requests:,}):")
            wanted = pool.take(dues[0])
            make_due(bot.engine, wanted)
            statements = statements_of(bot.engine, lambda: bot.sweep(NOW))
            scans = explain(bot.engine, statements)
            print(f"\n{len(statements)} statements, {scans} scanning a whole table\n")
    finally:
        bot.engine.dispose()
    return loaded, cases


# -- the run -----------------------------------------------------------------------


def sweep_all(
    database: str,
    url_for: Callable[[int], Any],
    workdir: Path,
    sizes: list[int],
    args: argparse.Namespace,
) -> tuple[list[Loaded], list[Case]]:
    """Every size on one kind of database, the smallest first."""
    largest_due = max(1, round(max(sizes) * args.due_fraction))
    loads, cases = [], []
    for n in sorted(sizes):
        due = max(1, round(n * args.due_fraction))
        dues = [due] + ([largest_due] if largest_due != due else [])
        needed = args.runs * sum(dues) + 2 * due
        if needed > n:
            raise SystemExit(f"{n:,} requests cannot hold {needed:,} due ones: fewer --runs")
        shape = Shape(n, max(int(n * PENDING_SHARE), needed))
        with url_for(n) as url:
            probe = args.explain and n == max(sizes)
            loaded, found = measure(database, url, workdir, shape, dues, args, probe)
        loads.append(loaded)
        cases += found
    return loads, cases


def sqlite_urls(workdir: Path) -> Callable[[int], Any]:
    @contextmanager
    def url_for(n: int) -> Iterator[str]:
        path = workdir / f"sweep-{n}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in workdir.glob(f"sweep-{n}.db*"):
                leftover.unlink()

    return url_for


def postgres_urls(server: str) -> Callable[[int], Any]:
    @contextmanager
    def url_for(n: int) -> Iterator[str]:
        name = f"mailbot_sweep_scale_{n}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            yield sa.make_url(server).set(database=name).render_as_string(False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.dispose()

    return url_for


def report(loads: list[Loaded], cases: list[Case], runs: int, fraction: float) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nLoad average at the end: {load} on {os.cpu_count()} CPUs (a busy machine")
    print("makes the wall times longer than the CPU times; the goals are about wall time)")
    print("\nLoaded (rows per table, seconds):")
    for loaded in loads:
        tables = ", ".join(f"{name} {count:,}" for name, count in loaded.rows.items())
        print(f"  {loaded.database} {loaded.requests:,} requests: {tables}; {loaded.seconds:.0f} s")
    print(
        "\nOne sweep, in-process (Mailbot.sweep), each run on a fresh due set "
        "(a tenth held decisions, the rest half reminders, half expiries):"
    )
    print(
        f"{'database':<11}{'requests':>11}{'due':>7}{'median of ' + str(runs) + ' s':>15}"
        f"{'first s':>10}{'ms/due':>9}{'CPU s':>8}  runs s"
    )
    for c in cases:
        print(
            f"{c.database:<11}{c.requests:>11,}{c.due:>7,}{c.median:>15.3f}{c.times[0]:>10.3f}"
            f"{1000 * c.median / c.due:>9.2f}{statistics.median(c.cpu):>8.3f}"
            f"  {' '.join(f'{t:.3f}' for t in c.times)}"
        )
        for wrong in c.mismatches:
            print(f"    !! {wrong}")
    print("\n`mailbot sweep --now ... --no-flush` (a subprocess: start-up and imports too):")
    for loaded in loads:
        where = f"{loaded.database} {loaded.requests:,}"
        print(f"  {where}: {loaded.cli:.2f} s wall ({loaded.cli_output})")
    for database in dict.fromkeys(c.database for c in cases):
        mine = [c for c in cases if c.database == database]
        largest = max(c.requests for c in mine)
        smallest = min(c.requests for c in mine)
        big = next(c for c in mine if c.requests == largest)
        same = next(c for c in mine if c.requests == smallest and c.due == big.due)
        light = next(c for c in mine if c.requests == smallest)
        ratio = big.median / same.median
        print(f"\n{database}:")
        print(
            f"  one sweep over {largest:,} requests ({big.due:,} due): {big.median:.3f} s"
            f" -> goal < 0.5 s {'met' if big.median < 0.5 else 'MISSED'}"
        )
        print(
            f"  {largest:,} / {smallest:,} requests, same sweep ({big.due:,} due each): "
            f"{ratio:.2f}x -> goal < 3x {'met' if ratio < 3 else 'MISSED'}"
        )
        print(
            f"  {largest:,} / {smallest:,} requests, {fraction:.1%} due each "
            f"({big.due:,} vs {light.due:,}): {big.median / light.median:.1f}x"
            " (grows with the due count, not with the table)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="requests per database")
    parser.add_argument("--due-fraction", type=float, default=0.001, help="share made due")
    parser.add_argument("--runs", type=int, default=3, help="sweeps per due size (median)")
    parser.add_argument("--explain", action="store_true", help="print each statement's plan")
    parser.add_argument("--postgres", metavar="URL", help="a server to create databases on")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--reuse", metavar="DIR", help="keep loaded databases there for next runs")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    for name in [k for k in os.environ if k.startswith("MAILBOT_")]:
        del os.environ[name]  # the settings here are the benchmark's own
    loads, cases = [], []
    with tempfile.TemporaryDirectory(prefix="mailbot-sweep-") as temporary:
        workdir = Path(temporary)
        if not args.no_sqlite:
            found = sweep_all("SQLite", sqlite_urls(workdir), workdir, sizes, args)
            loads += found[0]
            cases += found[1]
        if not args.no_postgres:
            keep = Path(args.reuse) / "postgres" if args.reuse else None
            with local_postgres(keep) if not args.postgres else _given(args.postgres) as server:
                if server is None:
                    print("PostgreSQL: no --postgres URL and no local server could be started")
                else:
                    found = sweep_all("PostgreSQL", postgres_urls(server), workdir, sizes, args)
                    loads += found[0]
                    cases += found[1]
    report(loads, cases, args.runs, args.due_fraction)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
