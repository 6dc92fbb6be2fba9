"""Nothing acknowledged is left behind: the installed ``mailbot serve`` killed with
SIGKILL in the middle of an SMTP burst, and a PostgreSQL outage during a burst.
Every message that got a 250 is acted on exactly once, and the backlog of
stored-but-unprocessed mail drains to zero without any further restart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import as_postgres, make_settings, on_a_free_port, pg_bin, pg_start, reserve_port
from dovecot import PASSWORD, USER, running_dovecot
from factories import ALICE, MailFactory, outbox, seed_world
from imapclient import IMAPClient
from servers import received_backlog, wait_for
from test_entrypoint import mailbot, start_serve

from mailbot.adapters.imap_in import ImapReader
from mailbot.config import ImapSettings
from mailbot.service import Mailbot
from mailbot.storage.engine import make_engine, upgrade

BOT = "changes@bot.test"
_TO = re.compile(rb"^To: (?:.*<)?([^<>\s]+@[^<>\s]+?)>?\s*$", re.MULTILINE)


@dataclass
class Burst:
    """SMTP clients sending HELP from distinct senders, one message per
    connection, recording which got a 250 and which a 451."""

    port: int
    prefix: str
    acked: list[str] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int, per_client: int) -> None:
        for client in range(clients):
            thread = threading.Thread(target=self._run, args=(client, per_client), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, client: int, count: int) -> None:
        mail = MailFactory()
        for n in range(count):
            if self.stop.is_set():
                return
            sender = f"{self.prefix}{client}-{n}@burst.test"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                    smtp.sendmail(sender, [BOT], mail(sender, "HELP", to=BOT))
                self.acked.append(sender)
            except smtplib.SMTPResponseException as exc:
                (self.deferred if exc.smtp_code == 451 else self.refused).append(str(exc))
                self.stop.wait(0.05)  # told to come back later, as an MTA would
            except (OSError, smtplib.SMTPException):
                self.stop.wait(0.05)  # the server is gone: it may come back


def answered(maildir: Path) -> Counter[str]:
    """How many mails each address was sent, from the Maildir's files."""
    counts: Counter[str] = Counter()
    new = maildir / "new"
    for path in new.iterdir() if new.is_dir() else ():
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0]
        found = _TO.search(head)
        if found:
            counts[found.group(1).decode()] += 1
    return counts


def acted(workdir: Path) -> Counter[str]:
    """How many HELP answers each address was given (queued or sent), per the outbox."""
    result = mailbot(workdir, "outbox", "list", "--sent", "1000000", "--json")
    assert result.returncode == 0, result.stderr
    return Counter(mail["to"] for mail in json.loads(result.stdout) if mail["event"] == "help")


def backlog(workdir: Path) -> list[object] | None:
    """Stored messages not yet acted on, as the operator's command lists them."""
    result = mailbot(workdir, "inbound", "list", "--status", "received", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def configure(workdir: Path, database_url: str) -> dict[str, int]:
    """mailbot.toml and an initialised database; the ports ``start_serve`` listens on."""
    ports = {"smtp": reserve_port(), "web": reserve_port()}
    (workdir / "mailbot.toml").write_text(
        f'[bot]\naddress = "{BOT}"\n'
        f'[database]\nurl = "{database_url}"\n'
        f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
        f'[outgoing]\nmaildir = "{workdir / "sent"}"\n'
    )
    assert mailbot(workdir, "init").returncode == 0
    return ports


@pytest.fixture
def serve(workdir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started ``mailbot serve`` processes, stopped (killed if need be) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def start(
    workdir: Path, started: list[subprocess.Popen[bytes]], ports: dict[str, int]
) -> subprocess.Popen[bytes]:
    process = start_serve(workdir, workdir / f"serve-{len(started)}.log", ports)
    started.append(process)
    return process


def test_a_kill_during_a_burst_loses_nothing_and_repeats_nothing(
    workdir: Path, database_url: str, serve: list[subprocess.Popen[bytes]]
) -> None:
    ports = configure(workdir, database_url)
    first = start(workdir, serve, ports)
    burst = Burst(ports["smtp"], "k")
    burst.start(clients=4, per_client=100)
    # Acting on mail lags behind taking it in a burst: the kill leaves well over
    # a hundred acknowledged messages stored but not yet acted on.
    wait_for(lambda: len(burst.acked) >= 250, timeout=180)
    first.send_signal(signal.SIGKILL)
    first.wait()
    burst.join()
    acked = set(burst.acked)
    assert len(acked) >= 250
    start(workdir, serve, ports)  # once; from here on, no more restarts
    wait_for(lambda: received_backlog(ports["web"]) == 0, timeout=120)
    assert backlog(workdir) == []
    counts = acted(workdir)
    assert {sender: counts[sender] for sender in acked} == dict.fromkeys(acked, 1)
    assert max(counts.values()) == 1  # no message acted on twice, acknowledged or not
    written = answered(workdir / "sent")
    assert max(written.values()) == 1  # and no mail written twice
    assert burst.refused == []


class Cluster:
    """A PostgreSQL cluster of this test's own, to stop and start at will."""

    def __init__(self, root: Path) -> None:
        bindir = pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL binaries not found")
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        initdb = [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        initdb += ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
        subprocess.run(as_postgres(initdb), check=True, capture_output=True)
        self.port = on_a_free_port(self._start_on)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _start_on(self, port: int) -> str | None:
        options = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        return pg_start(self.bindir, self.data, self.root / "log", options)

    def start(self) -> None:
        """Start again on its port (held by this test: no other program takes it)."""
        failure = self._start_on(self.port)
        assert failure is None, failure

    def stop(self) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast"]
        subprocess.run(as_postgres([*command, "-w", "-t", "600", "stop"]), capture_output=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if pg_bin() is None and os.environ.get("CI") != "true":
        pytest.skip("PostgreSQL binaries not found")
    root = Path(tempfile.mkdtemp(prefix="mailbot-outage-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = Cluster(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def health(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=60) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_database_outage_during_a_burst_is_caught_up_without_a_restart(
    workdir: Path, cluster: Cluster, serve: list[subprocess.Popen[bytes]]
) -> None:
    ports = configure(workdir, cluster.url)
    process = start(workdir, serve, ports)
    burst = Burst(ports["smtp"], "o")
    web_port = ports["web"]
    # More mail than the test waits for: however long the outage lasts on a busy
    # machine, the clients still have mail to send once the database is back.
    burst.start(clients=3, per_client=2000)
    wait_for(lambda: len(burst.acked) >= 40, timeout=120)
    cluster.stop()
    down_at = len(burst.acked)
    wait_for(lambda: len(burst.deferred) >= 10, timeout=60)
    assert health(web_port) == 503
    cluster.start()
    wait_for(lambda: len(burst.acked) >= down_at + 30, timeout=120)
    burst.join()
    acked = set(burst.acked)
    wait_for(lambda: received_backlog(web_port) == 0, timeout=120)
    assert backlog(workdir) == []
    assert process.poll() is None  # the same process all along
    assert health(web_port) == 200
    counts = acted(workdir)
    assert {sender: counts[sender] for sender in acked} == dict.fromkeys(acked, 1)
    assert max(counts.values()) == 1
    maildir = workdir / "sent"
    wait_for(lambda: acked <= set(answered(maildir)), timeout=120)  # and sent
    assert max(answered(maildir).values()) == 1
    assert burst.refused == []  # 451 while the database was down, never a 5xx
    assert all(reply.startswith("(451") for reply in burst.deferred)


def test_the_agency_mailbox_waits_out_a_database_outage(
    tmp_path: Path, cluster: Cluster, mail: MailFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader's turn at the mailbox lives in a database session: when the
    database goes, the reader leaves the mail where it is, and reads it once
    the database is back, in the same thread, its turn taken again."""
    caplog.set_level(logging.WARNING, logger="mailbot.adapters.imap_in")
    settings = make_settings(tmp_path, cluster.url)
    engine = make_engine(settings.database)
    upgrade(engine)
    engine.dispose()
    bot = Mailbot.from_settings(settings)
    seed_world(bot)
    stop = threading.Event()
    with running_dovecot() as server:
        imap = ImapSettings(
            enabled=True,
            host="127.0.0.1",
            port=server.port,
            ssl=False,
            username=USER,
            password=PASSWORD,
        )
        reader = threading.Thread(target=ImapReader(imap, bot, stop).run, daemon=True)
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False)
        client.login(USER, PASSWORD)

        def folder(name: str) -> int:
            if not client.folder_exists(name):
                return 0
            return int(client.folder_status(name, ["MESSAGES"])[b"MESSAGES"])

        reader.start()
        try:
            server.deliver(mail(ALICE, "HELP"))
            wait_for(lambda: folder("mailbot-done") == 1)
            cluster.stop()
            server.deliver(mail(ALICE, "HELP"))
            wait_for(lambda: "waits for the database" in caplog.text)
            assert folder("INBOX") == 1
            cluster.start()
            wait_for(lambda: folder("mailbot-done") == 2, timeout=120)
            assert (folder("INBOX"), folder("mailbot-failed")) == (0, 0)
            assert [m.event for m in outbox(bot)] == ["help", "help"]
        finally:
            stop.set()
            reader.join(120)
            client.logout()
            bot.engine.dispose()
    assert not reader.is_alive()
