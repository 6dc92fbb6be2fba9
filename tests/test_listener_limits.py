"""Both listeners under slow and greedy clients: deadlines, connection caps, the
recipient cap, the open-file budget, and logs that do not flood.

Attackers connect from other loopback addresses (127.0.0.2 and up), as they
would from other hosts, so that per-client caps tell them from the visitor.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.client
import json
import re
import resource
import smtplib
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings, reserve_port
from factories import ALICE, CAROL, WORLD, MailFactory
from servers import running, wait_for
from sqlmodel import select
from test_entrypoint import initialised, mailbot, start_serve

from mailbot.config import Settings, load_settings
from mailbot.errors import ConfigError
from mailbot.service import Mailbot
from mailbot.storage.engine import transaction
from mailbot.storage.tables import InboundRow

PARTIAL_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bot.test\r\nX-Slow: "


@pytest.fixture
def limited(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """Builds a bot on free ports with the given [smtp] and [web] keys."""
    bots: list[Mailbot] = []

    def build(smtp: dict[str, Any] | None = None, web: dict[str, Any] | None = None) -> Mailbot:
        settings = make_settings(
            tmp_path,
            database_url,
            smtp={"port": reserve_port(), **(smtp or {})},
            web={"port": reserve_port(), **(web or {})},
        )
        bot = Mailbot.from_settings(settings)
        bots.append(bot)
        return bot

    yield build
    for bot in bots:
        bot.engine.dispose()


def connect(port: int, source: str = "127.0.0.1", timeout: float = 30) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout is the bound)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
        while chunk := sock.recv(4096):
            received += chunk
    return received


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


# Web: deadlines


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_partial_headers_a_slow_body_and_silence_are_closed_after_their_deadlines(
    limited: Any,
) -> None:
    bot = limited(web={"header_timeout_seconds": 0.5, "body_timeout_seconds": 0.5})
    port = bot.settings.web.port
    with running(bot), ExitStack() as stack:
        silent = stack.enter_context(connect(port))
        partial = stack.enter_context(connect(port))
        partial.sendall(PARTIAL_REQUEST)
        slow_body = stack.enter_context(connect(port))
        slow_body.sendall(
            b"POST /v/ABC HTTP/1.1\r\nHost: bot.test\r\nContent-Length: 100\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\nnonce="
        )
        for sock in (silent, partial, slow_body):
            answer = read_until_closed(sock)
            assert not answer.startswith(b"HTTP/1.1 200")
        # A request that arrives in time is served, over and over on one connection.
        visitor = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(2):
            visitor.request("GET", "/healthz")
            assert visitor.getresponse().read() == b"ok\n"
        visitor.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_idle_keepalive_connection_is_closed(limited: Any) -> None:
    bot = limited(web={"keepalive_seconds": 1, "header_timeout_seconds": 30})
    with running(bot), connect(bot.settings.web.port) as visitor:
        visitor.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot.test\r\n\r\n")
        assert read_until_closed(visitor).startswith(b"HTTP/1.1 200")


# Web: caps


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_full_web_listener_closes_the_oldest_slow_connection_for_a_visitor(
    limited: Any,
) -> None:
    bot = limited(
        web={"max_connections": 20, "max_connections_per_client": 10, "header_timeout_seconds": 60}
    )
    port = bot.settings.web.port
    with running(bot), ExitStack() as stack:
        # Two slow clients fill the listener, ten connections each.
        slow = [stack.enter_context(connect(port, f"127.0.0.{2 + i % 2}")) for i in range(20)]
        for sock in slow:
            sock.sendall(PARTIAL_REQUEST)
        with connect(port) as visitor:
            visitor.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot.test\r\n\r\n")
            assert visitor.recv(4096).startswith(b"HTTP/1.1 200")
        assert read_until_closed(slow[0]) == b""  # the oldest made room
        # A slow client at its own cap pushes out its own oldest, not others'.
        again = stack.enter_context(connect(port, "127.0.0.3"))
        again.sendall(PARTIAL_REQUEST)
        assert read_until_closed(slow[1]) == b""
        slow[2].settimeout(0.5)
        with pytest.raises(TimeoutError):
            slow[2].recv(1)  # 127.0.0.2's connections stay


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_visitors_idle_connection_outlives_newer_slow_ones(limited: Any) -> None:
    bot = limited(web={"max_connections": 3, "keepalive_seconds": 30})
    port = bot.settings.web.port
    with running(bot), ExitStack() as stack:
        visitor = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        stack.callback(visitor.close)
        visitor.request("GET", "/healthz")
        assert visitor.getresponse().read() == b"ok\n"
        kept = visitor.sock
        slow = [stack.enter_context(connect(port, "127.0.0.2")) for _ in range(3)]
        for sock in slow:
            sock.sendall(PARTIAL_REQUEST)
        # The third slow one pushed out the first, not the older visitor's connection.
        assert read_until_closed(slow[0]) == b""
        visitor.request("GET", "/healthz")
        assert visitor.getresponse().read() == b"ok\n"
        assert visitor.sock is kept  # the same connection, still open


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_web_listener_full_of_busy_requests_refuses_with_503(limited: Any) -> None:
    bot = limited(web={"max_connections": 3, "body_timeout_seconds": 30})
    port = bot.settings.web.port
    with running(bot), ExitStack() as stack:
        # Requests whose bodies are still arriving are busy: never closed for room.
        for _ in range(3):
            busy = stack.enter_context(connect(port, "127.0.0.2"))
            busy.sendall(
                b"POST /v/ABC HTTP/1.1\r\nHost: bot.test\r\nContent-Length: 50\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            # The page reads the body: from now on the request is in flight.
            assert read_line(busy).startswith(b"HTTP/1.1 100")
        with connect(port) as visitor:
            visitor.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot.test\r\n\r\n")
            answer = read_until_closed(visitor)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"connection: close" in answer


# SMTP


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_idle_smtp_sessions_beyond_the_cap_make_room_then_busy_ones_get_421(
    limited: Any, mail: MailFactory
) -> None:
    bot = limited(smtp={"max_connections": 4, "max_connections_per_client": 4})
    port = bot.settings.smtp.port
    with running(bot), ExitStack() as stack:
        idle = [stack.enter_context(connect(port, "127.0.0.2")) for _ in range(4)]
        for sock in idle:
            assert read_line(sock).startswith(b"220 ")
        # A fresh client is served: the oldest idle session is told and closed.
        send(bot.settings, mail(ALICE, "HELP"))
        assert read_until_closed(idle[0]).startswith(b"421 4.7.0")
        # Sessions in the middle of DATA are busy: a newcomer is refused with 421.
        idle.append(stack.enter_context(connect(port, "127.0.0.2")))
        for sock in idle[1:]:
            sock.sendall(b"EHLO slow.test\r\n")
            sock.sendall(b"MAIL FROM:<a@slow.test>\r\nRCPT TO:<changes@bot.test>\r\nDATA\r\n")
        for sock in idle[1:]:
            while not read_line(sock).startswith(b"354"):
                pass
        with connect(port) as newcomer:
            assert read_until_closed(newcomer).startswith(b"421 4.7.0")
        # Still no 5xx for anyone, and smtplib sees a temporary refusal.
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            send(bot.settings, mail(ALICE, "HELP"))
        assert refused.value.smtp_code == 421


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_silent_or_trickling_smtp_session_is_closed(limited: Any) -> None:
    bot = limited(smtp={"timeout_seconds": 0.5, "max_session_seconds": 2})
    port = bot.settings.smtp.port
    with running(bot):
        with connect(port) as silent:
            assert read_line(silent).startswith(b"220 ")
            assert read_until_closed(silent) == b""
        with connect(port) as trickling:
            # NOOP every 0.2 s never leaves it idle: the session's lifetime ends it.
            assert read_line(trickling).startswith(b"220 ")
            answers = []
            while not answers or answers[-1].startswith(b"250"):
                time.sleep(0.2)
                with contextlib.suppress(OSError):
                    trickling.sendall(b"NOOP\r\n")
                answers.append(read_line(trickling))
            assert answers[-1].startswith(b"421 4.4.2")
            assert read_until_closed(trickling) == b""
        with connect(port) as dripping:
            # A message dripping in line by line is cut off too, and not stored.
            dripping.sendall(b"EHLO drip.test\r\nMAIL FROM:<a@drip.test>\r\n")
            dripping.sendall(b"RCPT TO:<changes@bot.test>\r\nDATA\r\n")
            while not read_line(dripping).startswith(b"354"):
                pass
            with contextlib.suppress(OSError):
                while True:
                    dripping.sendall(b"Subject: HELP\r\n")
                    time.sleep(0.2)
            assert b"250" not in read_until_closed(dripping)
    assert stored(bot) == []


def test_the_101st_recipient_gets_452_and_the_message_is_stored_once(
    limited: Any, mail: MailFactory
) -> None:
    bot = limited()
    recipients = [f"box{i}@bot.test" for i in range(101)]
    with running(bot), smtplib.SMTP("127.0.0.1", bot.settings.smtp.port, timeout=30) as client:
        client.ehlo()
        client.mail(ALICE)
        answers = [client.rcpt(to)[0] for to in recipients]
        assert answers == [250] * 100 + [452]
        code, text = client.rcpt("box-again@bot.test")
        assert (code, text.startswith(b"4.5.3")) == (452, True)
        assert client.data(mail(ALICE, "HELP"))[0] == 250
    [message] = stored(bot)
    assert sorted(message.recipients.split(",")) == sorted(recipients[:100])


def send(settings: Settings, raw: bytes) -> None:
    with smtplib.SMTP(settings.smtp.host, settings.smtp.port, timeout=30) as client:
        client.sendmail(ALICE, ["changes@bot.test"], raw)


def stored(bot: Mailbot) -> list[InboundRow]:
    with transaction(bot.engine) as session:
        return list(session.exec(select(InboundRow)).all())


# The installed command under attack, with the usual 1,024 open files


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room in this test process for thousands of attacking sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SLOW_WEB + SLOW_SMTP + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open-file limit {hard} is below the {need} this attack needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SLOW_WEB = 2000
SLOW_SMTP = 500


def _usual_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@contextmanager
def serve_command(
    workdir: Path, template: Path, config: str = ""
) -> Iterator[tuple[int, int, Path]]:
    """``mailbot serve`` as its own process with at most 1,024 open files, stopped
    by SIGTERM on exit; yields its SMTP and web ports and its log file."""
    ports = {"smtp": reserve_port(), "web": reserve_port()}
    (workdir / "mailbot.toml").write_text(
        f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n{config}"
    )
    (workdir / "world.json").write_text(json.dumps(WORLD))
    initialised(workdir, template)
    assert mailbot(workdir, "import", "world.json").returncode == 0
    log = workdir / "serve.log"
    server = start_serve(workdir, log, ports, preexec_fn=_usual_limit)
    try:
        yield ports["smtp"], ports["web"], log
        server.terminate()
        assert server.wait(timeout=120) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def slow_clients(port: int, count: int, payload: bytes) -> list[socket.socket]:
    """``count`` connections from 40 other loopback addresses, each sending
    ``payload`` and never more; some may already be closed by the server."""
    opened = []
    for index in range(count):
        sock = connect(port, f"127.0.1.{1 + index % 40}")
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        opened.append(sock)
        time.sleep(0.001)  # paced, so that the listen queue drops no SYN (a 1 s retry)
    return opened


def get(port: int, path: str) -> tuple[int, bytes]:
    visitor = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        visitor.request("GET", path)
        response = visitor.getresponse()
        return response.status, response.read()
    finally:
        visitor.close()


def link_to(maildir: Path, recipient: str) -> str:
    """The link in the newest-found mail to ``recipient`` in ``maildir``, or ""
    while there is none (the Maildir is made with the first mail sent)."""
    if not (maildir / "new").is_dir():
        return ""
    for path in (maildir / "new").iterdir():
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if recipient in str(message["To"]):
            body = message.get_body(("plain",))
            assert body is not None
            found = re.search(r"http://127\.0\.0\.1:\d+/v/[0-9A-Z]+", body.get_content())
            if found:
                return found.group(0)
    return ""


def test_both_listeners_answer_while_thousands_of_slow_connections_are_open(
    tmp_path: Path, sqlite_template: Path, many_descriptors: None, mail: MailFactory
) -> None:
    # Deadlines far away: only the caps and their evictions can save the listeners.
    config = "header_timeout_seconds = 120\n"
    with (
        serve_command(tmp_path, sqlite_template, config) as (smtp_port, web_port, log),
        ExitStack() as stack,
    ):
        for sock in slow_clients(web_port, SLOW_WEB, PARTIAL_REQUEST):
            stack.enter_context(sock)
        for sock in slow_clients(smtp_port, SLOW_SMTP, b""):
            stack.enter_context(sock)
        assert get(web_port, "/healthz") == (200, b"ok\n")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            request = mail(
                ALICE, "CHANGE example.com", f"tech: {CAROL}", to="changes@mailbot.localhost"
            )
            assert client.sendmail(ALICE, ["changes@mailbot.localhost"], request) == {}
        link = wait_for(lambda: link_to(tmp_path / "var" / "sent", CAROL), timeout=60)
        status, page = get(web_port, link.partition(str(web_port))[2])
        assert status == 200
        assert b"<form" in page
        for _ in range(30):  # an error repeated: one line, then one with the count
            with connect(web_port) as garbage:
                garbage.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
                read_until_closed(garbage)
    output = log.read_text()
    assert "open-file limit 1024: connection caps lowered" in output
    assert "Too many open files" not in output
    assert "Traceback" not in output
    for listener in ("web", "smtp"):
        evictions = [
            line for line in output.splitlines() if f"{listener}: at a connection cap" in line
        ]
        assert len(evictions) == 2, evictions  # once, then once with the count
        assert re.search(r"\(repeated \d+ more times in \d+ s\)$", evictions[1])
    garbage = [line for line in output.splitlines() if "Invalid HTTP request" in line]
    assert len(garbage) == 2, garbage
    assert re.search(r"received\. \(repeated 29 more times in \d+ s\)$", garbage[1])


@pytest.mark.parametrize(
    "key",
    [
        "smtp.max_connections",
        "smtp.max_recipients",
        "smtp.timeout_seconds",
        "smtp.max_session_seconds",
        "web.max_connections_per_client",
        "web.header_timeout_seconds",
        "web.keepalive_seconds",
    ],
)
def test_a_limit_cannot_be_switched_off(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    (tmp_path / "mailbot.toml").write_text(f"[{section}]\n{name} = 0\n")
    with pytest.raises(ConfigError, match=key):
        load_settings(str(tmp_path / "mailbot.toml"))
