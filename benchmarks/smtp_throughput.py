"""mailbot's intake and end-to-end rates, as ratios of a bare aiosmtpd sink's rate.

Each configuration (a row of the curve) is measured side by side with its own
fresh sink, in one run, from the same generator: several SMTP connections
sending realistic ~1.5 KB messages (Received, Authentication-Results,
Message-ID, a signature or quoted text). The sink is ``python -m aiosmtpd``
with its ``Sink`` handler (250 to everything, discards); mailbot is the
installed ``mailbot serve`` in a throwaway directory with its own config, its
outgoing mail going over SMTP to a capture relay (an aiosmtpd process started
here that reports every mail it is handed, with its arrival time).

For each configuration:

1. **intake**: ``--requests`` CHANGE mails from the services' admins (imported
   with ``mailbot import``; each names a new tech contact, so each request asks
   two validations) are sent in ``--rounds`` parts: each part to the sink, to
   mailbot, and to the sink again once mailbot has acted on it. The rate is
   messages over the time until the last 250; mailbot answers 250 only once the
   raw bytes are durably committed. A round's ratio sets mailbot's rate
   against the mean of the sink's two, and the row shows the median round.
   Goal: >= 0.6x the sink.
2. **end to end**: the token mails mailbot sent are read at the relay, and the
   validations of half of the requests are answered as contacts reply
   (``Re:`` subject, ``In-Reply-To``, ``ACCEPT <token>`` above the quoted
   mail), sent as fast as the connections go to the sink, to mailbot, and to
   the sink again. The rate is replies over the time from the first reply
   sent to the last confirmation (``validation-recorded`` or ``request-done``
   to the replier) arriving at the relay: stored, parsed, decided, sent. Goal:
   >= 0.3x the sink's rate on the same replies (the mean of its two runs).
3. **latency**: a quarter of the requests is answered at half the sink's rate
   (paced, each connection on its own schedule); the latency is from each
   reply's 250 to its confirmation's arrival at the relay (which includes the
   outbox sender's hand-over, so it bounds "queued" from above). Goal: p99 <
   1 s. When mailbot's end-to-end rate is below half the sink's, that load
   piles up and the figure measures a backlog draining; so the last quarter
   is answered at half mailbot's own measured end-to-end rate, a load it
   sustains, and its p99 is printed too (``p99 @e2e/2``).

Configurations: SQLite; PostgreSQL with ``[workers] processes`` = each of
``--workers`` (0 acts inside serve and writes no ``[workers]`` section); and
``--instances`` serve processes on one PostgreSQL database, the connections
spread over their listeners. PostgreSQL is ``--postgres URL`` (a server where
databases may be created), else a throwaway local server when ``initdb`` is
found. The machine's CPU count and load average are printed with the table.

The connections default to 16: an MTA delivering a burst to one destination
opens many at once (Postfix's default per-destination concurrency is 20);
``--connections 4`` shows a lighter sender, where each message's commit
round trip weighs more.

    python benchmarks/smtp_throughput.py [--requests 2000] [--connections 16]
        [--databases sqlite,postgresql] [--workers 0,1,2,4] [--instances 1,2]
        [--postgres URL] [--quick] [--intake-only] [--rounds 3]

``--intake-only`` measures intake alone (no replies: under a minute a row), for comparing
builds or machines on the goal most sensitive to what runs beside mailbot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_cpu import fresh_database, local_postgres  # a sibling script, not a package

MAILBOT = str(Path(sys.executable).parent / "mailbot")
BOT = "changes@mailbot.localhost"
AUTHSERV = "mx.mailbot.localhost"
CONFIRMATIONS = ("validation-recorded", "request-done")
GOALS = {"intake": 0.6, "e2e": 0.3, "p99": 1.0}
START_TIMEOUT = 120.0
"""A bound on waiting for a server to listen, not on how fast it must be."""

_TOKEN = re.compile(rb"/v/([0-9A-Z]{20})")


# -- ports and processes -----------------------------------------------------------


class Ports:
    """Loopback ports held until released: bound with SO_REUSEADDR but not
    listening, so no other program is handed them while the servers started
    here (which bind with SO_REUSEADDR too) take them over."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []

    def take(self) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.held.append(sock)
        return int(sock.getsockname()[1])

    def release(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise Failed(f"{what} is not listening on port {port}")


class Failed(Exception):
    """A configuration could not be measured; the row says why."""


@contextmanager
def started(
    command: list[str], cwd: Path, port: int, what: str, log: Path | None = None, **kw: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, listening on ``port``, stopped (SIGTERM) on exit."""
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=out, **kw)
    try:
        try:
            wait_listening(port, process, what)
        except Failed as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log else []
            raise Failed(f"{exc}: {tail[0] if tail else 'no output'}") from None
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]


def sink_command(port: int) -> list[str]:
    handler = "aiosmtpd.handlers.Sink"
    return [sys.executable, "-m", "aiosmtpd", "-n", "-c", handler, "-l", f"127.0.0.1:{port}"]


# -- the capture relay (a process of its own: its parsing costs the feed nothing) -----


def relay_main(port: int) -> None:
    """Accept every mail and print one JSON line about it: arrival time, event,
    recipient, request, and for validation mails the token and what to reply to."""
    import email
    from email import policy

    from aiosmtpd.controller import Controller

    lock = threading.Lock()

    class Capture:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            arrived = time.time()
            raw = envelope.original_content or b""
            message = email.message_from_bytes(raw, policy=policy.compat32)
            seen = {
                "t": arrived,
                "event": str(message.get("X-Mailbot-Event", "")),
                "request": str(message.get("X-Mailbot-Request", "")),
                "to": [str(to).lower() for to in envelope.rcpt_tos],
            }
            if seen["event"] == "validation-requested":
                seen.update(asked(message))
            line = json.dumps(seen)
            with lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            return "250 2.0.0 OK"

    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # the server's thread inherits it
    controller = Controller(Capture(), hostname="127.0.0.1", port=port)
    controller.start()
    signal.sigwait(stopping)
    controller.stop()


def asked(message: Any) -> dict[str, str]:
    """What a reply to a validation mail needs: token, Message-ID, Reply-To,
    subject and the plain text to quote."""
    text = ""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True) or b""
            text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
            break
    found = _TOKEN.search(text.encode())
    return {
        "token": found.group(1).decode() if found else "",
        "message_id": str(message.get("Message-ID", "")),
        "reply_to": str(message.get("Reply-To", BOT)),
        "subject": str(message.get("Subject", "")).replace("\n", " ").replace("\r", ""),
        "text": text[:1200],
    }


@dataclass
class Relay:
    """The benchmark's view of what the relay reported."""

    asks: list[dict[str, Any]] = field(default_factory=list)
    confirmed: dict[tuple[str, str], float] = field(default_factory=dict)
    """(recipient, request) -> first arrival of a confirmation."""
    events: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, stream: Any) -> None:
        for line in stream:
            seen = json.loads(line)
            with self.lock:
                self.events[seen["event"]] = self.events.get(seen["event"], 0) + 1
                if seen["event"] == "validation-requested":
                    self.asks.append(seen)
                if seen["event"] in CONFIRMATIONS:
                    for to in seen["to"]:
                        self.confirmed.setdefault((to, seen["request"]), seen["t"])

    def count(self, event: str) -> int:
        with self.lock:
            return self.events.get(event, 0)


@contextmanager
def relay_process(port: int, cwd: Path) -> Iterator[Relay]:
    relay = Relay()
    command = [sys.executable, __file__, "--relay", str(port)]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True)
    reader = threading.Thread(target=relay.read, args=(process.stdout,), daemon=True)
    reader.start()
    try:
        wait_listening(port, process, "the capture relay")  # type: ignore[arg-type]
        yield relay
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


# -- CPU of process trees ---------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` from its third field on (state, ppid, ...): the command
    name before them may hold spaces. OSError once the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def tree_cpu(roots: Sequence[int]) -> float | None:
    """CPU seconds (user + system) used so far by these processes and all their
    descendants, living or reaped (a reaped child's time is in its parent's);
    None where ``/proc`` cannot say."""
    tree: dict[int, list[int]] = {}
    used: dict[int, int] = {}
    try:
        entries = [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            fields = stat_fields(entry.name)
        except OSError:
            continue  # gone since the listing
        pid, ppid = int(entry.name), int(fields[1])
        used[pid] = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        tree.setdefault(ppid, []).append(pid)
    if not all(root in used for root in roots):
        return None
    total, todo = 0, list(roots)
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo += tree.get(pid, [])
    return total / TICKS


def postmaster(url: str) -> int | None:
    """The pid of the PostgreSQL server of ``url`` when it runs on this machine
    (the parent of the backend a connection gets), else None. The backend is
    looked up while the connection is open: once closed, it exits."""
    import psycopg

    with psycopg.connect("postgresql://" + url.split("://", 1)[1]) as connection:
        backend = connection.execute("SELECT pg_backend_pid()").fetchone()
        try:
            parent = int(stat_fields(backend[0] if backend else 0)[1])
            named = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None  # on another machine
    return parent if b"postgres" in named else None


@dataclass
class CpuMeter:
    """CPU used by mailbot's processes (serve and its workers) and by the
    database server, between ``start`` and ``stop``."""

    mailbot: list[int]
    database: int | None
    began: tuple[float | None, float | None] = (None, None)
    spent: tuple[float | None, float | None] = (None, None)

    def _now(self) -> tuple[float | None, float | None]:
        database = tree_cpu([self.database]) if self.database else None
        return tree_cpu(self.mailbot), database

    def start(self) -> None:
        self.began = self._now()

    def stop(self) -> None:
        (mailbot, database), (mailbot_end, database_end) = self.began, self._now()
        self.spent = (_between(mailbot, mailbot_end), _between(database, database_end))


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


# -- the generator -----------------------------------------------------------------

SIGNATURE = (
    "--\r\n{name}\r\nCustomer services, Example Hosting SARL\r\n"
    "12 rue des Lilas, 75011 Paris - +33 1 23 45 67 89\r\n\r\n"
    + "This message and any attachment are confidential and intended solely for the "
    "addressee.\r\nIf you received it in error, please delete it and tell the sender.\r\n" * 5
)


def admin(i: int) -> str:
    return f"admin{i}@customer{i % 97}.test"


def world(services: int) -> dict[str, Any]:
    """Services each with an admin, an outgoing tech and the tech they move to."""
    contacts = []
    for i in range(services):
        contacts += [
            {"handle": f"AD{i}-MB", "email": admin(i), "name": f"Admin {i}"},
            {"handle": f"OT{i}-MB", "email": f"old{i}@hosting{i % 13}.test", "name": f"Old {i}"},
            {"handle": f"NT{i}-MB", "email": f"new{i}@agency{i % 89}.test", "name": f"New {i}"},
        ]
    services_ = [
        {
            "name": f"site{i}.test",
            "kind": "domain",
            "admin": f"AD{i}-MB",
            "tech": f"OT{i}-MB",
            "billing": f"AD{i}-MB",
        }
        for i in range(services)
    ]
    return {"contacts": contacts, "services": services_}


Mail = tuple[str, str, bytes]
"""Envelope sender, recipient, raw message."""


def headers(sender: str, to: str, subject: str, message_id: str, extra: str = "") -> str:
    domain = sender.rpartition("@")[2]
    return (
        f"Received: from mx.{domain} (mx.{domain} [192.0.2.7]) by {AUTHSERV} "
        "with ESMTPS id 4Zq8; Mon, 2 Mar 2026 09:00:01 +0000\r\n"
        f"Authentication-Results: {AUTHSERV}; dkim=pass header.d={domain}; "
        f"spf=pass smtp.mailfrom={sender}; dmarc=pass header.from={domain}\r\n"
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Date: Mon, 2 Mar 2026 09:00:00 +0000\r\n"
        f"Message-ID: {message_id}\r\n{extra}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )


def change(i: int, run: str) -> Mail:
    """The admin of service ``i`` names a new tech contact."""
    sender = admin(i)
    body = f"CHANGE site{i}.test\r\ntech: NT{i}-MB\r\n\r\n" + SIGNATURE.format(name=f"Admin {i}")
    head = headers(sender, BOT, f"CHANGE site{i}.test", f"<c{i}.{run}@client.test>")
    return sender, BOT, (head + body).encode()


def reply(ask: dict[str, Any], n: int, run: str) -> Mail:
    """A contact's reply to a validation mail: the token typed above the quote
    (the quote cut at whole lines, for a message of about 1.5 KB)."""
    sender = ask["to"][0]
    thread = f"In-Reply-To: {ask['message_id']}\r\nReferences: {ask['message_id']}\r\n"
    head = headers(sender, ask["reply_to"], f"Re: {ask['subject']}", f"<r{n}.{run}@x.test>", thread)
    text = (
        head + f"ACCEPT {ask['token']}\r\n\r\nThanks,\r\n{sender}\r\n\r\n"
        f"On Mon, 2 Mar 2026 at 09:00, mailbot <{BOT}> wrote:\r\n"
    )
    for line in ask["text"].splitlines():
        if len(text.encode()) + len(line.encode()) > 1500:
            break
        text += f"> {line}\r\n"
    recipient = ask["reply_to"].rpartition("<")[2].rstrip(">").strip()
    return sender, recipient, text.encode()


# -- the feed ----------------------------------------------------------------------


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise Failed(f"expected {code.decode()}, got {line.decode(errors='replace')!r}")
        if line[3:4] != b"-":
            return


async def connection(
    port: int, mails: Sequence[Mail], at: Sequence[float] | None, acked: list[float]
) -> None:
    """Send ``mails`` one after another (each at its time in ``at`` if given);
    append the wall-clock time of each 250 to ``acked``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, b"220")
    writer.write(b"EHLO feed.test\r\n")
    await expect(reader, b"250")
    loop = asyncio.get_running_loop()
    for k, (sender, recipient, raw) in enumerate(mails):
        if at is not None and (wait := at[k] - loop.time()) > 0:
            await asyncio.sleep(wait)
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        await expect(reader, b"250")
        writer.write(f"RCPT TO:<{recipient}>\r\nDATA\r\n".encode())
        await expect(reader, b"250")
        await expect(reader, b"354")
        writer.write(raw.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        await expect(reader, b"250")
        acked[k] = time.time()
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def feed(
    ports: Sequence[int], mails: Sequence[Mail], connections: int, rate: float | None = None
) -> tuple[float, float, list[float]]:
    """Send ``mails`` over ``connections`` connections spread over ``ports``,
    as fast as they go, or at ``rate`` messages a second overall. Returns the
    start (wall clock), the seconds until the last 250, and each mail's 250 time."""
    loop = asyncio.get_running_loop()
    begin, wall = loop.time(), time.time()
    shares = [list(range(c, len(mails), connections)) for c in range(connections)]
    acks = [[0.0] * len(share) for share in shares]
    await asyncio.gather(
        *(
            connection(
                ports[c % len(ports)],
                [mails[i] for i in share],
                [begin + i / rate for i in share] if rate else None,
                acks[c],
            )
            for c, share in enumerate(shares)
        )
    )
    acked = [0.0] * len(mails)
    for share, got in zip(shares, acks, strict=True):
        for i, t in zip(share, got, strict=True):
            acked[i] = t
    return wall, max(acked) - wall, acked


# -- one configuration -------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    database: str
    """``sqlite`` or ``postgresql``."""
    workers: int
    instances: int

    @property
    def name(self) -> str:
        store = "SQLite" if self.database == "sqlite" else "PostgreSQL"
        many = f", {self.instances} instances" if self.instances > 1 else ""
        return f"{store}, workers={self.workers}{many}"


@dataclass
class Row:
    setup: Setup
    sink_intake: float = 0.0
    intake: float = 0.0
    sink_replies: float = 0.0
    e2e: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sustained: list[float] = field(default_factory=list)
    """Latencies at half mailbot's own end-to-end rate."""
    problem: str = ""
    errors: int = 0
    """Error lines in serve's logs."""
    mail_out: dict[str, int] = field(default_factory=dict)
    """Mails handed to the relay, by ``X-Mailbot-Event``."""
    intake_only: bool = False
    sink_rounds: list[float] = field(default_factory=list)
    """The sink's rate in each intake round."""
    intake_rounds: list[float] = field(default_factory=list)
    """Intake as a ratio of the sink's, in each round."""
    cpu_mailbot: float | None = None
    """Milliseconds of CPU per reply of the end-to-end burst, in serve and its
    workers (listening, acting, sending)."""
    cpu_database: float | None = None
    """The same in the PostgreSQL server, when it runs on this machine."""

    def percentile(self, q: float, sustained: bool = False) -> float:
        ordered = sorted(self.sustained if sustained else self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def config_text(setup: Setup, database: str, smtp: int, web: int, relay: int) -> str:
    """serve's own config: outgoing mail to the relay, the front MTA's
    authserv-id trusted, and limits far above what the benchmark's senders do."""
    text = (
        f'[bot]\naddress = "{BOT}"\nbase_url = "http://127.0.0.1:{web}"\n'
        f'[database]\nurl = "{database}"\n'
        f'[smtp]\nport = {smtp}\nauthserv_id = "{AUTHSERV}"\nmax_connections_per_client = 500\n'
        f'[web]\nport = {web}\nsecret_key = "benchmark-secret-key-shared-by-instances"\n'
        f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {relay}\n'
        "[policy]\nmax_answers_per_hour = 1000000\nmax_bad_tokens_per_hour = 1000000\n"
        "max_unsolicited_per_day = 1000000\n"
    )
    if setup.workers:
        text += f"[workers]\nprocesses = {setup.workers}\n"
    return text


def clean_env() -> dict[str, str]:
    """The environment without ``MAILBOT_`` overrides: the config file alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}


def mailbot(root: Path, config: Path, *args: str) -> None:
    env = clean_env()
    command = [MAILBOT, "--config", str(config), *args]
    done = subprocess.run(command, cwd=root, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        last = re.sub(r" in \S+\.toml", "", said[-1]) if said else str(done.returncode)
        raise Failed(f"mailbot {args[0]}: {last}")


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Failed(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def database_for(setup: Setup, server: str | None, n: int) -> Iterator[str]:
    """A fresh database for one configuration, dropped afterwards."""
    if setup.database == "sqlite":
        yield "sqlite:///var/mailbot.db"
        return
    if server is None:
        raise Failed("no PostgreSQL (no --postgres URL and no initdb found)")
    with fresh_database(server, f"bench_{os.getpid()}_{n}") as url:
        yield url


def measure(setup: Setup, args: argparse.Namespace, server: str | None, n: int) -> Row:
    row = Row(setup, intake_only=args.intake_only)
    ports = Ports()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="mailbot-thruput-") as folder,
            database_for(setup, server, n) as url,
        ):
            root = Path(folder)
            try:
                run_setup(row, root, url, ports, args)
            finally:
                row.errors = sum(
                    line.count("Traceback") + line.count(" ERROR ")
                    for log in root.glob("serve-*.log")
                    for line in log.read_text(errors="replace").splitlines()
                )
    except Failed as exc:
        row.problem = str(exc)
    finally:
        ports.release()
    return row


def run_setup(row: Row, root: Path, url: str, ports: Ports, args: argparse.Namespace) -> None:
    """Prepare the directory and database, start relay, serve(s) and sink, measure."""
    relay_port, sink_port = ports.take(), ports.take()
    smtp_ports = []
    for k in range(row.setup.instances):
        smtp, web = ports.take(), ports.take()
        smtp_ports.append(smtp)
        (root / f"mailbot-{k}.toml").write_text(config_text(row.setup, url, smtp, web, relay_port))
    (root / "world.json").write_text(json.dumps(world(args.requests)))
    mailbot(root, root / "mailbot-0.toml", "init")
    mailbot(root, root / "mailbot-0.toml", "import", "world.json")
    serves: list[int] = []
    with ExitStack() as stack:
        relay = stack.enter_context(relay_process(relay_port, root))
        for k, port in enumerate(smtp_ports):
            serve = [MAILBOT, "--config", str(root / f"mailbot-{k}.toml"), "serve"]
            log = root / f"serve-{k}.log"
            what = f"mailbot serve #{k}"
            serves.append(
                stack.enter_context(started(serve, root, port, what, log, env=clean_env())).pid
            )
        for k in range(row.setup.instances):  # a worker's start-up would slow what runs beside it
            wait_until(
                lambda k=k: workers_ready(root / f"serve-{k}.log", row.setup.workers),
                120,
                "the workers",
            )
        stack.enter_context(started(sink_command(sink_port), root, sink_port, "the sink"))
        run = f"{os.getpid()}x{time.time_ns()}"
        intake(row, relay, sink_port, smtp_ports, args, run)
        if not args.intake_only:
            meter = CpuMeter(
                serves, postmaster(url) if row.setup.database == "postgresql" else None
            )
            end_to_end(row, relay, sink_port, smtp_ports, args, run, meter)


def workers_ready(log: Path, workers: int) -> bool:
    """Whether each of serve's worker processes says it is acting on stored mail."""
    return log.read_text(errors="replace").count("acting on stored mail") >= workers


def intake(
    row: Row, relay: Relay, sink: int, smtp: list[int], args: argparse.Namespace, run: str
) -> None:
    """The CHANGE mails in ``--rounds`` parts; each part goes to the sink, to
    mailbot, then to the sink again, and mailbot's time is set against the mean
    of the sink's two. The row keeps the median of the rounds: a single run
    lasts a fraction of a second on a small machine, and one scheduling hiccup
    moves it by half. mailbot has acted on a part (its token mails are at the
    relay) before the sink runs again, so acting never runs beside the sink."""
    changes = [change(i, run) for i in range(args.requests)]
    rounds = max(1, min(args.rounds, len(changes)))
    size = -(-len(changes) // rounds)
    sent = 0
    for part in (changes[k : k + size] for k in range(0, len(changes), size)):
        before = feed_time([sink], part, args)
        ours = feed_time(smtp, part, args)
        sent += len(part)
        wait_until(
            lambda sent=sent: relay.count("validation-requested") >= 2 * sent,
            120 + args.requests,
            "the token mails",
        )
        sink_time = (before + feed_time([sink], part, args)) / 2
        row.sink_rounds.append(len(part) / sink_time)
        row.intake_rounds.append(sink_time / ours)
    row.sink_intake = statistics.median(row.sink_rounds)
    row.intake = statistics.median(row.intake_rounds)


def feed_time(ports: Sequence[int], mails_: Sequence[Mail], args: argparse.Namespace) -> float:
    """Seconds from the first connection to the last 250, all as fast as they go."""
    return asyncio.run(feed(ports, mails_, args.connections))[1]


def end_to_end(
    row: Row,
    relay: Relay,
    sink: int,
    smtp: list[int],
    args: argparse.Namespace,
    run: str,
    meter: CpuMeter,
) -> None:
    """Replies in a burst (sink, then mailbot, until the last confirmation, with
    the CPU it took), then paced at half the sink's rate for the latency of each."""
    burst, paced, sustained = replies(relay, run)
    burst_keys = [k for _, k in burst]
    sink_before = feed_time([sink], mails(burst), args)
    meter.start()
    wall, _, _ = asyncio.run(feed(smtp, mails(burst), args.connections))
    confirmations(relay, burst_keys, 120 + args.requests)
    meter.stop()
    row.cpu_mailbot, row.cpu_database = (
        None if spent is None else 1000 * spent / len(burst) for spent in meter.spent
    )
    last = max(relay.confirmed[k] for k in burst_keys)
    sink_after = feed_time([sink], mails(burst), args)
    row.sink_replies = 2 * len(burst) / (sink_before + sink_after)
    e2e_rate = len(burst) / (last - wall)
    row.e2e = e2e_rate / row.sink_replies
    row.latencies = paced_latencies(relay, smtp, paced, row.sink_replies / 2, args)
    row.sustained = paced_latencies(relay, smtp, sustained, e2e_rate / 2, args)
    with contextlib.suppress(Failed):  # the outgoing holders' copies may trail: counted if in
        done = 3 * args.requests
        wait_until(lambda: relay.count("request-done") >= done, 30, "every request-done")
    with relay.lock:
        row.mail_out = dict(relay.events)


Key = tuple[str, str]
"""(replier, request): how the relay files a reply's confirmation."""
Replies = list[tuple[Mail, Key]]


def replies(relay: Relay, run: str) -> tuple[Replies, Replies, Replies]:
    """Replies to every token mail: those of half the requests to send in a
    burst, a quarter paced at half the sink's rate, a quarter at half
    mailbot's end-to-end rate; each list shuffled (repeatably)."""
    with relay.lock:
        asks = list(relay.asks)
    requests = sorted({ask["request"] for ask in asks})
    half, three_quarters = len(requests) // 2, 3 * len(requests) // 4
    part = {r: 0 if n < half else 1 if n < three_quarters else 2 for n, r in enumerate(requests)}
    made = [(reply(ask, n, run), (ask["to"][0], ask["request"])) for n, ask in enumerate(asks)]
    shuffler = random.Random(12)  # noqa: S311 (a repeatable order, not a secret)
    parts: list[Replies] = [[], [], []]
    for pair in made:
        parts[part[pair[1][1]]].append(pair)
    for replies_ in parts:
        shuffler.shuffle(replies_)
    return parts[0], parts[1], parts[2]


def mails(replies_: Replies) -> list[Mail]:
    return [mail for mail, _ in replies_]


def paced_latencies(
    relay: Relay, smtp: list[int], paced: Replies, rate: float, args: argparse.Namespace
) -> list[float]:
    """Each reply's time from its 250 to its confirmation, sent at ``rate`` a second."""
    _, _, acked = asyncio.run(feed(smtp, mails(paced), args.connections, rate))
    keys = [k for _, k in paced]
    confirmations(relay, keys, 120 + args.requests)
    return [relay.confirmed[k] - t for k, t in zip(keys, acked, strict=True)]


def confirmations(relay: Relay, keys: list[Key], timeout: float) -> None:
    def arrived() -> bool:
        with relay.lock:
            return all(k in relay.confirmed for k in keys)

    wait_until(arrived, timeout, "the confirmations")


# -- the table -----------------------------------------------------------------------


def verdict(row: Row) -> str:
    goals = [("intake", row.intake >= GOALS["intake"])]
    if not row.intake_only:
        goals += [("e2e", row.e2e >= GOALS["e2e"]), ("p99", row.percentile(0.99) < GOALS["p99"])]
    missed = [name for name, ok in goals if not ok]
    return "all met" if not missed else "missed: " + ", ".join(missed)


def table(rows: list[Row]) -> None:
    head = (
        f"{'configuration':<36} {'sink msg/s':>10} {'intake':>7} {'sink msg/s':>10} "
        f"{'e2e':>6} {'p50 s':>7} {'p99 s':>7} {'p99 s':>7}  goals"
    )
    print(head)
    print(
        f"{'':<36} {'(CHANGE)':>10} {'x sink':>7} {'(replies)':>10} {'x sink':>6} "
        f"{'sink/2':>7} {'sink/2':>7} {'e2e/2':>7}"
    )
    for row in rows:
        print(row_line(row))
    print(
        f"\ngoals: intake >= {GOALS['intake']}x, end to end >= {GOALS['e2e']}x, "
        f"p99 < {GOALS['p99']:.0f} s at half the sink's reply rate "
        "(latency: reply's 250 to the confirmation's arrival at the relay);\n"
        "the last column is the p99 at half mailbot's own end-to-end rate, a load it sustains"
    )


def row_line(row: Row) -> str:
    """One configuration's figures, as a line of the table."""
    if row.problem:
        return f"{row.setup.name:<36} not measured: {row.problem}"
    errors = f" ({row.errors} error lines in serve's log)" if row.errors else ""
    if row.mail_out.get("error"):
        errors += f" ({row.mail_out['error']} error mails sent)"
    intake = f"{row.setup.name:<36} {row.sink_intake:10.0f} {row.intake:7.3f}"
    replies = (
        f"{'-':>10} {'-':>6} {'-':>7} {'-':>7} {'-':>7}"
        if row.intake_only
        else f"{row.sink_replies:10.0f} {row.e2e:6.3f} {row.percentile(0.5):7.3f} "
        f"{row.percentile(0.99):7.3f} {row.percentile(0.99, sustained=True):7.3f}"
    )
    return f"{intake} {replies}  {verdict(row)}{errors}"


def rounds_line(row: Row) -> str:
    """Each intake round's ratio and the sink's rate in it."""
    pairs = zip(row.intake_rounds, row.sink_rounds, strict=True)
    return ", ".join(f"{ratio:.3f} (sink {rate:.0f}/s)" for ratio, rate in pairs)


def cpu_line(row: Row) -> str:
    """The CPU a reply of the burst took, and the cores the e2e goal takes at
    that cost: the goal's rate times the CPU per reply, if it all scaled out."""
    assert row.cpu_mailbot is not None
    parts = [f"mailbot {row.cpu_mailbot:.1f} ms"]
    total = row.cpu_mailbot
    if row.cpu_database is not None:
        parts.append(f"PostgreSQL {row.cpu_database:.1f} ms")
        total += row.cpu_database
    elif row.setup.database == "postgresql":
        parts.append("PostgreSQL not measured (not on this machine)")
    cores = GOALS["e2e"] * row.sink_replies * total / 1000
    return f"{', '.join(parts)}; {GOALS['e2e']}x the sink takes {cores:.1f} cores at this cost"


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def setups(args: argparse.Namespace) -> list[Setup]:
    workers = [int(w) for w in args.workers.split(",")]
    instances = [int(i) for i in args.instances.split(",")]
    chosen = []
    for database in args.databases.split(","):
        if database == "sqlite":
            chosen += [Setup("sqlite", w, 1) for w in workers if w <= 1]
        elif database == "postgresql":
            chosen += [Setup("postgresql", w, i) for i in instances for w in workers]
        else:
            raise SystemExit(f"--databases: unknown {database!r} (sqlite, postgresql)")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="CHANGE mails (2 tokens each)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", default="0,1,2,4", help="[workers] processes values")
    parser.add_argument("--instances", default="1,2", help="serve processes on PostgreSQL")
    parser.add_argument("--postgres", metavar="URL", help="a server where databases may be made")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument("--intake-only", action="store_true", help="no end-to-end phases")
    parser.add_argument("--rounds", type=int, default=3, help="intake rounds, sink beside mailbot")
    parser.add_argument("--relay", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay_main(args.relay)
        return
    if args.quick:
        args.requests, args.connections = 40, 2
    chosen = setups(args)
    print(
        f"{args.requests} CHANGE mails then {2 * args.requests} replies over "
        f"{args.connections} connections; {machine()}",
        flush=True,
    )
    needs_pg = any(s.database == "postgresql" for s in chosen) and not args.postgres
    rows = []
    with local_postgres() if needs_pg else nullcontext(args.postgres) as server:
        for n, setup in enumerate(chosen):
            rows.append(measure(setup, args, server, n))
            out = ", ".join(f"{k} {v}" for k, v in sorted(rows[-1].mail_out.items()))
            print(f"  {row_line(rows[-1])}", flush=True)  # kept if the run is cut short
            if rows[-1].intake_rounds:
                print(f"    intake rounds: {rounds_line(rows[-1])}", flush=True)
            if rows[-1].cpu_mailbot is not None:
                print(f"    CPU per reply: {cpu_line(rows[-1])}", flush=True)
            if rows[-1].mail_out:
                print(f"    mail out: {out}", flush=True)
    print()
    table(rows)
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
