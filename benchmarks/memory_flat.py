"""Whether ``mailbot serve``'s resident memory stays flat over a long run of mail.

This starts the installed ``mailbot serve`` in a throwaway directory (SQLite,
or the PostgreSQL database given with ``--postgres URL``), with its outgoing
mail going to a relay run here (an aiosmtpd sink that reads what it is sent),
imports a world of customers, and feeds it ``--messages`` messages (about
1.5 KB each) over SMTP on a few connections, each connection sending a few
hundred messages and then reconnecting, as MTAs do. The mix is what a
registrar's bot receives: CHANGE requests from service admins (which send
token mails), ACCEPT and REFUSE answers with the real tokens read from those
mails at the relay, or as plain replies to their reply address, STATUS and
HELP, mail from strangers, and bounces sent to the VERP addresses of mail
that went out.

The feed waits whenever more than ``--backlog`` stored messages are not yet
acted on (read from ``/metrics``): memory that grows with a backlog is a
queue, not a leak, and the figure wanted here is the leak. The serve
process's resident memory (``VmRSS``) is read every ``--interval`` seconds
and after each tenth of the messages; at the end, once everything is acted
on and sent, the curve is printed with the growth from the first tenth to the
end, and PASS or FAIL against ``--limit-mb`` (the exit status says the same).

``--workers N`` sets ``[workers] processes = N``: serve's listener only
stores and N worker processes act on the mail; the memory read is then
serve's and its workers' together.

``--tracemalloc`` runs serve under Python's allocation tracer instead (slower,
for finding a leak) and prints the lines that allocated the most between the
first tenth and the end.

    python benchmarks/memory_flat.py [--messages 100000] [--connections 4]
        [--postgres postgresql+psycopg://...] [--workers N] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.utils import parseaddr
from functools import partial
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

MAILBOT = str(Path(sys.executable).parent / "mailbot")
BOT = "changes@mailbot.localhost"
SERVICES = 2000
PER_SESSION = 200
"""Messages a client connection sends before it says QUIT and connects again."""
SESSION_SECONDS = 120.0
"""And the longest it stays connected (the listener closes sessions past a lifetime)."""
MIX = (
    ("change", 18),
    ("accept", 30),
    ("reply", 7),
    ("refuse", 4),
    ("status", 10),
    ("help", 8),
    ("stranger", 15),
    ("bounce", 8),
)
PADDING = (
    "\r\n--\r\nAlice Martin, Customer services\r\nExample Hosting SARL, 12 rue des Lilas, "
    "75011 Paris\r\n\r\n"
    + "> Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    * 13
)

_TOKEN = re.compile(r"/v/([0-9A-Z]{20})")
_held: list[socket.socket] = []


def free_port() -> int:
    """A loopback port held until the benchmark ends (bound with SO_REUSEADDR, not
    listening), so that no other program is handed it before our server takes it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _held.append(sock)
    return int(sock.getsockname()[1])


# -- the relay: takes what mailbot sends, remembers what the feed answers ------------


@dataclass(frozen=True)
class Ask:
    """A validation mail: whom it went to, its token and how to reply to it."""

    to: str
    token: str
    reply_to: str
    message_id: str
    request_id: str


@dataclass
class Relay:
    """The outgoing relay: accepts everything and keeps a bounded window of what
    the feed needs (tokens to answer, request ids to ask about, VERP addresses
    to bounce to)."""

    asks: deque[Ask] = field(default_factory=lambda: deque(maxlen=5000))
    requests: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=2000))
    sent: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=2000))
    events: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        to = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        message = email.message_from_bytes(raw, policy=policy.default)
        event = str(message.get("X-Mailbot-Event", "?"))
        request_id = str(message.get("X-Mailbot-Request", ""))
        with self.lock:
            self.events[event] += 1
            self.sent.append((envelope.mail_from or "", to, str(message.get("Message-ID", ""))))
            if request_id:
                self.requests.append((to, request_id))
            if event == "validation-requested":
                body = message.get_body(("plain",))
                found = _TOKEN.search(str(body.get_content()) if body is not None else "")
                if found:
                    self.asks.append(
                        Ask(
                            to,
                            found.group(1),
                            str(message.get("Reply-To", BOT)),
                            str(message.get("Message-ID", "")),
                            request_id,
                        )
                    )
        return "250 2.0.0 OK"


# -- the world and the mix -------------------------------------------------------------


def admin(i: int) -> str:
    return f"admin{i}@customer{i % 97}.test"


def world() -> dict[str, Any]:
    contacts = [
        {"handle": f"AD{i}-MB", "email": admin(i), "name": f"Admin {i}", "language": "en"}
        for i in range(SERVICES)
    ] + [
        {"handle": f"TE{i}-MB", "email": f"tech{i}@hosting{i % 13}.test", "name": f"Tech {i}"}
        for i in range(SERVICES // 10)
    ]
    services = [
        {
            "name": f"site{i}.test",
            "kind": "domain",
            "admin": f"AD{i}-MB",
            "tech": f"TE{i // 10}-MB",
            "billing": f"AD{i}-MB",
        }
        for i in range(SERVICES)
    ]
    return {"contacts": contacts, "services": services}


class Mix:
    """Generates the messages, in a realistic proportion, from what the relay saw."""

    def __init__(self, relay: Relay, run: str, seed: int = 7) -> None:
        self.relay = relay
        self.run = run
        self.random = random.Random(seed)  # noqa: S311 (a repeatable mix, not a secret)
        self.kinds = [kind for kind, weight in MIX for _ in range(weight)]
        self.count = 0
        self.recipient = BOT
        self.made: Counter[str] = Counter()

    def next(self) -> tuple[str, str, bytes]:
        """(envelope sender, recipient, raw message) of the next message."""
        self.count += 1
        kind = self.random.choice(self.kinds)
        made: tuple[str, bytes] | None = getattr(self, f"_{kind}")()
        if made is None:  # no token mail to answer yet: ask for a change, which sends some
            kind, made = "change", self._change()
        self.made[kind] += 1
        sender, raw = made
        return sender, self.recipient, raw

    def _message(
        self,
        sender: str,
        subject: str,
        body: str,
        *,
        to: str = BOT,
        extra: str = "",
    ) -> bytes:
        self.recipient = parseaddr(to)[1]
        head = (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "Date: Mon, 2 Mar 2026 09:00:00 +0000\r\n"
            f"Message-ID: <m{self.count}.{self.run}@client.test>\r\n{extra}"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        )
        return (head + body + "\r\n" + PADDING).encode()

    def _change(self) -> tuple[str, bytes]:
        i = self.random.randrange(SERVICES)
        new = f"newtech{self.count}@agency{self.count % 89}.test"
        body = f"CHANGE site{i}.test\r\ntech: {new}\r\n"
        return admin(i), self._message(admin(i), f"CHANGE site{i}.test", body)

    def _answer(self, verb: str) -> tuple[str, bytes] | None:
        with self.relay.lock:
            ask = self.relay.asks.popleft() if self.relay.asks else None
        if ask is None:
            return None
        body = f"{verb} {ask.token}\r\n"
        return ask.to, self._message(ask.to, f"{verb} {ask.token}", body)

    def _accept(self) -> tuple[str, bytes] | None:
        return self._answer("ACCEPT")

    def _refuse(self) -> tuple[str, bytes] | None:
        return self._answer("REFUSE")

    def _reply(self) -> tuple[str, bytes] | None:
        """A plain reply to a validation mail, without the token typed."""
        with self.relay.lock:
            ask = self.relay.asks.popleft() if self.relay.asks else None
        if ask is None:
            return None
        thread = f"In-Reply-To: {ask.message_id}\r\nReferences: {ask.message_id}\r\n"
        subject = f"Re: [{ask.request_id}] Validation requested"
        return ask.to, self._message(
            ask.to, subject, "ACCEPT\r\n\r\nThanks.\r\n", to=ask.reply_to, extra=thread
        )

    def _status(self) -> tuple[str, bytes] | None:
        with self.relay.lock:
            known = self.relay.requests[-1] if self.relay.requests else None
        if known is None:
            return None
        to, request_id = known
        return to, self._message(to, f"STATUS {request_id}", f"STATUS {request_id}\r\n")

    def _help(self) -> tuple[str, bytes]:
        sender = admin(self.random.randrange(SERVICES))
        return sender, self._message(sender, "HELP", "HELP\r\n")

    def _stranger(self) -> tuple[str, bytes]:
        sender = f"someone{self.count}@elsewhere{self.count % 31}.test"
        body = "Hello, I would like to change the contact of my domain. How do I do it?\r\n"
        return sender, self._message(sender, "Question about my domain", body)

    def _bounce(self) -> tuple[str, bytes] | None:
        with self.relay.lock:
            sent = self.relay.sent[-1] if self.relay.sent else None
        if sent is None or "+" not in sent[0]:
            return None
        verp, to, message_id = sent
        self.recipient = verp
        return "", dsn(verp, to, message_id, self.count)


def dsn(verp: str, to: str, message_id: str, n: int) -> bytes:
    """An RFC 3464 delivery report for a mail mailbot sent, to its VERP address."""
    text = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>\r\n"
        f"To: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn{n}@mx.customer.test>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; "
        'report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\nYour message to {to} could not be "
        "delivered.\r\n" + "This is the mail system at host mx.customer.test.\r\n" * 12 + "\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.test\r\n\r\n"
        f"Final-Recipient: rfc822; {to}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{to}>: no such user\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {message_id}\r\nSubject: Your request\r\n\r\n--B--\r\n"
    )
    return text.encode()


# -- the feed --------------------------------------------------------------------------


class Closed(Exception):
    """The listener closed the session (421) or the connection dropped."""


async def expect(reader: asyncio.StreamReader, code: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line or line.startswith(b"421"):
            raise Closed(line.decode(errors="replace"))
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")
        if line[3:4] != b"-":
            return line


@dataclass
class Feed:
    """Sends the mix to serve over ``connections`` connections, holding back
    while the backlog of stored mail not yet acted on is over ``backlog``."""

    port: int
    mix: Mix
    total: int
    backlog: int
    web_port: int
    acked: int = 0
    waiting: int = 0
    """Stored messages not acted on yet, as /metrics last said."""

    async def session(self) -> None:
        """Connections one after another, each for up to PER_SESSION messages or
        SESSION_SECONDS; a message answered 421 (the listener closing a session)
        is sent again on the next connection."""
        pending: list[tuple[str, str, bytes]] = []
        while pending or self.mix.count < self.total:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            with contextlib.suppress(Closed):
                await self._send_some(reader, writer, pending)
            writer.close()

    async def _send_some(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: list[tuple[str, str, bytes]],
    ) -> None:
        """Send messages on one connection; one not acknowledged stays in ``pending``."""
        opened = time.monotonic()
        await expect(reader, b"220")
        writer.write(b"EHLO feed.test\r\n")
        await expect(reader, b"250")
        for _ in range(PER_SESSION):
            if time.monotonic() - opened > SESSION_SECONDS:
                break
            while self.waiting > self.backlog:
                await asyncio.sleep(0.2)
            if not pending:
                if self.mix.count >= self.total:
                    break
                pending.append(self.mix.next())
            sender, recipient, raw = pending[0]
            writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
            await expect(reader, b"250")
            writer.write(f"RCPT TO:<{recipient}>\r\nDATA\r\n".encode())
            await expect(reader, b"250")
            await expect(reader, b"354")
            writer.write(raw.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            await expect(reader, b"250")
            pending.clear()
            self.acked += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()

    async def watch_backlog(self) -> None:
        while True:
            found = await asyncio.to_thread(scrape, self.web_port)
            self.waiting = int(found.get('mailbot_inbound_messages{status="received"}', 0))
            await asyncio.sleep(1.0)


def scrape(web_port: int) -> dict[str, float]:
    """The samples of serve's /metrics, by name and labels."""
    try:
        url = f"http://127.0.0.1:{web_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# -- memory -----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """The resident memory of a process and of its children (serve's workers)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1]) / 1024
    for child in children(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_mb(child)
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


@dataclass
class Sampler:
    """Reads serve's VmRSS every ``interval`` seconds, and when asked to."""

    pid: int
    feed: Feed
    interval: float
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int, float, str]] = field(default_factory=list)

    def mark(self, label: str = "") -> float:
        rss = rss_mb(self.pid)
        self.samples.append((time.monotonic() - self.started, self.feed.acked, rss, label))
        return rss

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.mark()


# -- serve -------------------------------------------------------------------------------

TRACED_SERVE = """
import os, signal, sys, tracemalloc
tracemalloc.start(8)
count = 0
def dump(signum, frame):
    global count
    count += 1
    tracemalloc.take_snapshot().dump("snapshot.part")
    os.replace("snapshot.part", f"snapshot-{count}.tracemalloc")
signal.signal(signal.SIGUSR1, dump)
from mailbot.cli import main
sys.argv = ["mailbot", "serve"]
sys.exit(main())
"""


def write_config(
    root: Path, smtp: int, web: int, relay: int, database: str, workers: int = 0
) -> None:
    (root / "mailbot.toml").write_text(
        f'[bot]\naddress = "{BOT}"\nbase_url = "http://127.0.0.1:{web}"\n'
        f'[database]\nurl = "{database}"\n'
        f"[smtp]\nport = {smtp}\n[web]\nport = {web}\n"
        f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {relay}\n'
        f"[workers]\nprocesses = {workers}\n"
    )


def run(command: list[str], root: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=root, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.decode(errors='replace')}")


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"mailbot serve is not listening on port {port} (see its log)")


def settle(feed: Feed, web_port: int, timeout: float = 900) -> dict[str, float]:
    """Wait until every stored message is acted on and the outbox is empty."""
    deadline = time.monotonic() + timeout
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        found = scrape(web_port)
        waiting = found.get('mailbot_inbound_messages{status="received"}', 1)
        if waiting == 0 and found.get("mailbot_outbox_queued", 1) == 0:
            return found
        time.sleep(1)
    return found


async def feed_all(
    feed: Feed,
    sampler: Sampler,
    connections: int,
    tenths: list[float],
    snapshot: Callable[[int], None] | None,
) -> None:
    watcher = asyncio.create_task(feed.watch_backlog())
    ticker = asyncio.create_task(sampler.run())

    async def marks() -> None:
        step = max(feed.total // 10, 1)
        for k in range(1, 11):
            while feed.acked < min(k * step, feed.total):
                await asyncio.sleep(0.1)
            tenths.append(sampler.mark(f"{k * 10}%"))
            if k == 1 and snapshot is not None:
                await asyncio.to_thread(snapshot, 1)
            print(
                f"  {k * 10:3d}%  {feed.acked:7d} acknowledged  "
                f"{time.monotonic() - sampler.started:7.0f} s  RSS {tenths[-1]:7.1f} MB",
                flush=True,
            )

    marker = asyncio.create_task(marks())
    await asyncio.gather(*(feed.session() for _ in range(connections)))
    await marker
    for task in (watcher, ticker):
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=500, help="stored, not acted on")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--limit-mb", type=float, default=50.0)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database to use")
    parser.add_argument("--workers", type=int, default=0, help="[workers] processes")
    parser.add_argument("--tracemalloc", action="store_true", help="trace serve's allocations")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
    with tempfile.TemporaryDirectory(prefix="mailbot-memory-") as folder:
        root = Path(folder)
        smtp_port, web_port, relay_port = free_port(), free_port(), free_port()
        relay = Relay()
        controller = Controller(relay, hostname="127.0.0.1", port=relay_port)
        _held.pop().close()  # the relay binds its own port now
        controller.start()
        database = args.postgres or "sqlite:///var/mailbot.db"
        write_config(root, smtp_port, web_port, relay_port, database, args.workers)
        (root / "world.json").write_text(json.dumps(world()))
        run([MAILBOT, "init"], root, env)
        run([MAILBOT, "import", "world.json"], root, env)
        command = [MAILBOT, "serve"]
        if args.tracemalloc:
            command = [sys.executable, "-c", TRACED_SERVE]
        log_path = root / "serve.log"
        with log_path.open("wb") as log_file:
            serve = subprocess.Popen(command, cwd=root, stdout=log_file, stderr=log_file, env=env)
        try:
            wait_listening(smtp_port, serve)
            result = measure(args, serve, relay, smtp_port, web_port, root)
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
            controller.stop()
        lines = log_path.read_text(errors="replace").splitlines()
        problems = [n for n, line in enumerate(lines) if "Traceback" in line or " ERROR " in line]
        if problems:
            print(f"\nserve logged {len(problems)} error line(s), the first:")
            print("\n".join(lines[problems[0] : problems[0] + 40]))
    sys.exit(result)


def measure(
    args: argparse.Namespace,
    serve: subprocess.Popen[bytes],
    relay: Relay,
    smtp_port: int,
    web_port: int,
    root: Path,
) -> int:
    feed = Feed(smtp_port, Mix(relay, str(os.getpid())), args.messages, args.backlog, web_port)
    sampler = Sampler(serve.pid, feed, args.interval)
    store = "PostgreSQL" if args.postgres else "SQLite"
    store += f", {args.workers} worker process(es)" if args.workers else ", acting in serve"
    print(
        f"mailbot serve ({store}{', traced' if args.tracemalloc else ''}), "
        f"{args.messages} messages over {args.connections} connections, "
        f"backlog held under {args.backlog}; RSS at start {sampler.mark('start'):.1f} MB",
        flush=True,
    )
    tenths: list[float] = []
    started = time.monotonic()
    snapshot = partial(_snapshot, serve, root) if args.tracemalloc else None
    asyncio.run(feed_all(feed, sampler, args.connections, tenths, snapshot))
    fed = time.monotonic() - started
    found = settle(feed, web_port)
    elapsed = time.monotonic() - started
    final = sampler.mark("end")
    print(f"\nfed in {fed:.0f} s ({feed.acked / fed:.0f} msg/s), all acted on in {elapsed:.0f} s")
    print("sent by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(feed.mix.made.items())))
    print("mail out: " + ", ".join(f"{k} {n}" for k, n in sorted(relay.events.items())))
    handled = {k: int(v) for k, v in found.items() if k.startswith("mailbot_inbound_handled_total")}
    print(f"acted on: {handled}")
    print("\nRSS curve (seconds, acknowledged, MB):")
    for at, acked, rss, label in _thin(sampler.samples, 40):
        print(f"  {at:7.0f} s  {acked:7d}  {rss:7.1f} MB  {label}")
    growth = final - tenths[0]
    slope = growth / max(feed.acked - feed.acked // 10, 1) * 10_000
    verdict = "PASS" if growth <= args.limit_mb else "FAIL"
    print(
        f"\nRSS after the first 10%: {tenths[0]:.1f} MB; at the end: {final:.1f} MB; "
        f"growth {growth:+.1f} MB ({slope:+.2f} MB per 10,000 messages): "
        f"{verdict} (limit +{args.limit_mb:.0f} MB)"
    )
    if args.tracemalloc:
        _snapshot(serve, root, 2)
        _compare(root)
    return 0 if verdict == "PASS" else 1


def _thin(
    samples: list[tuple[float, int, float, str]], most: int
) -> Iterator[tuple[float, int, float, str]]:
    """The labelled samples and an even selection of the others."""
    step = max(len(samples) // most, 1)
    for n, sample in enumerate(samples):
        if sample[3] or n % step == 0:
            yield sample


def _snapshot(serve: subprocess.Popen[bytes], root: Path, n: int) -> None:
    serve.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (root / f"snapshot-{n}.tracemalloc").exists():
        time.sleep(0.5)


def _compare(root: Path) -> None:
    import tracemalloc

    first = tracemalloc.Snapshot.load(str(root / "snapshot-1.tracemalloc"))
    last = tracemalloc.Snapshot.load(str(root / "snapshot-2.tracemalloc"))
    print("\nallocations grown most from the first 10% to the end:")
    for stat in last.compare_to(first, "traceback")[:15]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB  {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-6:]:
            print(f"      {line}")


if __name__ == "__main__":
    main()
