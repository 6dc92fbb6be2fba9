"""Engines, transactions and schema upgrades, built from settings (never at import).

Alembic is imported only where the schema is upgraded or checked: a command
that only reads or stores does not pay for it at import.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from mailbot import migrations
from mailbot.config import DatabaseSettings

if TYPE_CHECKING:
    from alembic.config import Config


class SchemaOutOfDate(Exception):
    """The database has not been created or upgraded by ``mailbot init``."""


class DatabaseUnavailable(Exception):
    """The database cannot be opened at all (its SQLite directory cannot be created)."""


def make_engine(settings: DatabaseSettings) -> Engine:
    """The engine for ``[database] url``. Its errors never quote the statement's
    parameters: they would put raw messages, addresses and digests of tokens
    into logs and into a failed message's outcome."""
    url = sa.make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, settings.busy_timeout_seconds)
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args=_lease_options(),
        hide_parameters=True,
    )
    from mailbot.storage.pgtext import without_nul  # psycopg: PostgreSQL only

    sa.event.listen(engine, "connect", lambda connection, record: without_nul(connection))
    return engine


IDLE_IN_TRANSACTION_SECONDS = 120
"""A PostgreSQL session left idle inside a transaction this long is ended by
the server (a client hung mid-message): its row locks go with it."""
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT = 30, 10, 3
"""TCP keepalives, both ways: a client machine that vanished is found dead by
the server within about a minute (30 + 10 x 3 s), and its session ended."""


def _lease_options() -> dict[str, Any]:
    """Connection settings that make a row lock a lease.

    Acting on a stored message holds its row lock (``FOR UPDATE SKIP LOCKED``)
    until the transaction that records the effects commits; if the process
    dies, the transaction never commits and another worker claims the message.
    A process killed on a live machine loses its connection at once. These
    settings bound the other cases: a machine that vanished (server-side TCP
    keepalives) or a client that stalls inside a transaction
    (``idle_in_transaction_session_timeout``), after which PostgreSQL rolls
    the transaction back and the message is free again.
    """
    options = " ".join(
        f"-c {name}={value}"
        for name, value in (
            ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_SECONDS * 1000),
            ("tcp_keepalives_idle", KEEPALIVE_IDLE_SECONDS),
            ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_SECONDS),
            ("tcp_keepalives_count", KEEPALIVE_COUNT),
        )
    )
    return {
        "options": options,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
    }


READ_ONLY = "mailbot_read_only"
"""Execution option of a connection that only reads: on SQLite it begins a
deferred transaction, which WAL lets run beside a writer (the schema check at
start-up does not wait for another process's write lock)."""


def _sqlite_engine(url: sa.URL, busy_timeout: float) -> Engine:
    """SQLite tuned for a mail server: durable commits and one writer at a time.

    WAL lets readers run beside the writer; ``synchronous=FULL`` makes a commit
    a promise (the SMTP 250 depends on it); ``BEGIN IMMEDIATE`` takes the write
    lock up front so two writers queue on the busy timeout instead of failing
    on a lock upgrade; ``secure_delete`` overwrites dropped token mails.
    """
    if url.database and url.database != ":memory:":
        directory = Path(url.database).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DatabaseUnavailable(
                f"cannot create the directory of the SQLite database {url.database}: {reason}"
            ) from None
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout}, hide_parameters=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            "secure_delete=ON",
            f"busy_timeout={int(busy_timeout * 1000)}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get(READ_ONLY, False):
            connection.exec_driver_sql("BEGIN")
        else:
            _begin_immediate(connection, busy_timeout)

    _writers[engine] = (threading.Lock(), busy_timeout)
    return engine


WAL_AUTOCHECKPOINT_PAGES = 1000
"""SQLite's default, kept: a commit that leaves the log longer checkpoints it."""

WRITE_LOCK_POLL_SECONDS = (0.0005, 0.002)
"""How soon a writer waiting for another process's write lock tries again: first,
then at most (doubling in between)."""


def _begin_immediate(connection: sa.Connection, busy_timeout: float) -> None:
    """Take SQLite's write lock, waiting for another process that holds it.

    SQLite's own busy handler sleeps longer and longer (up to 100 ms) between
    tries, so a waiter keeps missing the short gaps between the transactions of
    a busy process beside it (a worker acting on mail back to back) and the
    listener's 250s starve. Here the wait is polled every few milliseconds at
    most, until the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout
    pause, longest = WRITE_LOCK_POLL_SECONDS
    driver = _driver(connection)
    driver.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, longest)
    finally:
        driver.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


# SQLite has one writer at a time. Threads of one process queue on a lock, woken
# the moment it is free, rather than in SQLite's busy handler, which polls with
# sleeps of up to 100 ms; the busy timeout still covers other processes (such as
# `mailbot process` beside `mailbot serve`).
_writers: weakref.WeakKeyDictionary[Engine, tuple[threading.Lock, float]] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def _writer_turn(engine: Engine) -> Iterator[None]:
    found = _writers.get(engine)
    if found is None:
        yield
        return
    lock, timeout = found
    if not lock.acquire(timeout=timeout):
        raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, TimeoutError("database busy"))
    try:
        yield
    finally:
        lock.release()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: committed if the block ends normally, rolled back otherwise."""
    with _writer_turn(engine), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def writing(engine: Engine, *, synced: bool = True) -> Iterator[sa.Connection]:
    """A write transaction on a bare connection, for the hot paths whose
    statements are few and fixed (storing received mail): no ORM session.

    ``synced=False`` lets SQLite commit without waiting for the disk, for
    this transaction only: no sync (``synchronous = NORMAL``) and no
    checkpoint of the log (which syncs twice; the next commit of another
    transaction makes it). The commit survives a killed process at once, and
    a power cut once the next synced commit is made. PostgreSQL commits as
    always.
    """
    unsynced = not synced and engine.dialect.name == "sqlite"
    with _writer_turn(engine), engine.connect() as connection:
        if unsynced:
            driver = _driver(connection)
            driver.execute("PRAGMA synchronous = NORMAL")
            driver.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            with connection.begin():
                yield connection
        finally:
            if unsynced:
                _resync(connection)


def _resync(connection: sa.Connection) -> None:
    """Back to synced commits before the connection serves anyone else; a
    connection that cannot be told so is closed instead."""
    try:
        driver = _driver(connection)
        driver.execute("PRAGMA synchronous = FULL")
        driver.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    except sqlite3.Error:
        connection.invalidate()
        raise


def _driver(connection: sa.Connection) -> Any:
    """The driver's own connection, for statements that must run outside any
    transaction (an ``execute`` here would begin one)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    return driver


class DriverStatements:
    """Statements written with ``?`` placeholders run on an SQLAlchemy connection
    as they are (the driver's own paramstyle), so that the same SQL serves the
    pipe's bare driver connection (``mailbot.intake``) and the service; errors
    still come wrapped, and a lost connection still invalidates the pool."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.sqlite = connection.dialect.name == "sqlite"

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        statement = sql if self.sqlite else sql.replace("?", "%s")
        result = self.connection.exec_driver_sql(statement, tuple(params))
        return [tuple(row) for row in result.fetchall()] if result.returns_rows else []


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A unit of work that only reads: on SQLite a deferred transaction, which
    runs beside the writer instead of waiting for the write lock."""
    with (
        engine.connect().execution_options(**{READ_ONLY: True}) as connection,
        Session(connection, expire_on_commit=False) as session,
    ):
        yield session


@contextmanager
def _alembic_config(engine: Engine) -> Iterator[Config]:
    from alembic.config import Config

    with as_file(files("mailbot.migrations")) as script_location:
        config = Config()
        config.set_main_option("script_location", str(script_location))
        config.attributes["engine"] = engine
        yield config


def upgrade(engine: Engine) -> str:
    """Bring the schema to the newest migration; returns its revision."""
    from alembic import command
    from alembic.script import ScriptDirectory

    with _alembic_config(engine) as config:
        command.upgrade(config, "head")
        return str(ScriptDirectory.from_config(config).get_current_head())


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest migration.

    Run by every command: it reads the head from the migration files and the
    version table with a plain query, and asks Alembic only if the files do
    not name a single head.
    """
    head = migrations.head() or _alembic_head(engine)
    try:
        with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
            current = _current_revision(connection)
    except sa.exc.DBAPIError as exc:  # unreachable, locked, or not a database at all
        raise SchemaOutOfDate(f"cannot open the database: {exc.orig}") from None
    if current != head:
        state = "has no schema" if current is None else f"is at {current}, not {head}"
        raise SchemaOutOfDate(f"the database {state}: run `mailbot init`")


def _current_revision(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    found = connection.execute(sa.text("SELECT version_num FROM alembic_version")).first()
    return None if found is None else str(found[0])


def _alembic_head(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    with _alembic_config(engine) as config:
        head = ScriptDirectory.from_config(config).get_current_head()
    return None if head is None else str(head)
