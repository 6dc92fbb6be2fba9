"""``mailbot check`` through the installed command, against real servers: an
aiosmtpd relay that wants a login, Dovecot, the link pages on uvicorn, SQLite and
PostgreSQL. With everything right every check passes; each thing broken alone
gives its own FAIL line and exit 1, and no password is ever printed."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from conftest import make_settings, reserve_port
from dovecot import PASSWORD as IMAP_PASSWORD
from dovecot import USER as IMAP_USER
from dovecot import Dovecot, running_dovecot
from servers import Smarthost, relay
from webserver import running

from mailbot.adapters.web import create_app
from mailbot.service import Mailbot

MAILBOT = Path(sys.executable).parent / "mailbot"
RELAY_USER = "mailbot-relay"
RELAY_PASSWORD = "relay-password-never-shown"
DATABASE_PASSWORD = "database-password-never-shown"
LINK_PAGE_KEY = "link-page-key-never-shown"
PASSWORDS = (RELAY_PASSWORD, IMAP_PASSWORD, DATABASE_PASSWORD, LINK_PAGE_KEY)
NAMES = ("config", "database", "relay", "imap", "base_url", "addresses")


def relay_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """The relay's password check (aiosmtpd's authenticator hook)."""
    good = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (RELAY_USER, RELAY_PASSWORD)
    return AuthResult(success=good, handled=False)  # False: aiosmtpd answers 535 itself


@pytest.fixture(scope="module")
def smtp_relay() -> Iterator[Smarthost]:
    with relay(Smarthost(), authenticator=relay_login, auth_require_tls=False) as handler:
        yield handler


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture(scope="module")
def link_pages(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[str]:
    """The link pages (and their /healthz) on a real uvicorn; yields the base URL."""
    root = tmp_path_factory.mktemp("web")
    shutil.copyfile(sqlite_template, root / "mailbot.db")
    bot = Mailbot.from_settings(make_settings(root, f"sqlite:///{root / 'mailbot.db'}"))
    try:
        with running(create_app(bot)) as base_url:
            yield base_url
    finally:
        bot.engine.dispose()


@pytest.fixture
def config(smtp_relay: Smarthost, mailbox: Dovecot, link_pages: str) -> dict[str, dict[str, Any]]:
    """Settings under which every check passes, but for the database (set by each test)."""
    return {
        "bot": {"address": "changes@bot.test", "base_url": link_pages},
        "smtp": {"domains": ["agency.test"]},
        "web": {"secret_key": LINK_PAGE_KEY},
        "outgoing": {
            "transport": "smtp",
            "host": "127.0.0.1",
            "port": smtp_relay.port,
            "username": RELAY_USER,
            "password": RELAY_PASSWORD,
        },
        "imap": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": mailbox.port,
            "ssl": False,
            "username": IMAP_USER,
            "password": IMAP_PASSWORD,
        },
    }


def check(
    tmp_path: Path, config: dict[str, dict[str, Any]], *options: str
) -> subprocess.CompletedProcess[str]:
    """``mailbot --config FILE check`` with ``config`` written as TOML."""
    path = tmp_path / "mailbot.toml"
    path.write_text(toml(config))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
    return subprocess.run(
        [str(MAILBOT), "--config", str(path), "check", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def toml(config: dict[str, dict[str, Any]]) -> str:
    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, list):
            return "[" + ", ".join(value(x) for x in item) + "]"
        return repr(item) if isinstance(item, int) else f'"{item}"'

    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {value(v)}\n" for key, v in keys.items())
        for section, keys in config.items()
    )


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """Each check's name -> (status, detail), from its line ``STATUS  NAME: DETAIL``."""
    found = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        found[name] = (status, detail)
    return found


def assert_nothing_secret(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    for password in PASSWORDS:
        assert password not in output


def with_password(url: str) -> str:
    """A PostgreSQL URL carrying a password (the test cluster trusts any)."""
    return url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@")


def test_every_check_passes_against_real_servers(
    tmp_path: Path,
    database_url: str,
    config: dict[str, dict[str, Any]],
    smtp_relay: Smarthost,
) -> None:
    config["database"] = {"url": with_password(database_url)}
    result = check(tmp_path, config)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_of(result)
    assert list(checks) == list(NAMES)
    assert checks["config"] == ("ok", f"{tmp_path / 'mailbot.toml'} read")
    status, detail = checks["database"]
    assert status == "ok"
    assert "schema at head" in detail
    assert "writable" in detail
    assert checks["relay"] == (
        "ok",
        f"127.0.0.1:{smtp_relay.port}: connected, EHLO answered, AUTH as {RELAY_USER},"
        " sender accepted",
    )
    status, detail = checks["imap"]
    assert (status, detail.split(":")[0]) == ("ok", "127.0.0.1")
    assert f"as {IMAP_USER}" in detail
    assert "INBOX" in detail
    assert checks["base_url"] == ("ok", f"{config['bot']['base_url']}/healthz answered 200")
    # Links to 127.0.0.1 in mail that goes out by SMTP are worth a warning, not a failure.
    status, detail = checks["addresses"]
    assert status == "warn"
    assert "only this machine can open" in detail
    assert result.stderr == ""
    assert_nothing_secret(result)
    assert smtp_relay.received == []  # the check sends nothing


def test_a_shared_database_without_a_shared_link_page_key_is_worth_a_warning(
    tmp_path: Path,
    postgres_server: str,
    postgres_template: str,
    config: dict[str, dict[str, Any]],
) -> None:
    """On PostgreSQL, instances behind one base_url sign link-page forms each
    with a random key of their own unless [web] secret_key is set on all."""
    config["database"] = {"url": f"{postgres_server}/{postgres_template}"}
    del config["web"]
    result = check(tmp_path, config)
    assert result.returncode == 0, result.stdout + result.stderr
    status, detail = lines_of(result)["base_url"]
    assert status == "warn"
    assert "[web] secret_key is unset" in detail


def sqlite_without_schema(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    path = tmp_path / "empty.db"
    path.touch()
    return f"sqlite:///{path}"


def sqlite_behind(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database last upgraded by an older mailbot."""
    path = tmp_path / "old.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0001'")
    connection.close()
    return f"sqlite:///{path}"


def postgresql_without_schema(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("empty_postgres"))


@pytest.fixture
def empty_postgres(postgres_server: str) -> Iterator[str]:
    """A PostgreSQL database that exists but on which ``mailbot init`` never ran."""
    name = f"check_empty_{os.getpid()}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield with_password(f"{postgres_server}/{name}")
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def postgresql_read_only(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("read_only_postgres"))


@pytest.fixture
def read_only_postgres(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A database at the newest schema, reached as a role that may only read it."""
    name, role = f"check_read_only_{os.getpid()}", f"reader_{os.getpid()}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    owner = sa.create_engine(f"{postgres_server}/{name}", isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        connection.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    owner.dispose()
    try:
        yield with_password(f"{postgres_server}/{name}").replace("//postgres:", f"//{role}:")
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


Breakage = Callable[[dict[str, dict[str, Any]], pytest.FixtureRequest], None]


def database(make: Callable[[Path, pytest.FixtureRequest], str]) -> Breakage:
    def breaks(config: dict[str, dict[str, Any]], request: pytest.FixtureRequest) -> None:
        config["database"] = {"url": make(request.getfixturevalue("tmp_path"), request)}

    return breaks


def setting(section: str, key: str, value: Any) -> Breakage:
    def breaks(config: dict[str, dict[str, Any]], request: pytest.FixtureRequest) -> None:
        if callable(value):
            config[section][key] = value(request)
        else:
            config[section][key] = value

    return breaks


def addresses(address: str, domains: list[str]) -> Breakage:
    def breaks(config: dict[str, dict[str, Any]], request: pytest.FixtureRequest) -> None:
        config["bot"]["address"] = address
        config["smtp"]["domains"] = domains

    return breaks


def closed_port(request: pytest.FixtureRequest) -> int:
    return reserve_port()  # held, never listening: connections are refused


FAILURES: dict[str, tuple[Breakage, str, str, tuple[str, ...]]] = {
    "database-not-initialised-sqlite": (
        database(sqlite_without_schema),
        "database",
        "has no schema: run `mailbot init`",
        (),
    ),
    "database-not-initialised-postgresql": (
        database(postgresql_without_schema),
        "database",
        "has no schema: run `mailbot init`",
        (),
    ),
    "database-behind-head": (
        database(sqlite_behind),
        "database",
        "schema at 0001, behind",
        (),
    ),
    "database-read-only-postgresql": (
        database(postgresql_read_only),
        "database",
        "schema at head, but not writable: permission denied",
        (),
    ),
    "relay-port-closed": (
        setting("outgoing", "port", closed_port),
        "relay",
        "cannot connect: Connection refused: is the relay running?",
        (),
    ),
    "relay-silent": (
        setting("outgoing", "port", lambda r: r.getfixturevalue("silent_port")),
        "relay",
        "no answer within 1 s",
        ("--timeout", "1"),
    ),
    "relay-without-starttls": (
        setting("outgoing", "starttls", True),
        "relay",
        "the relay offers no STARTTLS",
        (),
    ),
    "relay-wrong-password": (
        setting("outgoing", "password", "not-the-relay-password"),
        "relay",
        f"AUTH as {RELAY_USER} refused (535",
        (),
    ),
    "imap-wrong-password": (
        setting("imap", "password", "not-the-imap-password"),
        "imap",
        "login refused",
        (),
    ),
    "imap-missing-folder": (
        setting("imap", "folder", "Customers"),
        "imap",
        "Customers",
        (),
    ),
    "base-url-not-answering": (
        setting("bot", "base_url", lambda r: f"http://127.0.0.1:{closed_port(r)}"),
        "base_url",
        "no answer from",
        (),
    ),
    "addresses-that-cannot-come-back": (
        addresses("changes@mailbot.localhost", ["@agency.test"]),
        "addresses",
        "[smtp] domains: '@agency.test' is not a domain name, so no recipient ever matches:"
        " write bare domains, like example.com; [bot] address changes@mailbot.localhost is"
        " in mailbot.localhost, where no one elsewhere can send replies or bounces",
        (),
    ),
}


@pytest.mark.parametrize(("breaks", "name", "says", "options"), FAILURES.values(), ids=FAILURES)
def test_each_failure_alone_gives_its_line_and_exit_1(
    tmp_path: Path,
    sqlite_template: Path,
    config: dict[str, dict[str, Any]],
    request: pytest.FixtureRequest,
    breaks: Breakage,
    name: str,
    says: str,
    options: tuple[str, ...],
) -> None:
    shutil.copyfile(sqlite_template, tmp_path / "mailbot.db")
    config["database"] = {"url": f"sqlite:///{tmp_path / 'mailbot.db'}"}
    breaks(config, request)
    result = check(tmp_path, config, *options)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = lines_of(result)
    assert list(checks) == list(NAMES)
    assert [n for n, (status, _) in checks.items() if status == "FAIL"] == [name]
    assert says in checks[name][1]
    assert_nothing_secret(result)


def test_an_invalid_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    result = check(tmp_path, {"outgoing": {"transport": "carrier-pigeon"}})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("mailbot: error: invalid configuration in ")
    assert "outgoing.transport" in result.stderr


def test_a_maildir_is_checked_instead_of_a_relay(
    tmp_path: Path, sqlite_template: Path, config: dict[str, dict[str, Any]]
) -> None:
    shutil.copyfile(sqlite_template, tmp_path / "mailbot.db")
    config["database"] = {"url": f"sqlite:///{tmp_path / 'mailbot.db'}"}
    (tmp_path / "sent" / "tmp").mkdir(parents=True)
    config["outgoing"] = {"transport": "maildir", "maildir": str(tmp_path / "sent")}
    result = check(tmp_path, config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines_of(result)["maildir"] == ("ok", f"{tmp_path / 'sent'} writable")
    assert list((tmp_path / "sent" / "tmp").iterdir()) == []  # the probe file is gone
    config["outgoing"]["maildir"] = str(tmp_path / "mailbot.db" / "sent")
    result = check(tmp_path, config)
    assert result.returncode == 1
    status, detail = lines_of(result)["maildir"]
    assert (status, detail) == (
        "FAIL",
        f"{tmp_path / 'mailbot.db'} is not a directory: check [outgoing] maildir",
    )
