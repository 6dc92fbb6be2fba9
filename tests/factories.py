"""Test data: the standard world of contacts and services, raw mails, and readers
for what mailbot queued or sent."""

from __future__ import annotations

import email
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from mailbot.service import Mailbot
from mailbot.service.importer import ImportFile, apply_import
from mailbot.storage.engine import transaction
from mailbot.storage.tables import OutboxRow
from mailbot.views import report_json

ALICE = "alice@example.com"  # admin of example.com, French speaker
BOB = "bob@example.com"  # tech contact of example.com
BILL = "bill@example.com"  # billing contact of example.com
CAROL = "carol@agency.test"  # an agency contact, known
DAVE = "dave@example.org"  # a contact not in good standing
STRANGER = "mallory@evil.test"
AUTHSERV_ID = "mx.bot.test"  # the front MTA's authserv-id in the test settings


def dmarc(sender: str, result: str = "pass", authserv_id: str = AUTHSERV_ID) -> dict[str, str]:
    """The ``Authentication-Results`` header a front MTA adds for mail from ``sender``."""
    domain = sender.rpartition("@")[2]
    return {"Authentication-Results": f"{authserv_id}; dmarc={result} header.from={domain}"}


WORLD: dict[str, Any] = {
    "contacts": [
        {"handle": "AM1234-MB", "email": ALICE, "name": "Alice Martin", "language": "fr"},
        {"handle": "BB200-MB", "email": BOB, "name": "Bob Brown", "language": "en"},
        {"handle": "BI300-MB", "email": BILL, "name": "Bill Ing", "language": "en"},
        {"handle": "CA400-MB", "email": CAROL, "name": "Carol Agency", "language": "en"},
        {
            "handle": "DU500-MB",
            "email": DAVE,
            "name": "Dave Unpaid",
            "language": "en",
            "in_good_standing": False,
        },
    ],
    "services": [
        {
            "name": "example.com",
            "kind": "domain",
            "admin": "AM1234-MB",
            "tech": "BB200-MB",
            "billing": "BI300-MB",
        },
        {
            "name": "unpaid.example",
            "kind": "domain",
            "admin": "AM1234-MB",
            "tech": "BB200-MB",
            "billing": "BI300-MB",
            "in_good_standing": False,
        },
    ],
}


@contextmanager
def another_instance(bot: Mailbot) -> Iterator[Mailbot]:
    """A second service on the same database, with an engine of its own, as a
    second ``serve`` process would have."""
    other = Mailbot.from_settings(bot.settings, bot.clock)
    try:
        yield other
    finally:
        other.engine.dispose()


def seed_world(bot: Mailbot) -> dict[str, Any]:
    apply_import(bot.engine, ImportFile.model_validate(WORLD), bot.clock.now())
    return WORLD


@dataclass
class MailFactory:
    """Builds raw RFC 5322 messages the way mail clients send them."""

    counter: itertools.count[int] = itertools.count(1)  # noqa: RUF009 (shared on purpose: ids stay unique)

    def __call__(
        self,
        sender: str,
        subject: str,
        body: str = "",
        *,
        to: str = "changes@bot.test",
        in_reply_to: str | None = None,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
    ) -> bytes:
        message = EmailMessage(policy=policy.SMTP)
        message["From"] = sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
        message["Message-ID"] = message_id or f"<m{next(self.counter)}.{id(self)}@client.test>"
        if in_reply_to:
            message["In-Reply-To"] = in_reply_to
            message["References"] = in_reply_to
        for name, value in (headers or {}).items():
            message[name] = value
        message.set_content(body)
        return message.as_bytes()


@dataclass(frozen=True)
class Sent:
    """One queued or sent mail, parsed, with the outbox row it came from."""

    row: OutboxRow
    message: email.message.EmailMessage | None

    @property
    def event(self) -> str:
        return self.row.event

    @property
    def to(self) -> str:
        return self.row.to_email

    @property
    def text(self) -> str:
        assert self.message is not None
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())

    @property
    def html(self) -> str:
        assert self.message is not None
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())

    def header(self, name: str) -> str | None:
        assert self.message is not None
        value = self.message[name]
        return None if value is None else str(value)


def request_state(bot: Mailbot, request_id: str) -> dict[str, Any]:
    """A request as ``mailbot requests show --json`` prints it, read through the service."""
    report = bot.reports.request(request_id)
    assert report is not None, request_id
    return report_json(report)


def outbox(bot: Mailbot, *, after: int = 0) -> list[Sent]:
    """Every mail queued (sent or not) with an outbox id above ``after``."""
    with transaction(bot.engine) as session:
        rows = session.exec(
            select(OutboxRow).where(col(OutboxRow.id) > after).order_by(col(OutboxRow.id))
        ).all()
    return [Sent(row, _message(bot, row)) for row in rows]


def _message(bot: Mailbot, row: OutboxRow) -> EmailMessage | None:
    """The mail a row holds: its bytes, or, while it waits to be rendered, the
    bytes the sender will make of its intent (the same Message-ID and Date)."""
    payload = row.payload
    if payload is None and row.intent is not None:
        payload = bot.mailer.render_queued(row)[1]
    if payload is None:
        return None
    return email.message_from_bytes(payload, policy=policy.default)  # type: ignore[return-value]


def send(bot: Mailbot, raw: bytes, **kwargs: Any) -> list[Sent]:
    """Deliver one message as ``process`` would; return the mails it caused."""
    before = last_outbox_id(bot)
    bot.receive(raw, **kwargs)
    return outbox(bot, after=before)


def last_outbox_id(bot: Mailbot) -> int:
    with transaction(bot.engine) as session:
        row = session.exec(select(OutboxRow).order_by(col(OutboxRow.id).desc())).first()
    return row.id if row and row.id else 0


def token_in(sent: Sent) -> str:
    """The grouped token printed in a validation mail."""
    import re

    found = re.search(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})\b", sent.text)
    assert found, sent.text
    return found.group(1)


def maildir_messages(root: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for path in sorted((root / "new").iterdir())
    ]


def refuse_inserts(bot: Mailbot, table: str, message_id: str | None = None) -> None:
    """Make the database refuse new rows of ``table`` (only those with this
    ``message_id``, when one is given), as a constraint added by hand or a
    corrupt table would: an error that is not an outage (IntegrityError)."""
    name = f"refuse_{table}"
    if bot.engine.dialect.name == "sqlite":
        when = f"WHEN NEW.message_id = '{message_id}' " if message_id else ""
        statements = [
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"{when}BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
    else:
        test = f"NEW.message_id = '{message_id}'" if message_id else "true"
        statements = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {test} THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; "
            "END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
    with bot.engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
