"""The installed ``mailbot`` command, run as a separate process as an MTA would."""

from __future__ import annotations

import functools
import json
import os
import re
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


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    ports = {"smtp": reserve_port(), "web": reserve_port()}
    (tmp_path / "mailbot.toml").write_text(
        f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
    )
    assert mailbot(tmp_path, "init").returncode == 0
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
def test_serve_on_a_port_in_use_is_a_one_line_error(tmp_path: Path, taken: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"smtp": reserve_port(), "web": reserve_port(), taken: busy.getsockname()[1]}
        (tmp_path / "mailbot.toml").write_text(
            f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
        )
        assert mailbot(tmp_path, "init").returncode == 0
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
