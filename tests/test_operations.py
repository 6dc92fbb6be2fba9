"""What operators see: ``/healthz`` when mail cannot be taken, one-line errors for a
database path that cannot exist, the outbox and inbound commands, and a log
that is not flooded by the scheduler."""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, make_settings
from factories import ALICE, BOB, CAROL, STRANGER, WORLD, MailFactory
from servers import running, wait_for
from test_entrypoint import mailbot

from mailbot.cli import main
from mailbot.service import Mailbot


def health(bot: Mailbot) -> tuple[int, str]:
    url = f"http://127.0.0.1:{bot.settings.web.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def make_bot(tmp_path: Path, database_url: str) -> Iterator[Any]:
    made: list[Mailbot] = []

    def make(**sections: dict[str, Any]) -> Mailbot:
        ports = {"smtp": {"port": free_port()}, "web": {"port": free_port()}}
        bot = Mailbot.from_settings(make_settings(tmp_path, database_url, **ports, **sections))
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.engine.dispose()


def test_healthz_says_200_when_mail_can_be_taken(make_bot: Any) -> None:
    bot = make_bot()
    with running(bot):
        assert health(bot) == (200, "ok\n")


def test_healthz_says_503_when_the_disk_is_almost_full(make_bot: Any) -> None:
    bot = make_bot(database={"min_free_bytes": 2**62})  # more than any disk has free
    with running(bot):
        code, text = health(bot)
    assert code == 503
    assert "bytes" not in text  # the reason is logged, not told to the client


def test_healthz_says_503_when_the_maildir_cannot_be_written(make_bot: Any, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    bot = make_bot(outgoing={"maildir": str(tmp_path / "a-file" / "sent")})
    with running(bot):
        assert health(bot)[0] == 503


def test_a_busy_outbox_does_not_flood_the_log_with_skipped_jobs(
    make_bot: Any, mail: MailFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bot = make_bot()
    caplog.set_level(logging.INFO)
    with running(bot):
        with smtplib.SMTP("127.0.0.1", bot.settings.smtp.port, timeout=10) as client:
            for n in range(40):  # each commit asks the sender to flush
                sender = f"person{n}@many.test"
                client.sendmail(sender, [bot.settings.bot.address], mail(sender, "HELP"))
        maildir = bot.settings.outgoing.maildir / "new"
        wait_for(lambda: maildir.is_dir() and len(list(maildir.iterdir())) == 40, timeout=60)
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- the installed command ----------------------------------------------------------


@pytest.mark.parametrize("command", ["init", "serve"])
def test_a_sqlite_path_that_cannot_be_created_is_a_one_line_error(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    database = tmp_path / "blocker" / "db" / "mailbot.db"
    (tmp_path / "mailbot.toml").write_text(
        f'[database]\nurl = "sqlite:///{database}"\n'
        f"[smtp]\nport = {free_port()}\n[web]\nport = {free_port()}\n"
    )
    result = mailbot(tmp_path, command)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mailbot: error: cannot create the directory")
    assert str(database) in lines[0]


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


class Cli:
    """The ``mailbot`` command in-process, on one configuration, as test_cli runs it."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any):
        self.config = config
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Result:
        if stdin:
            message = self.config.parent / "message.eml"
            message.write_bytes(stdin)
            args = (*args, str(message))
        with self.monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            try:
                code = main(["--config", str(self.config), *args])
            except SystemExit as exit_:  # argparse: usage errors and --help
                code = int(exit_.code or 0)
        out, err = self.capsys.readouterr()
        return Result(code, out.encode(), err.encode())


@pytest.fixture
def cli(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> Cli:
    """A configured, initialised database with the standard world, mail to a Maildir."""
    config = tmp_path / "mailbot.toml"
    config.write_text(
        f'[bot]\naddress = "changes@bot.test"\n[database]\nurl = "{database_url}"\n'
        f'[outgoing]\nmaildir = "{tmp_path / "sent"}"\n'
    )
    (tmp_path / "world.json").write_text(json.dumps(WORLD))
    run = Cli(config, capsys, monkeypatch)
    assert run("init").returncode == 0
    assert run("import", str(tmp_path / "world.json")).returncode == 0
    return run


def outbox_list(cli: Cli) -> list[dict[str, Any]]:
    result = cli("outbox", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_outbox_retry_queues_dead_mail_again_and_sends_it(cli: Cli) -> None:
    relay_down = {"MAILBOT_OUTGOING__TRANSPORT": "smtp", "MAILBOT_OUTGOING__PORT": str(free_port())}
    refused = {**relay_down, "MAILBOT_OUTGOING__MAX_ATTEMPTS": "1"}
    raw = MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}", to="changes@bot.test")
    assert cli("process", stdin=raw, env=refused).returncode == 0
    dead = [m for m in outbox_list(cli) if m["status"] == "dead"]
    assert len(dead) == 3
    one = dead[0]["id"]
    result = cli("outbox", "retry", str(one))
    assert result.returncode == 0, result.stderr
    assert f"{one}: " in result.stdout.decode()
    statuses = {m["id"]: m["status"] for m in outbox_list(cli)}
    assert statuses[one] == "sent"
    assert sorted(statuses.values()) == ["dead", "dead", "sent"]
    result = cli("outbox", "retry", "--dead", "--no-flush")
    assert result.returncode == 0
    assert {m["status"] for m in outbox_list(cli)} == {"queued", "sent"}
    assert cli("outbox", "flush").stdout.startswith(b"sent 2")
    assert len(list((cli.config.parent / "sent" / "new").iterdir())) == 3


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("999999",), 1, "no mail 999999 in the outbox"),
        ((), 2, "give one mail's ID or --dead"),
        (("1", "--dead"), 2, "give one mail's ID or --dead"),
        (("x",), 2, "not a whole number"),
        (("2147483648",), 2, "too large"),
    ],
)
def test_outbox_retry_refuses_what_it_cannot_do_in_one_line(
    cli: Cli, args: tuple[str, ...], status: int, message: str
) -> None:
    result = cli("outbox", "retry", *args)
    assert result.returncode == status
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


def test_outbox_retry_of_mail_that_is_not_dead_says_so(cli: Cli) -> None:
    raw = MailFactory()(BOB, "HELP", to="changes@bot.test")
    assert cli("process", stdin=raw).returncode == 0
    (sent,) = outbox_list(cli)
    result = cli("outbox", "retry", str(sent["id"]))
    assert result.returncode == 1
    assert result.stderr.decode().strip().endswith("is sent, not dead")


def test_outbox_commands_have_help_with_an_example(cli: Cli) -> None:
    for action in ("retry", "flush"):
        result = cli("outbox", action, "--help")
        assert result.returncode == 0
        assert b"example: mailbot outbox " in result.stdout
    assert b"--all" in cli("outbox", "flush", "--help").stdout
    assert b"--dead" in cli("outbox", "retry", "--help").stdout


def test_outbox_flush_all_sends_mail_waiting_out_a_retry_delay(cli: Cli) -> None:
    relay_down = {"MAILBOT_OUTGOING__TRANSPORT": "smtp", "MAILBOT_OUTGOING__PORT": str(free_port())}
    raw = MailFactory()(STRANGER, "HELP", to="changes@bot.test")
    assert cli("process", stdin=raw, env=relay_down).returncode == 0
    assert [m["status"] for m in outbox_list(cli)] == ["queued"]
    assert cli("outbox", "flush").stdout.startswith(b"sent 0")  # not due yet
    assert cli("outbox", "flush", "--all").stdout.startswith(b"sent 1")


def test_inbound_list_shows_the_backlog_and_the_counts(cli: Cli) -> None:
    raw = MailFactory()(BOB, "HELP", to="changes@bot.test")
    assert cli("process", stdin=raw).returncode == 0
    listed = json.loads(cli("inbound", "list", "--json").stdout)
    assert [(m["status"], m["outcome"].startswith("help")) for m in listed] == [("processed", True)]
    backlog = cli("inbound", "list", "--status", "received", "--json")
    assert json.loads(backlog.stdout) == []
    text = cli("inbound", "list").stdout.decode()
    assert text.splitlines()[-1] == "stored: 0 received, 1 processed, 0 ignored, 0 failed"
    assert b"example: mailbot inbound list" in cli("inbound", "list", "--help").stdout
