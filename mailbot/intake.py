"""Storing received mail durably: the statements the SMTP listener's group
commit runs, and the pipe's fast way in, by the standard library and the
database driver alone.

``mailbot process --store-only`` runs once per message under an MTA, so it
cannot afford to import the application (SQLAlchemy, pydantic: about a second
of CPU). It reads the few keys it needs from the configuration, commits the
raw message into ``inbound_message`` with the service's own dedup key (so a
message delivered twice, by any route, is stored once) and leaves acting on
it to ``mailbot serve``, whose rescuer picks up stored mail within seconds.
The listener runs the same statements (``store_many``) on its own connection:
a few fixed statements per batch, without the ORM, as its 250 waits on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from mailbot import configfile, mailkeys, migrations
from mailbot.errors import ConfigError, StorageUnavailable, in_one_line

MAX_ADDRESS_CHARS = 254
"""A path is at most 256 octets with its brackets (RFC 5321 4.5.3.1.3)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RECEIVED = "received"
"""``InboundStatus.RECEIVED``: stored, not yet acted on."""
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
"""How the service's tables store a UTC time in SQLite."""

_INSERT = (
    "INSERT INTO inbound_message (dedup_key, message_id, source, envelope_from, recipients,"
    " raw, received_at, status, outcome) VALUES {rows}"
    " ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key"
)


@dataclass(frozen=True)
class IntakeSettings:
    """The keys storing needs: the database, and the size the listener accepts."""

    url: str
    busy_timeout_seconds: float = configfile.DEFAULT_BUSY_TIMEOUT_SECONDS
    max_message_bytes: int = configfile.DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool
    status: str = RECEIVED
    """The row's status: a duplicate may have been acted on already."""


def read_settings(explicit: str | None) -> IntakeSettings:
    """The database URL, busy timeout and message size limit, with the same
    sources and precedence as ``mailbot.config``; ConfigError if unusable."""
    path = configfile.config_path(explicit)
    values = configfile.read_toml(path) if path is not None else {}
    database = configfile.raw_section(values, "database")
    smtp = configfile.raw_section(values, "smtp")
    url = str(database.get("url", configfile.DEFAULT_DATABASE_URL))
    if not url.startswith(("sqlite:", "postgresql")):
        raise ConfigError("database.url: only sqlite:/// and postgresql+psycopg:// URLs")
    return IntakeSettings(
        url,
        _positive(
            database,
            "busy_timeout_seconds",
            configfile.DEFAULT_BUSY_TIMEOUT_SECONDS,
            float,
            "database",
        ),
        int(
            _positive(smtp, "max_message_bytes", configfile.DEFAULT_MAX_MESSAGE_BYTES, int, "smtp")
        ),
    )


def _positive(section: dict[str, Any], key: str, default: float, kind: type, name: str) -> float:
    try:
        value = kind(section.get(key, default))
    except (TypeError, ValueError):
        value = 0
    if isinstance(section.get(key), bool) or value <= 0:
        raise ConfigError(f"{name}.{key}: must be a number greater than 0")
    return float(value)


class Runner(Protocol):
    """Runs one statement in the open transaction; ``?`` placeholders."""

    sqlite: bool

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class RawMail:
    """A message as received, before anything is read from it but its keys.

    The SMTP listener, the IMAP reader, the CLI and the pipe all store it
    through ``store_many``, so that the same message delivered by any route
    has the same key and is stored once.
    """

    raw: bytes
    source: str = "cli"
    recipients: tuple[str, ...] = ()
    envelope_from: str | None = None

    @cached_property
    def message_id(self) -> str | None:
        return mailkeys.message_id(self.raw)

    @cached_property
    def dedup_key(self) -> str:
        """The same message delivered twice has the same key (``mailkeys.dedup_key``)."""
        return mailkeys.dedup_key(self.raw, self.message_id)

    @cached_property
    def legacy_keys(self) -> tuple[str, ...]:
        """The keys rows stored by earlier versions have: a match is a duplicate
        only if that row's content has this message's ``dedup_key`` too."""
        return mailkeys.legacy_keys(self.raw, self.message_id)


def store(
    settings: IntakeSettings,
    raw: bytes,
    recipients: Sequence[str] = (),
    envelope_from: str | None = None,
    source: str = "cli",
) -> Stored:
    """Commit the raw message once; StorageUnavailable if the database cannot take it."""
    arrival = RawMail(raw, source, tuple(recipients), envelope_from)
    with _connection(settings) as db:
        _check_schema(db)
        return store_many(db, [arrival], datetime.now(UTC))[0]


def envelope_problem(address: str) -> str | None:
    """Why an envelope address (MAIL FROM, RCPT TO, the pipe's ``--sender``
    and ``--recipient``) is refused, or None: one no path may hold, which
    PostgreSQL could not store either, is refused rather than retried forever."""
    if len(address) > MAX_ADDRESS_CHARS:
        return f"longer than a path may be ({MAX_ADDRESS_CHARS} characters)"
    if _CONTROL.search(address):
        return "control character in the address"
    return None


def store_many(db: Runner, arrivals: Sequence[RawMail], now: datetime) -> list[Stored]:
    """Add, in the open transaction, the messages not stored before (by any route
    or version); a message twice in ``arrivals`` is stored once. One query finds
    what is stored, one statement inserts the rest: the cost of a commit the
    SMTP listener waits for before its 250."""
    known = _stored_before(db, arrivals)
    fresh: dict[str, RawMail] = {}
    for arrival in arrivals:
        if arrival.dedup_key not in known:
            fresh.setdefault(arrival.dedup_key, arrival)
    inserted = _insert(db, list(fresh.values()), now)
    stored = {**known, **{key: Stored(row_id, False) for key, row_id in inserted.items()}}
    stored.update(_stored_before(db, [fresh[k] for k in fresh if k not in stored]))
    results = []
    for arrival in arrivals:
        found = stored[arrival.dedup_key]
        results.append(found)
        stored[arrival.dedup_key] = Stored(found.id, True, found.status)  # a copy in the batch
    return results


class _Database:
    """A DB-API connection and how its placeholders are written."""

    def __init__(self, connection: Any, sqlite: bool) -> None:
        self.connection = connection
        self.sqlite = sqlite

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql if self.sqlite else sql.replace("?", "%s"), params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()


def _check_schema(db: _Database) -> None:
    head = migrations.head()
    try:
        rows = db.run("SELECT version_num FROM alembic_version")
    except Exception as exc:  # no such table: never initialised
        reason = f"the database has no schema ({in_one_line(exc)}): run `mailbot init`"
        raise StorageUnavailable(reason) from None
    current = rows[0][0] if rows else None
    if head is not None and current != head:
        state = "has no schema" if current is None else f"is at {current}, not {head}"
        raise StorageUnavailable(f"the database {state}: run `mailbot init`")


def _stored_before(db: Runner, arrivals: Sequence[RawMail]) -> dict[str, Stored]:
    """The rows already stored for these messages, by their ``dedup_key``. A row
    stored by an earlier version under a legacy key counts only if its raw
    message has the same key today."""
    if not arrivals:
        return {}
    legacy = {old: a.dedup_key for a in arrivals for old in a.legacy_keys}
    keys = [*{a.dedup_key for a in arrivals}, *legacy]
    marks = ", ".join("?" * len(keys))  # placeholders only: the keys are parameters
    query = "SELECT dedup_key, id, status FROM inbound_message WHERE dedup_key IN "
    found: dict[str, Stored] = {}
    for key, row_id, status in db.run(f"{query}({marks})", keys):
        if key not in legacy:
            found[key] = Stored(int(row_id), True, str(status))
        elif _content_key(db, int(row_id)) == legacy[key]:
            found.setdefault(legacy[key], Stored(int(row_id), True, str(status)))
    return found


def _content_key(db: Runner, row_id: int) -> str:
    """Today's key of a row stored under a legacy key."""
    content = bytes(db.run("SELECT raw FROM inbound_message WHERE id = ?", (row_id,))[0][0])
    return mailkeys.dedup_key(content, mailkeys.message_id(content))


def _insert(db: Runner, arrivals: Sequence[RawMail], now: datetime) -> dict[str, int]:
    """INSERT them in one statement; the ids by key of those inserted (not of a
    message stored at the same instant by another process: it conflicts)."""
    if not arrivals:
        return {}
    when = now.astimezone(UTC)
    moment: object = when.strftime(SQLITE_TIME) if db.sqlite else when
    rows = ", ".join("(?, ?, ?, ?, ?, ?, ?, ?, ?)" for _ in arrivals)
    params: list[Any] = []
    for arrival in arrivals:
        recipients = ",".join(r.lower() for r in arrival.recipients)
        params += [arrival.dedup_key, arrival.message_id, arrival.source]
        params += [arrival.envelope_from, recipients, arrival.raw, moment, RECEIVED, ""]
    inserted = db.run(_INSERT.format(rows=rows), params)
    return {str(key): int(row_id) for row_id, key in inserted}


@contextmanager
def _connection(settings: IntakeSettings) -> Iterator[_Database]:
    """One transaction, committed if the block ends normally; the driver's errors
    become StorageUnavailable (the MTA keeps the message and retries)."""
    try:
        if settings.url.startswith("sqlite"):
            with _sqlite(settings) as db:
                yield db
        else:
            with _postgresql(settings) as db:
                yield db
    except StorageUnavailable:
        raise
    except Exception as exc:
        if not _driver_error(exc):
            raise
        raise StorageUnavailable(in_one_line(exc)) from None


def _driver_error(exc: Exception) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.split(".")[0] in ("sqlite3", "psycopg")


@contextmanager
def _sqlite(settings: IntakeSettings) -> Iterator[_Database]:
    import sqlite3
    from urllib.parse import quote

    path = sqlite_path(settings.url)
    if not Path(path).is_file():
        raise StorageUnavailable(f"no SQLite database at {path}: run `mailbot init`")
    timeout = settings.busy_timeout_seconds
    uri = f"file:{quote(path)}?mode=rw"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=FULL")  # the commit is the promise to the MTA
        connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        connection.execute("BEGIN IMMEDIATE")
        yield _Database(connection, sqlite=True)
        connection.execute("COMMIT")
    finally:
        connection.close()  # without COMMIT, the transaction is rolled back


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///PATH`` URL (relative to the working directory,
    ``sqlite:////abs/path`` absolute), as SQLAlchemy reads it."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    path = rest.split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path
    if not path or path == ":memory:":
        raise ConfigError("database.url: an in-memory SQLite database cannot hold mail")
    return path


@contextmanager
def _postgresql(settings: IntakeSettings) -> Iterator[_Database]:
    import psycopg

    from mailbot.storage.pgtext import without_nul

    conninfo = "postgresql://" + settings.url.split("://", 1)[1]
    with psycopg.connect(conninfo, connect_timeout=10) as connection:
        without_nul(connection)
        yield _Database(connection, sqlite=False)  # committed when the block ends
