"""The outbox under SIGKILL: how many mails a killed sender loses, per kill.

The outbox promises each queued mail reaches the relay once: nothing lost,
nothing sent twice (``mailbot/outgoing/outbox.py``). The SMTP transport hands
the relay MAIL, RCPT, DATA and the whole body, then the outbox commits the row
as sent, then the transport writes the final dot that makes the relay take the
mail (``mailbot/adapters/smtp_out.py``). A sender killed before that commit
leaves a session without its dot, which the relay discards, and the row is
sent again once its lease runs out; one killed after the dot has sent the
mail. A sender killed between the commit and the dot has marked a mail sent
that the relay never took: that mail is lost. This measures how often that
happens when the sending process is killed at random moments.

A counting relay (aiosmtpd, in a thread of this process, on a free loopback
port) answers 250 to every mail and counts each by its ``Message-ID`` once
the final dot is in (``handle_DATA``). For each database and load condition,
a fresh working directory gets a ``mailbot.toml`` (outgoing mail over SMTP to
the relay), ``mailbot init``, and ``--mails`` queued outbox rows written
straight into the ``outbox`` table: ~1.5 KB mails, each with its own
``Message-ID`` and recipient. Then, ``--kills`` times: ``mailbot sweep --now
T`` (which flushes the outbox) is started, with T two minutes later at each
round, past the outbox's 50 s lease, so that rows a killed sender had claimed
are due again; once the relay has counted a random 1 to 60 more mails, the
sweep is killed (SIGKILL) after a further random delay of up to one mail's
time (as measured in that round), so that the kill falls anywhere in a mail's
cycle rather than just after a 250; a round whose sweep exits first (nothing
left to send) ends the loop. A last sweep, a day later, runs to its end and
sends whatever is still due.

Then, against the relay's counts: **lost** = rows marked sent whose
``Message-ID`` never reached the relay; **doubled** = ``Message-ID``s that
reached it more than once; **unsent** = rows not marked sent at the end
(should be 0: every row is due again by the last sweep). ``lost/kill`` is
the figure to compare: the chance that a kill lands in the window between
the commit and the dot. That window opens when the commit can no longer be
undone by a kill, which comes before the sender hears that it is made (on
PostgreSQL once the ``COMMIT`` is on its way to the server, on SQLite once
its frames are in the write-ahead log, before any sync to disk): whatever
the sender does between that moment and the dot (waiting for the server's
answer or the disk, waiting for its turn on a busy CPU) widens it, which
``mailbot/storage/handover.py`` is there to prevent.

Load conditions: ``idle``, and ``busy`` with ``--hogs`` CPU-bound processes
(``while True: pass``) running beside the whole kill loop, so that the
sender is preempted where it would otherwise run on. The machine's CPU count
and load average are printed with the table. It is a measurement: it prints
figures and asserts nothing about them.

On SQLite (a temporary directory); on PostgreSQL too when a local server can
be started from the PostgreSQL binaries found on this machine (a database of
its own for each load condition).

    python benchmarks/sender_kills.py [--kills 60] [--mails 3000] [--hogs 2]
        [--conditions idle,busy] [--no-postgres | --no-sqlite] [--seed N]
"""

from __future__ import annotations

import argparse
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
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_cpu import fresh_database, local_postgres  # a sibling script, not a package

from mailbot.storage.tables import OutboxRow

MAILBOT = str(Path(sys.executable).parent / "mailbot")
BOT = "changes@mailbot.localhost"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
STEP = timedelta(minutes=2)
"""Between two rounds' clocks: more than the outbox's 50 s lease."""
MOST = 60
"""A round's sweep is killed after 1 to this many more mails reached the relay."""
ROUND_TIMEOUT = 300.0
"""A bound on one round's wait for its mails, not on how fast they must come."""
FINAL_TIMEOUT = 1800.0
FIRST_INTERVAL = 0.01
"""The kill delay's bound before a round has timed a mail (seconds)."""

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class Failed(Exception):
    """A cell of the table could not be measured; the row says why."""


# -- the counting relay --------------------------------------------------------------


class Relay:
    """Counts each mail it is handed by its Message-ID, after the final dot."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.arrivals: list[float] = []
        """``time.monotonic()`` of each mail, in order."""
        self.changed = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or b""
        found = _MESSAGE_ID.search(raw.split(b"\r\n\r\n", 1)[0])
        message_id = found.group(1).decode(errors="replace") if found else ""
        with self.changed:
            self.counts[message_id] += 1
            self.arrivals.append(time.monotonic())
            self.changed.notify_all()
        return "250 2.0.0 OK"

    @property
    def total(self) -> int:
        with self.changed:
            return len(self.arrivals)

    def wait_for(self, total: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
        """Until ``total`` mails are in (True), the process exits or time runs out (False)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.arrivals) < total:
                left = deadline - time.monotonic()
                if left <= 0 or process.poll() is not None:
                    return False
                self.changed.wait(min(left, 0.05))
            return True

    def interval(self, since: int) -> float | None:
        """The mean time between the mails counted from index ``since`` on."""
        with self.changed:
            times = self.arrivals[since:]
        return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None

    def received(self, tag: str) -> Counter[str]:
        """The counts of the Message-IDs of one cell."""
        with self.changed:
            return Counter({k: n for k, n in self.counts.items() if f".{tag}@" in k})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def counting_relay() -> Iterator[tuple[Relay, int]]:
    from aiosmtpd.controller import Controller

    relay, port = Relay(), free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=port, ready_timeout=30)
    controller.start()
    try:
        yield relay, port
    finally:
        controller.stop()


# -- processes -------------------------------------------------------------------------


@contextmanager
def hogs(count: int) -> Iterator[None]:
    """``count`` CPU-bound processes, killed on exit."""
    spinning: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            spinning.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for process in spinning:
            process.kill()
        for process in spinning:
            process.wait()


@contextmanager
def running(command: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process, killed (SIGKILL) on exit if it is still running."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=out, env=clean_env())
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


def clean_env() -> dict[str, str]:
    """The environment without ``MAILBOT_`` overrides: the config file alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}


def tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "no output"


def mailbot(root: Path, *args: str, timeout: float = 600) -> None:
    """A mailbot command that must succeed."""
    log = root / "mailbot.log"
    with log.open("ab") as out:
        done = subprocess.run(
            [MAILBOT, "--config", str(root / "mailbot.toml"), *args],
            cwd=root,
            stdout=out,
            stderr=out,
            env=clean_env(),
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise Failed(f"mailbot {args[0]} exited {done.returncode}: {tail(log)}")


# -- the database -----------------------------------------------------------------------


@contextmanager
def database_for(kind: str, root: Path, server: str | None, n: int) -> Iterator[str]:
    """A fresh database for one cell (an SQLite file, or a PostgreSQL database dropped after)."""
    if kind == "sqlite":
        (root / "var").mkdir()
        yield f"sqlite:///{root / 'var' / 'mailbot.db'}"
        return
    assert server is not None
    with fresh_database(server, f"bench_kills_{os.getpid()}_{n}") as url:
        yield url


def config_text(url: str, relay_port: int) -> str:
    return (
        f'[bot]\naddress = "{BOT}"\nbase_url = "http://127.0.0.1:8080"\n'
        f'[database]\nurl = "{url}"\n'
        f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {relay_port}\n'
        "starttls = false\nssl = false\n"
    )


def payload(i: int, tag: str, to: str) -> tuple[str, bytes]:
    """A mail as mailbot sends one, about 1.5 KB, and its Message-ID."""
    message_id = f"<outbox-{i}.{tag}@mailbot.localhost>"
    head = (
        f"From: mailbot <{BOT}>\r\nTo: {to}\r\n"
        f"Subject: [MB-{i:06d}] Your change request for site{i}.test is open\r\n"
        "Date: Mon, 2 Mar 2026 09:00:00 +0000\r\n"
        f"Message-ID: {message_id}\r\nReply-To: {BOT}\r\nAuto-Submitted: auto-generated\r\n"
        f"X-Mailbot-Event: request-opened\r\nX-Mailbot-Request: MB-{i:06d}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    body = (
        f"Hello,\r\n\r\nYour request MB-{i:06d} to change the technical contact of "
        f"site{i}.test is open.\r\nEach contact it names is asked to approve it by mail; "
        "you will hear from us once they have answered.\r\n\r\n"
        "What changes:\r\n  tech: Old Contact <old@hosting.test> -> New Contact "
        "<new@agency.test>\r\n\r\n"
        "To cancel it, reply to this mail with CANCEL on the first line, or open\r\n"
        f"http://127.0.0.1:8080/r/MB-{i:06d}\r\n\r\n"
        "The request expires in 14 days if it is not approved.\r\n\r\n--\r\n"
        "Customer services, Example Hosting SARL\r\n"
        "12 rue des Lilas, 75011 Paris - +33 1 23 45 67 89\r\n\r\n"
        + "This message is sent automatically; replies reach the change bot, "
        "not a person.\r\n" * 6
    )
    return message_id, (head + body).encode()


def load_outbox(url: str, mails: int, tag: str) -> None:
    """``mails`` queued rows, due at ``START``, written straight into the outbox."""
    table = OutboxRow.__table__  # type: ignore[attr-defined]
    rows = []
    for i in range(mails):
        to = f"contact{i}@customer{i % 97}.test"
        message_id, raw = payload(i, tag, to)
        rows.append(
            {
                "message_id": message_id,
                "event": "request-opened",
                "request_id": None,
                "validation_id": None,
                "to_email": to,
                "envelope_from": BOT,
                "subject": f"[MB-{i:06d}] Your change request for site{i}.test is open",
                "payload": raw,
                "intent": None,
                "carries_secret": False,
                "status": "queued",
                "attempts": 0,
                "next_attempt_at": START,
                "last_error": None,
                "created_at": START,
                "queued_at": START,
                "sent_at": None,
            }
        )
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for at in range(0, len(rows), 500):
                connection.execute(sa.insert(table), rows[at : at + 500])
    finally:
        engine.dispose()


def outbox_status(url: str) -> dict[str, str]:
    """Each row's Message-ID and status."""
    table = OutboxRow.__table__  # type: ignore[attr-defined]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(sa.select(table.c.message_id, table.c.status))
            return {str(message_id): str(status) for message_id, status in found}
    finally:
        engine.dispose()


# -- one cell ------------------------------------------------------------------------------


@dataclass
class Cell:
    database: str
    condition: str
    kills: int = 0
    exits: int = 0
    """Rounds whose sweep exited before its kill (nothing left to send)."""
    timeouts: int = 0
    """Rounds killed because their mails did not come within ``ROUND_TIMEOUT``."""
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    doubled: int = 0
    unsent: int = 0
    seconds: float = 0.0
    problem: str = ""
    unavailable: bool = False
    """Not measured for want of a database server, not for a failure."""

    @property
    def name(self) -> str:
        return "SQLite" if self.database == "sqlite" else "PostgreSQL"


def measure(
    cell: Cell,
    relay: Relay,
    relay_port: int,
    server: str | None,
    args: argparse.Namespace,
    rng: random.Random,
    n: int,
) -> None:
    begin = time.monotonic()
    tag = f"{os.getpid()}x{n}"
    with (
        tempfile.TemporaryDirectory(prefix="mailbot-kills-") as folder,
        database_for(cell.database, Path(folder), server, n) as url,
    ):
        root = Path(folder)
        (root / "mailbot.toml").write_text(config_text(url, relay_port))
        mailbot(root, "init")
        load_outbox(url, args.mails, tag)
        with hogs(args.hogs) if cell.condition == "busy" else nullcontext():
            now = kill_loop(cell, relay, root, args, rng)
            mailbot(
                root, "sweep", "--now", (now + timedelta(days=1)).isoformat(), timeout=FINAL_TIMEOUT
            )
        count(cell, relay.received(tag), outbox_status(url))
    cell.seconds = time.monotonic() - begin


def kill_loop(
    cell: Cell, relay: Relay, root: Path, args: argparse.Namespace, rng: random.Random
) -> datetime:
    """Start and kill sweeps, ``args.kills`` times or until one exits; returns its last clock."""
    interval = FIRST_INTERVAL
    now = START
    for round_ in range(args.kills):
        now = START + round_ * STEP
        command = [MAILBOT, "--config", str(root / "mailbot.toml"), "sweep", "--now"]
        before = relay.total
        target = before + rng.randint(1, MOST)
        with running([*command, now.isoformat()], root, root / "sweeps.log") as sweep:
            arrived = relay.wait_for(target, sweep, ROUND_TIMEOUT)
            if arrived:
                interval = relay.interval(before) or interval
                time.sleep(rng.uniform(0, interval))
            if sweep.poll() is None:
                os.kill(sweep.pid, signal.SIGKILL)
                sweep.wait()
                cell.kills += 1
                cell.timeouts += not arrived
                continue
        if sweep.returncode != 0:
            raise Failed(f"mailbot sweep exited {sweep.returncode}: {tail(root / 'sweeps.log')}")
        cell.exits += 1
        break
    return now


def count(cell: Cell, received: Counter[str], status: dict[str, str]) -> None:
    sent = {message_id for message_id, state in status.items() if state == "sent"}
    cell.sent = len(sent)
    cell.delivered = len(received)
    cell.lost = len(sent - received.keys())
    cell.doubled = sum(1 for n in received.values() if n > 1)
    cell.unsent = len(status) - len(sent)


# -- the table ------------------------------------------------------------------------------

HEAD = (
    f"{'database':<11} {'load':<5} {'kills':>5} {'mails sent':>10} {'delivered':>9} "
    f"{'lost':>5} {'doubled':>7} {'unsent':>6} {'lost/kill':>9} {'seconds':>8}"
)


def row_line(cell: Cell) -> str:
    if cell.problem:
        return f"{cell.name:<11} {cell.condition:<5} not measured: {cell.problem}"
    per_kill = f"{cell.lost / cell.kills:9.4f}" if cell.kills else f"{'-':>9}"
    notes = []
    if cell.exits:
        notes.append("the queue emptied before the last kill")
    if cell.timeouts:
        notes.append(f"{cell.timeouts} rounds killed on their timeout")
    return (
        f"{cell.name:<11} {cell.condition:<5} {cell.kills:5d} {cell.sent:10d} "
        f"{cell.delivered:9d} {cell.lost:5d} {cell.doubled:7d} {cell.unsent:6d} "
        f"{per_kill} {cell.seconds:8.0f}" + (f"  ({'; '.join(notes)})" if notes else "")
    )


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def interrupted(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM: unwind, so that servers, hogs and directories go."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=60, help="kills per database and load")
    parser.add_argument("--mails", type=int, default=3000, help="queued mails per cell")
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes when busy")
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--seed", type=int, help="for the kill points (default: random)")
    args = parser.parse_args()
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if not conditions or set(conditions) - {"idle", "busy"}:
        parser.error("--conditions: idle, busy or both")
    chosen = (("sqlite", args.no_sqlite), ("postgresql", args.no_postgres))
    databases = [database for database, off in chosen if not off]
    if not databases:
        parser.error("nothing to measure: both --no-sqlite and --no-postgres")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)  # noqa: S311 (kill points, not secrets)
    print(
        f"{args.mails} queued mails, {args.kills} kills per cell, busy = {args.hogs} "
        f"CPU-bound processes, seed {seed}; {machine()}",
        flush=True,
    )
    for signum in (signal.SIGINT, signal.SIGTERM):  # even where started with SIGINT ignored
        signal.signal(signum, interrupted)
    cells: list[Cell] = []
    try:
        with ExitStack() as stack:
            relay, relay_port = stack.enter_context(counting_relay())
            server = None
            if "postgresql" in databases:
                server = stack.enter_context(local_postgres())
            for database in databases:
                for condition in conditions:
                    cell = Cell(database, condition)
                    cells.append(cell)
                    if database == "postgresql" and server is None:
                        cell.problem = "no local PostgreSQL server could be started"
                        cell.unavailable = True
                    else:
                        try:
                            measure(cell, relay, relay_port, server, args, rng, len(cells))
                        except (
                            Failed,
                            OSError,
                            subprocess.TimeoutExpired,
                            sa.exc.SQLAlchemyError,
                        ) as exc:
                            cell.problem = str(exc).splitlines()[0] if str(exc) else repr(exc)
                    print(f"  {row_line(cell)}", flush=True)  # kept if the run is cut short
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(HEAD)
    for cell in cells:
        print(row_line(cell))
    print(
        "\nlost: marked sent, never reached the relay; doubled: reached it more than once; "
        "unsent: not marked sent after the last sweep"
    )
    print(f"\nmachine: {machine()}")
    return 1 if any(cell.problem and not cell.unavailable for cell in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
