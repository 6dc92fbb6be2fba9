"""The CLI as operators and MTAs use it: exit codes, one-line errors, pinned JSON."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from conftest import free_port
from factories import ALICE, BOB, CAROL, STRANGER, WORLD, MailFactory

from mailbot.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "mailbot.toml"
    path.write_text(
        f'[bot]\naddress = "changes@bot.test"\nbase_url = "https://bot.test"\n'
        f'[database]\nurl = "{database_url}"\n'
        f'[outgoing]\nmaildir = "{tmp_path / "sent"}"\n'
    )
    return path


@pytest.fixture
def run(config_file: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*args: str) -> Result:
        code = main(["--config", str(config_file), *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def ready(run: Run, tmp_path: Path) -> Run:
    """A database initialised and loaded with the standard world."""
    assert run("init").code == 0
    data = tmp_path / "world.json"
    data.write_text(json.dumps(WORLD))
    assert run("import", str(data)).code == 0
    return run


def test_init_is_repeatable(run: Run) -> None:
    assert run("init").code == 0
    assert run("init").code == 0


def test_commands_refuse_a_database_without_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fresh.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/fresh.db"\n')
    assert main(["--config", str(path), "requests", "list"]) == 1
    err = capsys.readouterr().err
    assert "mailbot init" in err
    assert "Traceback" not in err
    assert main(["--config", str(path), "init"]) == 0
    assert main(["--config", str(path), "requests", "list"]) == 0


def test_import_reports_and_is_idempotent(ready: Run, tmp_path: Path) -> None:
    result = ready("import", str(tmp_path / "world.json"))
    assert result.out.strip() == "contacts: 0 created, 0 updated; services: 0 created, 0 updated"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("import", "/nonexistent.json"), 1, "cannot read"),
        (("requests", "show", "CR-NOPE0000"), 1, "no request CR-NOPE0000"),
        (("services", "show", "nosuch.example"), 1, "no service nosuch.example"),
        (("process", "/nonexistent.eml"), 2, "cannot read"),
    ],
)
def test_user_errors_are_one_line_and_non_zero(
    ready: Run, args: tuple[str, ...], code: int, message: str
) -> None:
    result = ready(*args)
    assert result.code == code
    assert result.err.startswith("mailbot: error: ")
    assert message in result.err
    assert result.err.count("\n") == 1


def test_a_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[bot]\nlanguage = "de"\n')
    assert main(["--config", str(path), "init"]) == 2
    assert "bot.language" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["requests", "frobnicate"], ["frobnicate"], ["requests", "show"], ["sweep", "--x"]]
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error:" in err
    assert "--help" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["outbox", "retry", "99999999999999999999"],
        ["outbox", "retry", "2147483648"],
        ["outbox", "list", "--sent", "99999999999999999999"],
        ["inbound", "list", "--limit", "99999999999999999999"],
    ],
)
def test_a_number_no_table_holds_is_a_usage_error(
    ready: Run, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Not an overflow inside a query ("internal error" before, on both
    databases): one line naming the argument, exit 2."""
    with pytest.raises(SystemExit) as stopped:
        ready(*argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "too large" in err
    largest = ready("outbox", "retry", "2147483647")  # the largest id is looked up
    assert (largest.code, largest.err) == (1, "mailbot: error: no mail 2147483647 in the outbox\n")


def test_process_says_tempfail_when_the_database_is_unusable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "db").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/db"\n')  # a directory, not a file
    message = tmp_path / "m.eml"
    message.write_bytes(MailFactory()(ALICE, "HELP"))
    assert main(["--config", str(path), "process", str(message)]) == 75


def help_of(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def listed(help_text: str) -> list[str]:
    """The commands or actions a help text lists (four spaces in, then the name)."""
    return re.findall(r"^    ([a-z]+)(?:\s{2,}|$)", help_text, re.MULTILINE)


def test_every_command_is_documented_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    commands = listed(help_of(capsys))
    assert {"init", "process", "requests", "outbox", "serve"} <= set(commands)
    for name in commands:
        actions = listed(help_of(capsys, name)) or [None]
        for action in actions:
            leaf = [name, action] if action else [name]
            assert "example: mailbot" in help_of(capsys, *leaf), f"{leaf} has no example"


def process(run: Run, tmp_path: Path, raw: bytes) -> Result:
    path = tmp_path / "in.eml"
    path.write_bytes(raw)
    result = run("process", str(path))
    assert result.code == 0, result.err
    return result


def sent_mails(tmp_path: Path) -> list[Any]:
    import email
    from email import policy

    new = tmp_path / "sent" / "new"
    return (
        [
            email.message_from_bytes(p.read_bytes(), policy=policy.default)
            for p in sorted(new.iterdir(), key=lambda p: p.name)
        ]
        if new.exists()
        else []
    )


def flush(run: Run, tmp_path: Path, seen: int) -> list[Any]:
    assert run("outbox", "flush").code == 0
    return sent_mails(tmp_path)[seen:]


def test_the_reviewers_scenario(ready: Run, tmp_path: Path) -> None:
    mail = MailFactory()
    process(ready, tmp_path, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}\n"))
    mails = flush(ready, tmp_path, 0)
    assert sorted((m["X-Mailbot-Event"], m["To"].addresses[0].addr_spec) for m in mails) == [
        ("request-opened", ALICE),
        ("validation-requested", ALICE),
        ("validation-requested", CAROL),
    ]
    request_id = mails[0]["X-Mailbot-Request"]
    listed = ready("requests", "list", "--json").json()
    assert [r["id"] for r in listed] == [request_id]
    text = ready("requests", "show", request_id).out
    assert f"{request_id}  example.com  pending" in text
    assert "closed" not in text  # an open request has no closing date to show
    shown = ready("requests", "show", request_id, "--json").json()
    assert {k: shown[k] for k in ("id", "service", "status")} == {
        "id": request_id,
        "service": "example.com",
        "status": "pending",
    }
    assert shown["changes"] == [{"role": "tech", "from": BOB, "to": CAROL}]
    assert [(v["email"], v["side"], v["status"], v["delivery"]) for v in shown["validations"]] == [
        (ALICE, "current", "pending", "sent"),
        (CAROL, "new", "pending", "sent"),
    ]
    assert shown["created_at"]
    assert shown["expires_at"]
    assert shown["closed_at"] is None

    import re

    tokens = {
        m["To"].addresses[0].addr_spec: re.search(
            r"[0-9A-Z]{4}(-[0-9A-Z]{4}){4}", m.get_body(("plain",)).get_content()
        ).group(0)
        for m in mails
        if m["X-Mailbot-Event"] == "validation-requested"
    }
    assert tokens[ALICE] != tokens[CAROL]
    accept = mail(ALICE, "ok", "ACCEPT " + tokens[ALICE].lower().replace("-", " "))
    process(ready, tmp_path, accept)
    mails = flush(ready, tmp_path, 3)
    assert [(m["X-Mailbot-Event"], m["To"].addresses[0].addr_spec) for m in mails] == [
        ("validation-recorded", ALICE)
    ]
    assert process(ready, tmp_path, accept).out.startswith("duplicate")
    assert flush(ready, tmp_path, 4) == []

    process(ready, tmp_path, mail(CAROL, "Re: validation", f"ACCEPTER {tokens[CAROL]}"))
    mails = flush(ready, tmp_path, 4)
    assert sorted((m["X-Mailbot-Event"], m["To"].addresses[0].addr_spec) for m in mails) == [
        ("request-done", ALICE),
        ("request-done", BOB),
        ("request-done", CAROL),
    ]
    shown = ready("requests", "show", request_id, "--json").json()
    assert shown["status"] == "done"
    assert shown["closed_at"]
    assert [v["channel"] for v in shown["validations"]] == ["email", "email"]
    service = ready("services", "show", "example.com", "--json").json()
    assert (service["name"], service["admin"], service["tech"], service["billing"]) == (
        "example.com",
        ALICE,
        CAROL,
        "bill@example.com",
    )

    process(ready, tmp_path, mail(CAROL, "again", f"ACCEPT {tokens[CAROL]}"))
    (error,) = flush(ready, tmp_path, 7)
    assert error["X-Mailbot-Error"] == "token-used"


def test_list_filters_by_status_and_shows_text(ready: Run, tmp_path: Path) -> None:
    process(ready, tmp_path, MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    assert len(ready("requests", "list", "--status", "pending", "--json").json()) == 1
    assert ready("requests", "list", "--status", "done", "--json").json() == []
    text = ready("requests", "list").out
    assert "pending" in text
    assert "example.com" in text
    assert "example.com" in ready("services", "show", "example.com").out


def test_the_lifecycle_through_the_cli(ready: Run, tmp_path: Path) -> None:
    """Reminders and expiry with ``sweep --now``; cancel and resend by an operator."""
    mail = MailFactory()
    process(ready, tmp_path, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    (request,) = ready("requests", "list", "--json").json()
    opened = datetime.fromisoformat(request["created_at"])
    assert ready("outbox", "flush").code == 0
    seen = len(sent_mails(tmp_path))

    def sweep_at(days: float) -> list[Any]:
        """The mails one sweep sent (it sends what it queued)."""
        before = len(sent_mails(tmp_path))
        result = ready("sweep", "--now", (opened + timedelta(days=days)).isoformat())
        assert result.code == 0, result.err
        return sent_mails(tmp_path)[before:]

    assert sweep_at(2) == []
    assert sorted(m["To"].addresses[0].addr_spec for m in sweep_at(3)) == [ALICE, CAROL]
    assert sweep_at(3.5) == []
    assert ready("requests", "resend", request["id"]).code == 0
    assert ready("requests", "resend", request["id"]).code == 1  # once an hour
    expired = sweep_at(14)  # sends the resent token mails too, queued just before
    assert sorted(m["X-Mailbot-Event"] for m in expired) == (
        ["request-expired"] * 2 + ["validation-requested"] * 2
    )
    assert ready("sweep", "--no-flush").code == 0
    shown = ready("requests", "show", request["id"], "--json").json()
    assert shown["status"] == "expired"
    assert "reminder-sent" in [e["kind"] for e in shown["events"]]
    assert len(sent_mails(tmp_path)) > seen
    result = ready("requests", "cancel", request["id"])
    assert result.code == 1
    assert "request-closed" in result.err
    assert ready("sweep", "--now", "yesterday").code == 2
    assert ready("requests", "cancel", "CR-NOPE0000").code == 1


def test_list_filters_by_service_and_contact(ready: Run, tmp_path: Path) -> None:
    process(ready, tmp_path, MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}"))

    def ids(*args: str) -> list[str]:
        return [r["id"] for r in ready("requests", "list", "--json", *args).json()]

    (request_id,) = ids()
    assert ids("--service", "example.com") == [request_id]
    assert ids("--service", "unpaid.example") == []
    assert ids("--contact", CAROL) == [request_id]  # must validate
    assert ids("--contact", ALICE) == [request_id]  # opened it
    assert ids("--contact", BOB) == []  # only informed


def test_outbox_list_shows_sent_and_dead_mail_with_the_last_error(
    ready: Run, tmp_path: Path, config_file: Path
) -> None:
    process(ready, tmp_path, MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    listed = ready("outbox", "list", "--json").json()
    assert sorted(m["event"] for m in listed) == [
        "request-opened",
        "validation-requested",
        "validation-requested",
    ]
    assert {m["status"] for m in listed} == {"sent"}
    # A smarthost that refuses everything: the next mails die, with their reason kept.
    config_file.write_text(
        config_file.read_text().replace(
            "[outgoing]\n",
            f'[outgoing]\ntransport = "smtp"\nport = {free_port()}\nmax_attempts = 1\n',
        )
    )
    process(ready, tmp_path, MailFactory()(STRANGER, "Hello", "who are you?"))
    dead = [m for m in ready("outbox", "list", "--json").json() if m["status"] == "dead"]
    assert [(m["event"], m["to"]) for m in dead] == [("error", STRANGER)]
    assert dead[0]["last_error"]
    text = ready("outbox", "list").out
    assert "dead" in text
    assert "last error" in text


def test_init_upgrades_a_database_of_the_previous_version(
    ready: Run, tmp_path: Path, database_url: str
) -> None:
    """A database left at the schema before rate limits moved into it keeps its
    requests through ``mailbot init``, and the limits hold afterwards."""
    process(ready, tmp_path, MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    (request,) = ready("requests", "list", "--json").json()
    engine = sa.create_engine(database_url)
    try:
        with as_file(files("mailbot.migrations")) as migrations:
            config = AlembicConfig()
            config.set_main_option("script_location", str(migrations))
            config.set_main_option("sqlalchemy.url", database_url)
            config.attributes["engine"] = engine
            alembic_command.downgrade(config, "0006")
    finally:
        engine.dispose()
    behind = ready("requests", "list")
    assert (behind.code, "mailbot init" in behind.err) == (1, True)

    upgraded = ready("init")
    assert upgraded.code == 0
    assert "schema revision 0009" in upgraded.out
    assert ready("requests", "show", request["id"], "--json").json()["id"] == request["id"]
    assert ready("requests", "resend", request["id"]).code == 0
    assert ready("requests", "resend", request["id"]).code == 1  # once an hour


def test_init_by_a_role_that_may_not_create_tables_says_so(
    tmp_path: Path, postgres_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL 15 and later let only a database's owner create tables in its
    public schema: a common first-deployment mistake, answered in one line."""
    name, role = f"unowned_{os.getpid()}", "mailbot_no_create"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
        connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    owner = sa.create_engine(f"{postgres_server}/{name}", isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:  # as PostgreSQL 15 does, whatever this server's version
        connection.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    owner.dispose()
    config = tmp_path / "mailbot.toml"
    url = sa.make_url(f"{postgres_server}/{name}").set(username=role)
    config.write_text(f'[database]\nurl = "{url.render_as_string(hide_password=False)}"\n')
    try:
        assert main(["--config", str(config), "init"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mailbot: error: the database refused the schema: permission denied")
        assert "allowed to create tables" in err
        assert len(err.splitlines()) == 1
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()
