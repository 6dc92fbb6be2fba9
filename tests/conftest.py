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
from collections.abc import Callable, Iterator
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


_reserved: list[socket.socket] = []


def reserve_port() -> int:
    """A loopback port that stays ours until the end of the test, for a server told
    its port in advance (a settings file, a subprocess, ``base_url``).

    The port is bound (not listening) with SO_REUSEADDR and held: the kernel
    never hands it to another process's bind to port 0, while our own server,
    which binds with SO_REUSEADDR too (asyncio, uvicorn, PostgreSQL, Dovecot
    and ``mailbot serve`` all do), takes it over. No "close it and hope"
    window; until a server listens there, connecting to it is refused.
    """
    sock = held_port()
    _reserved.append(sock)
    return int(sock.getsockname()[1])


def held_port() -> socket.socket:
    """The socket that holds a reserved port (see reserve_port), for a server that
    outlives one test and may be restarted: close it when the server is gone."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


free_port = reserve_port
"""The former name, for modules that still use it: the same reservation."""


@pytest.fixture(autouse=True)
def _release_reserved_ports() -> Iterator[None]:
    """Ports reserved during a test are released when it ends (a session server's
    own listening socket holds its port by then)."""
    yield
    while _reserved:
        _reserved.pop().close()


def address_in_use(output: str) -> bool:
    """Whether a server's output says it could not bind its port (EADDRINUSE)."""
    return "in use" in output.lower()


def on_a_free_port(start: Callable[[int], str | None], attempts: int = 5) -> int:
    """Start a server process on a reserved port, and on another one if it says
    the address is in use; ``start(port)`` returns None once the server listens,
    or its failure output. Returns the port it listens on."""
    failure = ""
    for _ in range(attempts):
        port = reserve_port()
        failure = start(port) or ""
        if not failure:
            return port
        if not address_in_use(failure):
            break
    raise RuntimeError(f"the server did not start: {failure[-2000:]}")


def pg_start(bindir: Path, data: Path, log: Path, options: str) -> str | None:
    """``pg_ctl start`` (waiting for the server to accept connections, however slow
    the machine); None once it runs, else what the server logged."""
    logged = log.stat().st_size if log.exists() else 0
    command = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "600"]
    result = subprocess.run(
        as_postgres([*command, "-o", options, "start"]), capture_output=True, check=False
    )
    if result.returncode == 0:
        return None
    with log.open("rb") as text:
        text.seek(logged)
        return (result.stdout + result.stderr + text.read()).decode(errors="replace")


CORPUS = Path(
    os.environ.get("MAILBOT_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
)
"""The shared corpus of real-world mail: ``$MAILBOT_CORPUS``, else ``../shared/corpus``
beside the repository (where CI puts it)."""


def has_corpus() -> bool:
    return (CORPUS / "manifest.tsv").is_file()


def require_corpus() -> None:
    """Skip without the corpus; under ``CI=true``, where it must be, fail instead."""
    if has_corpus():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"no corpus at {CORPUS} (manifest.tsv), and CI=true requires it")
    pytest.skip(f"no corpus at {CORPUS}: set MAILBOT_CORPUS or put it at ../shared/corpus")


def pg_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir on a free port, for this test session only."""
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL binaries not found, and CI=true requires them")
        pytest.skip("PostgreSQL binaries not found")
    root = Path(tempfile.mkdtemp(prefix="mailbot-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run(
        as_postgres(
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

    def start(port: int) -> str | None:
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        return pg_start(bindir, data, root / "log", options)

    port = on_a_free_port(start)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
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
        tmp_path, database_url, smtp={"port": reserve_port()}, web={"port": reserve_port()}
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
