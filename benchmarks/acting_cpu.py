"""CPU and SQL statements it takes to act on one validation reply, in process.

Acting (parse, find the validation, decide under the request's lock, queue
the confirmations) is most of a reply's cost end to end; this isolates it
from the listener, the sender and the relay. In a throwaway directory it
imports ``--requests`` services, acts on a CHANGE mail for each (each asks two
validations), reads the token mails from the Maildir they went to, stores an
``ACCEPT <token>`` reply to each (the replies ``smtp_throughput.py`` sends),
then acts on the replies and prints, per reply, the CPU of this process
(user + system) and the statements it sent to the database. Half the replies
leave their request waiting, half complete it.

On SQLite always; on PostgreSQL too with ``--postgres URL`` (a server where
databases may be made), or when a local server can be started from the
PostgreSQL binaries found on this machine (``--no-postgres`` skips it).

    python benchmarks/acting_cpu.py [--requests 300] [--postgres URL] [--no-postgres]
"""

from __future__ import annotations

import argparse
import email
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from email import policy
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_cpu import fresh_database, local_postgres  # sibling scripts, not a package
from smtp_throughput import AUTHSERV, BOT, Mail, asked, change, machine, reply, world

from mailbot.adapters import outgoing_transport
from mailbot.config import Settings
from mailbot.service import Mailbot
from mailbot.service.importer import ImportFile, apply_import
from mailbot.storage import engine as db


def settings_for(url: str, folder: Path) -> Settings:
    return Settings(
        bot={"address": BOT, "base_url": "https://bot.test"},
        database={"url": url},
        smtp={"authserv_id": AUTHSERV},
        outgoing={"transport": "maildir", "maildir": str(folder / "sent")},
        policy={"max_answers_per_hour": 1_000_000, "max_bad_tokens_per_hour": 1_000_000},
    )


def store(bot: Mailbot, mails: list[Mail]) -> None:
    for sender, recipient, raw in mails:
        bot.store_inbound(raw, source="smtp", recipients=(recipient,), envelope_from=sender)


def act_on_everything(bot: Mailbot) -> int:
    acted = 0
    while bot.process_next() is not None:
        acted += 1
    return acted


def token_mails(folder: Path) -> list[dict[str, Any]]:
    """What a reply to each token mail in the Maildir needs; the Maildir is emptied."""
    asks = []
    for path in sorted((folder / "sent" / "new").iterdir()):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.compat32)
        ask: dict[str, Any] = asked(message)
        ask["to"] = [parseaddr(str(message["To"]))[1]]
        if ask["token"]:
            asks.append(ask)
        path.unlink()
    return asks


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[int]]:
    """Counts the statements ``engine`` sends while the block runs."""
    count = [0]

    def seen(*args: Any) -> None:
        count[0] += 1

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield count
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)


def measure(url: str, folder: Path, requests: int) -> tuple[int, float, float]:
    """Replies acted on, CPU milliseconds and statements per reply."""
    settings = settings_for(url, folder)
    engine = db.make_engine(settings.database)
    db.upgrade(engine)
    engine.dispose()
    bot = Mailbot.from_settings(settings)
    try:
        apply_import(bot.engine, ImportFile.model_validate(world(requests)), bot.clock.now())
        store(bot, [change(i, "a") for i in range(requests)])
        act_on_everything(bot)
        bot.flush_outbox(outgoing_transport(settings))
        asks = token_mails(folder)
        store(bot, [reply(ask, n, "a") for n, ask in enumerate(asks)])
        with counting(bot.engine) as statements:
            started = time.process_time()
            acted = act_on_everything(bot)
            cpu = time.process_time() - started
    finally:
        bot.engine.dispose()
    if acted != len(asks) or acted == 0:
        raise SystemExit(f"acted on {acted} replies of {len(asks)}")
    return acted, cpu * 1000 / acted, statements[0] / acted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="CHANGE mails (2 replies each)")
    parser.add_argument("--postgres", metavar="URL", help="a server where databases may be made")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mailbot-acting-") as name:
        folder = Path(name)
        lite = folder / "sqlite"
        lite.mkdir()
        rows.append(("SQLite", *measure(f"sqlite:///{lite}/mailbot.db", lite, args.requests)))
        if not args.no_postgres:
            found = nullcontext(args.postgres) if args.postgres else local_postgres()
            with found as server:
                if server is None:
                    print("PostgreSQL: not measured (no --postgres URL and no initdb found)")
                else:
                    with fresh_database(server, f"acting_{os.getpid()}") as url:
                        (folder / "postgresql").mkdir()
                        rows.append(
                            ("PostgreSQL", *measure(url, folder / "postgresql", args.requests))
                        )
    print(f"{'database':<12} {'replies':>8} {'CPU ms/reply':>13} {'statements/reply':>17}")
    for label, acted, cpu, statements in rows:
        print(f"{label:<12} {acted:>8} {cpu:>13.2f} {statements:>17.1f}")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
