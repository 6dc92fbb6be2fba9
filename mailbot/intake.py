"""The pipe's fast way in: a received message stored durably, as the SMTP
listener stores it, by the standard library and the database driver alone.

``mailbot process --store-only`` runs once per message under an MTA, so it
cannot afford to import the application (SQLAlchemy, pydantic: about a second
of CPU). It reads the few keys it needs from the configuration, commits the
raw message into ``inbound_message`` with the service's own dedup key (so a
message delivered twice, by any route, is stored once) and leaves acting on
it to ``mailbot serve``, whose rescuer picks up stored mail within seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailbot import configfile, mailkeys, migrations
from mailbot.errors import ConfigError, StorageUnavailable

RECEIVED = "received"
"""``InboundStatus.RECEIVED``: stored, not yet acted on."""
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
"""How the service's tables store a UTC time in SQLite."""

_INSERT = (
    "INSERT INTO inbound_message (dedup_key, message_id, source, envelope_from, recipients,"
    " raw, received_at, status, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (dedup_key) DO NOTHING RETURNING id"
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


def store(
    settings: IntakeSettings,
    raw: bytes,
    recipients: Sequence[str] = (),
    envelope_from: str | None = None,
    source: str = "cli",
) -> Stored:
    """Commit the raw message once; StorageUnavailable if the database cannot take it."""
    message_id = mailkeys.message_id(raw)
    key = mailkeys.dedup_key(raw, message_id)
    row = (key, message_id, source, envelope_from, ",".join(r.lower() for r in recipients), raw)
    with _connection(settings) as db:
        _check_schema(db)
        found = _stored_before(db, key, mailkeys.legacy_keys(raw, message_id))
        if found is not None:
            return Stored(found, True)
        return _insert(db, row)


class _Database:
    """A DB-API connection and how its placeholders and times are written."""

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

    def now(self) -> object:
        moment = datetime.now(UTC)
        return moment.strftime(SQLITE_TIME) if self.sqlite else moment


def _check_schema(db: _Database) -> None:
    head = migrations.head()
    try:
        rows = db.run("SELECT version_num FROM alembic_version")
    except Exception as exc:  # no such table: never initialised
        reason = f"the database has no schema ({_first_line(exc)}): run `mailbot init`"
        raise StorageUnavailable(reason) from None
    current = rows[0][0] if rows else None
    if head is not None and current != head:
        state = "has no schema" if current is None else f"is at {current}, not {head}"
        raise StorageUnavailable(f"the database {state}: run `mailbot init`")


def _stored_before(db: _Database, key: str, legacy: tuple[str, ...]) -> int | None:
    """The id of this message's row, if stored already (by any route or version)."""
    rows = db.run("SELECT id FROM inbound_message WHERE dedup_key = ?", (key,))
    if rows:
        return int(rows[0][0])
    for old in legacy:
        for row_id, raw in db.run(
            "SELECT id, raw FROM inbound_message WHERE dedup_key = ?", (old,)
        ):
            content = bytes(raw)
            if mailkeys.dedup_key(content, mailkeys.message_id(content)) == key:
                return int(row_id)
    return None


def _insert(db: _Database, row: tuple[Any, ...]) -> Stored:
    """INSERT, or nothing if the same message was stored at the same instant."""
    inserted = db.run(_INSERT, [*row, db.now(), RECEIVED, ""])
    if inserted:
        return Stored(int(inserted[0][0]), False)
    existing = db.run("SELECT id FROM inbound_message WHERE dedup_key = ?", (row[0],))
    return Stored(int(existing[0][0]), True)


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
        raise StorageUnavailable(_first_line(exc)) from None


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

    conninfo = "postgresql://" + settings.url.split("://", 1)[1]
    with psycopg.connect(conninfo, connect_timeout=10) as connection:
        yield _Database(connection, sqlite=False)  # committed when the block ends


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
