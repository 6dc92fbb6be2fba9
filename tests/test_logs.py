"""Floods of identical log records are folded into one line and a count; with
``[log] format = "json"`` every line is a JSON object that names the mail and the
request it concerns, and holds no secret."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from conftest import reserve_port
from factories import ALICE, CAROL, WORLD, MailFactory, maildir_messages
from servers import maildir_count, wait_for
from test_entrypoint import initialised

from mailbot.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


Logged = tuple[logging.Logger, io.StringIO, RepeatFilter]


@pytest.fixture
def logged(clock: Clock) -> Iterator[Logged]:
    """A logger writing ``LEVEL name: message`` lines through a folding handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    repeats = RepeatFilter(handler, window=60, clock=clock)
    handler.addFilter(repeats)
    logger = logging.getLogger("mailbot.test.flood")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream, repeats
    logger.removeHandler(handler)


def test_a_flood_is_one_line_then_one_line_with_its_count(logged: Logged, clock: Clock) -> None:
    logger, stream, _ = logged
    for _ in range(5000):
        logger.error("socket.accept() out of system resource")
    assert stream.getvalue().splitlines() == [
        "ERROR mailbot.test.flood: socket.accept() out of system resource"
    ]
    clock.now += 61
    logger.info("something else")
    assert stream.getvalue().splitlines()[1:] == [
        "ERROR mailbot.test.flood: socket.accept() out of system resource"
        " (repeated 4999 more times in 61 s)",
        "INFO mailbot.test.flood: something else",
    ]


def test_different_messages_levels_and_loggers_are_not_folded_together(logged: Logged) -> None:
    logger, stream, _ = logged
    logger.warning("refused 10.0.0.1")
    logger.warning("refused 10.0.0.2")
    logger.error("refused 10.0.0.1")
    logging.getLogger("mailbot.test.flood.other").warning("refused 10.0.0.1")
    assert len(stream.getvalue().splitlines()) == 4


def test_a_message_is_logged_again_once_its_window_is_over(logged: Logged, clock: Clock) -> None:
    logger, stream, _ = logged
    logger.warning("database unavailable")
    clock.now += 61
    logger.warning("database unavailable")
    assert len(stream.getvalue().splitlines()) == 2  # nothing was folded: no count line


def test_pending_counts_are_reported_at_exit(logged: Logged) -> None:
    logger, stream, repeats = logged
    for _ in range(3):
        logger.warning("Invalid HTTP request received.")
    repeats.flush()
    assert (
        stream.getvalue()
        .splitlines()[-1]
        .endswith("Invalid HTTP request received. (repeated 2 more times in 1 s)")
    )


# -- [log] format = "json", through the installed command -----------------------------

MAILBOT = Path(sys.executable).parent / "mailbot"
TOKEN = re.compile(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})\b")


def run_mailbot(workdir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(MAILBOT), *args], cwd=workdir, capture_output=True, env=environment(), timeout=60
    )


def environment(**extra: str) -> dict[str, str]:
    """This environment without MAILBOT_ variables, plus ``extra``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
    return {**clean, **extra}


@contextmanager
def serving(workdir: Path, stderr: Path, web_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``mailbot serve`` in ``workdir`` with JSON logs on ``stderr``, once it answers
    ``/healthz``; stopped with SIGTERM at the end of the block."""
    with stderr.open("wb") as output:
        server = subprocess.Popen(
            [str(MAILBOT), "serve"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=output,
            env=environment(MAILBOT_LOG__FORMAT="json"),
        )
    try:
        wait_for(lambda: server.poll() is not None or healthy(web_port), timeout=120)
        assert server.poll() is None, stderr.read_text()
        yield server
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_json_logs_say_which_mail_and_request_and_never_the_token(
    tmp_path: Path, sqlite_template: Path
) -> None:
    smtp_port, web_port = reserve_port(), reserve_port()
    (tmp_path / "mailbot.toml").write_text(
        '[bot]\naddress = "changes@bot.test"\n'
        f"[smtp]\nport = {smtp_port}\n[web]\nport = {web_port}\n"
    )
    (tmp_path / "world.json").write_text(json.dumps(WORLD))
    initialised(tmp_path, sqlite_template)
    assert run_mailbot(tmp_path, "import", "world.json").returncode == 0
    sent = tmp_path / "var" / "sent"
    log = tmp_path / "serve.log"
    mail = MailFactory()
    with serving(tmp_path, log, web_port):
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            opening = mail(ALICE, "CHANGE example.com", f"tech: {CAROL}")
            client.sendmail(ALICE, ["changes@bot.test"], opening)
        wait_for(lambda: maildir_count(sent) == 3)
        asked = next(m for m in maildir_messages(sent) if CAROL in str(m["To"]))
        token = TOKEN.search(plain_text(asked))
        assert token is not None
        reply_to = str(asked["Reply-To"])
        reply_key = reply_to.partition("+")[2].partition("@")[0]
        assert reply_key
        answer = mail(CAROL, f"Re: {asked['Subject']}", f"ACCEPT {token.group(1)}", to=reply_to)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail(CAROL, [reply_to], answer)
        wait_for(lambda: maildir_count(sent) > 3)
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    listed = json.loads(run_mailbot(tmp_path, "requests", "list", "--json").stdout)
    request_id = listed[0]["id"]
    decided = [r for r in records if r.get("inbound_id") == 2 and r.get("outcome") == "processed"]
    assert decided, text
    assert decided[0]["request_id"] == request_id
    opened = [r for r in records if r.get("inbound_id") == 1 and "request_id" in r]
    assert opened[0]["request_id"] == request_id
    assert any(
        r.get("event") == "validation-requested" and r.get("outcome") == "sent" for r in records
    )
    for secret in (token.group(1), token.group(1).replace("-", ""), reply_key):
        assert secret.lower() not in text.lower()


def test_an_unknown_log_format_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "mailbot.toml").write_text('[log]\nformat = "xml"\n')
    result = run_mailbot(tmp_path, "init")
    assert result.returncode == 2
    assert b"log.format" in result.stderr
    assert len(result.stderr.splitlines()) == 1
