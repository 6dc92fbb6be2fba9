"""The installed ``mailbot`` command, run as a separate process as an MTA would."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from conftest import address_in_use, reserve_port
from factories import ALICE, CAROL, WORLD, MailFactory
from servers import wait_for

MAILBOT = Path(sys.executable).parent / "mailbot"


def mailbot(
    cwd: Path,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    environment = {**clean_environment(), **(env or {})}
    return subprocess.run(
        [str(MAILBOT), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with no config: mailbot runs on its built-in defaults there."""
    return tmp_path_factory.mktemp("defaults")


def test_the_command_is_installed_and_documented(workdir: Path) -> None:
    result = mailbot(workdir, "--help")
    assert result.returncode == 0
    for command in ("init", "import", "process", "requests", "services", "outbox", "demo"):
        assert command.encode() in result.stdout


def test_a_request_through_the_installed_command_on_defaults(workdir: Path) -> None:
    assert mailbot(workdir, "init").returncode == 0
    assert (workdir / "var" / "mailbot.db").is_file()
    (workdir / "world.json").write_text(json.dumps(WORLD))
    assert mailbot(workdir, "import", "world.json").returncode == 0
    raw = MailFactory()(
        ALICE, "CHANGE example.com", f"tech: {CAROL}", to="changes@mailbot.localhost"
    )
    result = mailbot(workdir, "process", "--recipient", "changes@mailbot.localhost", stdin=raw)
    assert result.returncode == 0, result.stderr
    assert b"opened" in result.stdout
    # What `process` queues is sent at once, into the default Maildir.
    assert len(list((workdir / "var" / "sent" / "new").iterdir())) == 3
    assert mailbot(workdir, "outbox", "flush").stdout.startswith(b"sent 0")
    listed = json.loads(mailbot(workdir, "requests", "list", "--json").stdout)
    assert [r["status"] for r in listed] == ["pending"]


def test_a_listing_read_by_a_reader_that_stops_early_ends_quietly(workdir: Path) -> None:
    """``mailbot requests list --json | head -1``: no traceback when the pipe closes."""
    assert mailbot(workdir, "init").returncode == 0
    with Popen(
        [str(MAILBOT), "requests", "list", "--json"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environment(),
    ) as reader_gone:
        assert reader_gone.stdout is not None
        assert reader_gone.stderr is not None
        reader_gone.stdout.close()  # before anything is written
        errors = reader_gone.stderr.read()
        status = reader_gone.wait(60)
    assert status == 128 + signal.SIGPIPE
    assert errors == b""


def test_environment_overrides_reach_the_command(workdir: Path, tmp_path: Path) -> None:
    result = mailbot(workdir, "init", env={"MAILBOT_DATABASE__URL": f"sqlite:///{tmp_path}/o.db"})
    assert result.returncode == 0
    assert (tmp_path / "o.db").is_file()
    bad = mailbot(workdir, "init", env={"MAILBOT_BOT__LANGUAGE": "klingon"})
    assert bad.returncode == 2
    assert b"bot.language" in bad.stderr
    assert b"Traceback" not in bad.stderr


def initialised(workdir: Path, template: Path) -> Path:
    """``workdir`` with a migrated database where ``mailbot init`` makes it on the
    defaults (var/mailbot.db), copied from the session's template: for tests that
    start from an initialised database (``init`` itself is tested above), without
    another start of the command."""
    (workdir / "var").mkdir(exist_ok=True)
    shutil.copyfile(template, workdir / "var" / "mailbot.db")
    return workdir


def test_process_without_a_database_asks_the_mta_to_retry(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "mailbot.db").mkdir()  # unusable: a directory
    result = mailbot(tmp_path, "process", stdin=MailFactory()(ALICE, "HELP"))
    assert result.returncode == 75
    assert b"Traceback" not in result.stderr


def start_serve(workdir: Path, log: Path, ports: dict[str, int], **popen: Any) -> Popen[bytes]:
    """``mailbot serve`` in ``workdir``, whose mailbot.toml has ``[smtp] port`` and
    ``[web] port`` lines, once both ports listen; its output goes to ``log``.

    Should another program hold a port (the server exits with "cannot listen"),
    mailbot.toml gets two newly reserved ports and the server starts again;
    ``ports`` ("smtp", "web") always names the ones it listens on.
    """
    for _ in range(5):
        with log.open("wb") as output:
            server = subprocess.Popen(
                [str(MAILBOT), "serve"],
                cwd=workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=popen.pop("env", clean_environment()),
                **popen,
            )
        wait_for(functools.partial(settled, server, ports))
        if server.poll() is None:
            return server
        if not address_in_use(log.read_text(errors="replace")):
            raise AssertionError(log.read_text(errors="replace"))
        ports.update(smtp=reserve_port(), web=reserve_port())
        config = workdir / "mailbot.toml"
        text = re.sub(r"(\[smtp\]\nport = )\d+", rf"\g<1>{ports['smtp']}", config.read_text())
        config.write_text(re.sub(r"(\[web\]\nport = )\d+", rf"\g<1>{ports['web']}", text))
    raise AssertionError("no free port for mailbot serve in five attempts")


def settled(server: Popen[bytes], ports: dict[str, int]) -> bool:
    """Whether the server has either exited or opened all its ports."""
    return server.poll() is not None or all(map(listening, ports.values()))


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path, sqlite_template: Path) -> None:
    ports = {"smtp": reserve_port(), "web": reserve_port()}
    (tmp_path / "mailbot.toml").write_text(
        f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
    )
    initialised(tmp_path, sqlite_template)
    server = start_serve(tmp_path, tmp_path / "serve.log", ports)
    try:
        url = f"http://127.0.0.1:{ports['web']}/healthz"
        with urllib.request.urlopen(url, timeout=60) as health:
            assert health.status == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    assert not listening(ports["smtp"])


@pytest.mark.parametrize("taken", ["smtp", "web"])
def test_serve_on_a_port_in_use_is_a_one_line_error(
    tmp_path: Path, sqlite_template: Path, taken: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"smtp": reserve_port(), "web": reserve_port(), taken: busy.getsockname()[1]}
        (tmp_path / "mailbot.toml").write_text(
            f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
        )
        initialised(tmp_path, sqlite_template)
        result = mailbot(tmp_path, "serve")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("mailbot: error: cannot listen")
    assert b"Traceback" not in result.stderr


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_tells_the_whole_story_and_leaves_nothing_running(tmp_path: Path) -> None:
    # The demo works in a directory of the temporary directory it is given: its own.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    environment = {**clean_environment(), "TMPDIR": str(temporary)}
    result = subprocess.run(
        [str(MAILBOT), "demo"], capture_output=True, env=environment, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert out.count("[validation-requested]") == 2
    assert "[request-done]" in out
    assert "tech support@websenso.example" in out
    assert out.rstrip().endswith("the request is done.")
    assert list(temporary.iterdir()) == []


# -- process under an MTA: exit statuses -----------------------------------------

ROUTES = [pytest.param((), id="full"), pytest.param(("--store-only",), id="store-only")]
"""``mailbot process`` and ``mailbot process --store-only``: the same statuses."""


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single line a failed command writes on stderr (what an MTA may quote)."""
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert err.startswith("mailbot: error: "), err
    assert err.count("\n") == 1, err
    return err


def help_request() -> bytes:
    return MailFactory()(ALICE, "HELP", "HELP", to="changes@mailbot.localhost")


@pytest.mark.parametrize("route", ROUTES)
def test_process_where_nothing_can_be_created_asks_the_mta_to_retry(
    tmp_path: Path, route: tuple[str, ...]
) -> None:
    """Postfix runs the pipe in its spool directory: the default ``var/`` cannot be made."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "var").write_text("")  # a file: not even root makes a directory there
    spool.chmod(0o555)
    try:
        result = mailbot(spool, "process", *route, stdin=help_request())
    finally:
        spool.chmod(0o755)
    assert result.returncode == 75
    assert "var/mailbot.db" in one_line_error(result)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("option", ["--sender", "--recipient"])
def test_process_refuses_an_envelope_address_no_path_may_hold(
    tmp_path: Path, route: tuple[str, ...], option: str
) -> None:
    """Over 254 characters, as the SMTP listener refuses it at MAIL or RCPT: a
    usage error (the MTA bounces the message), never a retry that cannot end."""
    longest = "ab@" + ".".join(["b" * 60] * 4) + ".testing"
    assert len(longest) == 254
    assert mailbot(tmp_path, "init").returncode == 0
    for address, status in ((longest + "x", 2), ("a\x01b@x.test", 2), (longest, 0)):
        result = mailbot(tmp_path, "process", *route, option, address, stdin=help_request())
        assert result.returncode == status, result.stderr
        if status:
            err = result.stderr.decode()
            assert err.count("\n") == 1, err
            assert f"argument {option}" in err, err
            assert "longer than a path may be" in err or "control character" in err


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("how", ["--config", "MAILBOT_CONFIG"])
def test_process_without_its_config_file_asks_the_mta_to_retry(
    tmp_path: Path, route: tuple[str, ...], how: str
) -> None:
    missing = tmp_path / "etc" / "mailbot.toml"
    option = ("--config", str(missing)) if how == "--config" else ()
    env = {"MAILBOT_CONFIG": str(missing)} if how == "MAILBOT_CONFIG" else None
    result = mailbot(tmp_path, *option, "process", *route, stdin=help_request(), env=env)
    assert result.returncode == 75
    assert f"cannot read config file {missing}" in one_line_error(result)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("config", "said"),
    [
        ("[database\nurl = 'x'\n", "not valid TOML"),
        ("[smtp]\nmax_message_bytes = -1\n", "max_message_bytes"),
        ("[database]\nurl = 'mysql://db'\n", "database.url"),
    ],
    ids=["not-toml", "bad-value", "bad-url"],
)
def test_process_with_an_invalid_config_asks_the_mta_to_retry(
    tmp_path: Path, route: tuple[str, ...], config: str, said: str
) -> None:
    (tmp_path / "mailbot.toml").write_text(config)
    result = mailbot(tmp_path, "process", *route, stdin=help_request())
    assert result.returncode == 75
    assert said in one_line_error(result)


@pytest.mark.parametrize("route", ROUTES)
def test_process_with_the_database_server_down_asks_the_mta_to_retry(
    tmp_path: Path, route: tuple[str, ...]
) -> None:
    closed = reserve_port()  # bound, never listening: connections are refused
    env = {"MAILBOT_DATABASE__URL": f"postgresql+psycopg://mailbot@127.0.0.1:{closed}/mailbot"}
    result = mailbot(tmp_path, "process", *route, stdin=help_request(), env=env)
    assert result.returncode == 75
    assert "refused" in one_line_error(result)


def test_other_commands_keep_their_statuses_in_one_line(tmp_path: Path) -> None:
    closed = reserve_port()
    env = {"MAILBOT_DATABASE__URL": f"postgresql+psycopg://mailbot@127.0.0.1:{closed}/mailbot"}
    down = mailbot(tmp_path, "requests", "list", env=env)
    assert down.returncode == 1
    assert "cannot open the database" in one_line_error(down)
    missing = mailbot(tmp_path, "--config", str(tmp_path / "none.toml"), "requests", "list")
    assert missing.returncode == 2
    assert "cannot read config file" in one_line_error(missing)
    unreadable = mailbot(tmp_path, "import", str(tmp_path))  # a directory
    assert unreadable.returncode in (1, 2, 75)
    one_line_error(unreadable)


@pytest.mark.parametrize("route", ROUTES)
def test_process_on_a_database_without_schema_asks_the_mta_to_retry(
    tmp_path: Path, route: tuple[str, ...]
) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "mailbot.db").write_bytes(b"")  # created, never `mailbot init`
    result = mailbot(tmp_path, "process", *route, stdin=help_request())
    assert result.returncode == 75
    assert "mailbot init" in one_line_error(result)


def full_disk(limit: int) -> None:
    """In the child: files cannot grow past ``limit`` bytes, as on a full disk."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("route", ROUTES)
def test_process_on_a_full_disk_asks_the_mta_to_retry(
    tmp_path: Path, sqlite_template: Path, route: tuple[str, ...]
) -> None:
    initialised(tmp_path, sqlite_template)
    result = subprocess.run(
        [str(MAILBOT), "process", *route, "--no-flush"],
        cwd=tmp_path,
        input=help_request(),
        capture_output=True,
        env=clean_environment(),
        timeout=60,
        check=False,
        preexec_fn=functools.partial(full_disk, 1024),
    )
    assert result.returncode == 75
    one_line_error(result)
    listed = json.loads(mailbot(tmp_path, "inbound", "list", "--json").stdout)
    assert listed == []


@pytest.mark.parametrize("route", ROUTES)
def test_a_message_that_can_never_be_processed_is_refused_for_good(
    tmp_path: Path, sqlite_template: Path, route: tuple[str, ...]
) -> None:
    (tmp_path / "mailbot.toml").write_text("[smtp]\nmax_message_bytes = 2000\n")
    initialised(tmp_path, sqlite_template)
    big = MailFactory()(ALICE, "HELP", "x" * 3000, to="changes@mailbot.localhost")
    too_big = mailbot(tmp_path, "process", *route, stdin=big)
    assert too_big.returncode == 1
    assert "too big" in one_line_error(too_big)
    empty = mailbot(tmp_path, "process", *route, stdin=b"\r\n")
    assert empty.returncode == 1
    assert "empty" in one_line_error(empty)
    assert json.loads(mailbot(tmp_path, "inbound", "list", "--json").stdout) == []


# -- process --store-only: stored as the listener stores, acted on by serve --------


@pytest.fixture
def pipe_dir(tmp_path: Path, database_url: str) -> Path:
    """A directory whose mailbot.toml names a migrated database of each kind."""
    (tmp_path / "mailbot.toml").write_text(f'[database]\nurl = "{database_url}"\n')
    return tmp_path


def inbound(cwd: Path) -> list[dict[str, Any]]:
    listed = mailbot(cwd, "inbound", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def test_store_only_stores_a_message_once_whatever_its_route(pipe_dir: Path) -> None:
    raw = help_request()
    first = mailbot(pipe_dir, "process", "--store-only", "--recipient", "Changes@X.test", stdin=raw)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(b"stored as message ")
    # The same message again, through another relay that added its trace fields.
    relayed = b"Received: from relay2.test by mx.test; Mon, 2 Mar 2026 09:01:00 +0000\r\n" + raw
    again = mailbot(pipe_dir, "process", "--store-only", stdin=relayed)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(b"duplicate of message ")
    [row] = inbound(pipe_dir)
    assert row["status"] == "received"
    assert row["source"] == "cli"
    # The full route finds the stored copy (the same key) and acts on it once.
    full = mailbot(pipe_dir, "process", "--no-flush", stdin=raw)
    assert full.returncode == 0, full.stderr
    [row] = inbound(pipe_dir)
    assert row["status"] == "processed"


def test_store_only_without_a_database_asks_the_mta_to_retry(tmp_path: Path) -> None:
    env = {"MAILBOT_DATABASE__URL": f"sqlite:///{tmp_path}/missing/mailbot.db"}
    result = mailbot(tmp_path, "process", "--store-only", stdin=help_request(), env=env)
    assert result.returncode == 75
    assert "mailbot init" in one_line_error(result)
    assert not (tmp_path / "missing").exists()


def test_serve_acts_on_mail_the_pipe_stored(tmp_path: Path, sqlite_template: Path) -> None:
    ports = {"smtp": reserve_port(), "web": reserve_port()}
    (tmp_path / "mailbot.toml").write_text(
        f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
    )
    initialised(tmp_path, sqlite_template)
    (tmp_path / "world.json").write_text(json.dumps(WORLD))
    assert mailbot(tmp_path, "import", "world.json").returncode == 0
    server = start_serve(tmp_path, tmp_path / "serve.log", ports)
    try:
        stored = mailbot(tmp_path, "process", "--store-only", stdin=help_request())
        assert stored.returncode == 0, stored.stderr
        sent = tmp_path / "var" / "sent" / "new"
        wait_for(lambda: sent.is_dir() and any(sent.iterdir()))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    [answer] = list(sent.iterdir())
    assert f"<{ALICE}>" in answer.read_text()
    [row] = inbound(tmp_path)
    assert row["status"] == "processed"


@pytest.mark.parametrize("route", ROUTES)
def test_process_on_a_file_that_is_no_database_asks_the_mta_to_retry(
    tmp_path: Path, route: tuple[str, ...]
) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "mailbot.db").write_bytes(b"not a database\n" * 100)
    result = mailbot(tmp_path, "process", *route, stdin=help_request())
    assert result.returncode == 75
    assert "not a database" in one_line_error(result)
    listing = mailbot(tmp_path, "inbound", "list")
    assert listing.returncode == 1
    assert "not a database" in one_line_error(listing)
