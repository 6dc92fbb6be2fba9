"""No token or reply key rests in the database or the logs once mail is processed.

Everything goes through ``serve``: mail in by SMTP, mail out to the Maildir.
The attacks are the ways a secret comes back to mailbot: a reply that quotes
the token mail without deciding (in base64), a reply to the plus-address
(quoted-printable, the link cut by a soft line break), ``ACCEPT <token>`` in a
new mail, and a bounce that quotes the whole token mail.
"""

from __future__ import annotations

import logging
import re
import smtplib
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from factories import ALICE, CAROL, MailFactory, maildir_messages
from servers import maildir_count, running, wait_for
from sqlmodel import col, select
from test_storage import dump

from mailbot.mailparse.redact import MARK
from mailbot.service import Mailbot
from mailbot.storage.engine import transaction
from mailbot.storage.tables import InboundRow, OutboxRow

_TOKEN = re.compile(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})\b")
_KEY = re.compile(r"changes\+(\w+)@", re.IGNORECASE)


def smtp(bot: Mailbot, raw: bytes, sender: str, to: str = "changes@bot.test") -> None:
    with smtplib.SMTP(bot.settings.smtp.host, bot.settings.smtp.port, timeout=10) as client:
        client.sendmail(sender, [to], raw)


def reply(sender: str, to: str, asked: EmailMessage, text: str, cte: str) -> bytes:
    quoted = asked.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"Re: {asked['Subject']}"
    message["Message-ID"] = f"<reply.{cte}.{sender}>"
    message["In-Reply-To"] = message["References"] = asked["Message-ID"]
    long_line = "> see " + "x" * 57 + " " + "\n> ".join(quoted.splitlines())
    message.set_content(f"{text}\n\nLe lundi, mailbot a écrit :\n{long_line}\n", cte=cte)
    return message.as_bytes()


def bounce(asked: bytes) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "MAILER-DAEMON@mx.example.com"
    message["To"] = "changes@bot.test"
    message["Subject"] = "Undelivered Mail Returned to Sender"
    message["Message-ID"] = "<bounce.1@mx.example.com>"
    message["Auto-Submitted"] = "auto-replied"
    message.set_content("Your message could not be delivered to alice@example.com.")
    message.add_attachment(message_from_bytes(asked, policy=SMTP))
    return message.as_bytes()


def decoded_mail(bot: Mailbot) -> str:
    """The text of every stored message as a mail reader would show it: base64 and
    quoted-printable decoded, so that an encoded token is found too."""
    with transaction(bot.engine) as session:
        raws = [row.raw for row in session.exec(select(InboundRow)).all()]
    texts = []
    for raw in raws:
        message = message_from_bytes(raw, policy=SMTP)
        texts += [str(v) for v in message.values()]
        for part in message.walk():
            if part.get_content_maintype() == "text":
                texts.append(str(part.get_content()))  # type: ignore[attr-defined]
    return "\n".join(texts)


def processed(bot: Mailbot, count: int) -> bool:
    with transaction(bot.engine) as session:
        rows = session.exec(select(InboundRow)).all()
        queued = session.exec(select(OutboxRow).where(col(OutboxRow.status) != "sent")).all()
    return len(rows) == count and all(r.status != "received" for r in rows) and not queued


def test_no_token_or_reply_key_rests_in_the_database_or_the_logs(
    served: Mailbot, mail: MailFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mail.log")  # as ``mailbot serve`` sets it
    caplog.set_level(logging.INFO)  # after: it sets the capturing handler's level too
    maildir = Path(served.settings.outgoing.maildir)
    with running(served):
        smtp(served, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"), ALICE)
        wait_for(lambda: maildir_count(maildir) == 3)
        files = {p.read_bytes() for p in (maildir / "new").iterdir()}
        asks = {
            str(m["To"]).rpartition("<")[2].strip(">"): m
            for m in maildir_messages(maildir)
            if m["X-Mailbot-Event"] == "validation-requested"
        }
        secrets: set[str] = set()
        for ask in asks.values():
            token = _TOKEN.search(ask.get_body(("plain",)).get_content()).group(1)  # type: ignore[union-attr]
            key = _KEY.search(str(ask["Reply-To"])).group(1)  # type: ignore[union-attr]
            for value in (token, token.replace("-", ""), key):
                secrets |= {value, value.lower(), value.upper()}
        carol_address = str(asks[CAROL]["Reply-To"]).rpartition("<")[2].strip(">")
        alice_ask = next(f for f in files if b"To: Alice" in f and b"validation-requested" in f)
        alice_token = _TOKEN.search(asks[ALICE].get_body(("plain",)).get_content()).group(1)  # type: ignore[union-attr]

        smtp(served, reply(CAROL, "changes@bot.test", asks[CAROL], "Who are you?", "base64"), CAROL)
        smtp(served, bounce(alice_ask), "", to="changes@bot.test")
        smtp(served, reply(CAROL, carol_address, asks[CAROL], "ACCEPT", "quoted-printable"),
             CAROL, to=carol_address)  # fmt: skip
        smtp(served, mail(ALICE, "Validation", f"ACCEPT {alice_token}"), ALICE)
        wait_for(lambda: processed(served, 5), timeout=60)

    # Processing still had every secret it needed: both decisions were recorded.
    assert "request-done" in [m["X-Mailbot-Event"] for m in maildir_messages(maildir)]
    content = dump(served) + decoded_mail(served)
    assert MARK in content  # the messages are kept, their secrets taken out
    logs = caplog.text
    assert "received message" in logs
    assert "changes+[redacted]@bot.test" in logs
    for secret in secrets:
        assert secret not in content, "a secret survives in a table"
        assert secret not in logs, "a secret is in the logs"
    served.engine.dispose()
    if served.engine.url.get_backend_name() == "sqlite":
        database = Path(str(served.engine.url.database))
        raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
        for secret in secrets:
            assert secret.encode() not in raw, "a secret survives in the database file"
