"""Fixtures: real databases (SQLite files and a throwaway PostgreSQL cluster), settings,
a bot with a frozen clock, and factories for contacts, services and mail.

Every test that takes ``bot`` (or ``database_url``) runs once on SQLite and once
on PostgreSQL. Without PostgreSQL binaries the PostgreSQL runs skip, except
under ``CI=true``, where a missing server fails the run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from factories import AUTHSERV_ID, MailFactory, seed_world

from mailbot.clock import FixedClock
from mailbot.config import DatabaseSettings, Settings
from mailbot.service import Mailbot
from mailbot.storage import engine as db

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir on a free port, for this test session only."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL binaries not found, and CI=true requires them")
        pytest.skip("PostgreSQL binaries not found")
    root = Path(tempfile.mkdtemp(prefix="mailbot-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    data = root / "data"
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "30",
                "-o",
                options,
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_template(postgres_server: str) -> str:
    """A database migrated once; each test copies it, which is much faster than migrating."""
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE mailbot_template")
    admin.dispose()
    engine = db.make_engine(DatabaseSettings(url=f"{postgres_server}/mailbot_template"))
    db.upgrade(engine)
    engine.dispose()
    return "mailbot_template"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mailbot.db"
    engine = db.make_engine(DatabaseSettings(url=f"sqlite:///{path}"))
    db.upgrade(engine)
    engine.dispose()  # the last connection to close folds the WAL into the file
    return path


_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, empty database of each kind."""
    if request.param == "sqlite":
        target = tmp_path / "mailbot.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite:///{target}"
        return
    server = request.getfixturevalue("postgres_server")
    template = request.getfixturevalue("postgres_template")
    name = f"test_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def make_settings(tmp_path: Path, database_url: str, **sections: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "bot": {"address": "changes@bot.test", "base_url": "https://bot.test"},
        "database": {"url": database_url},
        "smtp": {"authserv_id": AUTHSERV_ID},
        "outgoing": {"transport": "maildir", "maildir": str(tmp_path / "sent")},
        "policy": {"operators": ["ops@agency.test"]},
    }
    for section, overrides in sections.items():
        values[section] = {**values.get(section, {}), **overrides}
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def bot(settings: Settings, clock: FixedClock) -> Iterator[Mailbot]:
    """A Mailbot on a fresh database, its clock frozen at START."""
    mailbot = Mailbot.from_settings(settings, clock)
    yield mailbot
    mailbot.engine.dispose()


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Mailbot]:
    """A bot with the standard world and the real clock, on free ports, ready to be
    ``running`` (modules that need other settings define their own)."""
    settings = make_settings(
        tmp_path, database_url, smtp={"port": free_port()}, web={"port": free_port()}
    )
    mailbot = Mailbot.from_settings(settings)
    seed_world(mailbot)
    yield mailbot
    mailbot.engine.dispose()


@pytest.fixture
def world(bot: Mailbot) -> dict[str, Any]:
    """The standard contacts and services (see factories.seed_world)."""
    return seed_world(bot)


@pytest.fixture
def mail() -> MailFactory:
    return MailFactory()
