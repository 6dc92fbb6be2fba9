"""End to end through ``mailbot serve``: SMTP in, Maildir out, the link page over HTTP,
a reply from a real-looking mail client, and the request done."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from conftest import free_port, make_settings
from factories import ALICE, BOB, CAROL, seed_world
from servers import maildir_count, running, wait_for
from test_web import form_for, text_of

from mailbot.service import Mailbot


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Mailbot]:
    web_port = free_port()
    settings = make_settings(
        tmp_path,
        database_url,
        smtp={"port": free_port()},
        web={"port": web_port},
        bot={"base_url": f"http://127.0.0.1:{web_port}"},
    )
    bot = Mailbot.from_settings(settings)
    seed_world(bot)
    yield bot
    bot.engine.dispose()


def sent(bot: Mailbot) -> list[EmailMessage]:
    folder = bot.settings.outgoing.maildir / "new"
    paths = sorted(folder.iterdir(), key=lambda p: p.name) if folder.is_dir() else []
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]  # type: ignore[misc]


def to(message: EmailMessage) -> str:
    return str(message["To"].addresses[0].addr_spec)


def smtp(bot: Mailbot, message: EmailMessage, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", bot.settings.smtp.port, timeout=10) as client:
        client.send_message(message, to_addrs=[recipient])


def test_a_change_from_request_to_done_over_real_protocols(served: Mailbot) -> None:
    with running(served):
        request = EmailMessage()
        request["From"], request["To"] = f"Alice Martin <{ALICE}>", "changes@bot.test"
        request["Subject"], request["Message-ID"] = "CHANGE example.com", "<r1@client.test>"
        request.set_content(f"tech: {CAROL}\n\nAlice\n")
        smtp(served, request, "changes@bot.test")
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 3)
        asks = {to(m): m for m in sent(served) if m["X-Mailbot-Event"] == "validation-requested"}
        assert set(asks) == {ALICE, CAROL}

        # Alice opens her link: nothing is recorded by looking; then she presses Accept.
        body = asks[ALICE].get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = next(w for w in body.split() if "/v/" in w)
        with httpx.Client(timeout=10) as browser:
            page = browser.get(link)
            assert page.status_code == 200
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["referrer-policy"] == "same-origin"
            assert maildir_count(served.settings.outgoing.maildir) == 3
            action, fields = form_for(page, "accept")
            result = browser.post(httpx.URL(link).join(action), data=fields)
            assert result.status_code == 200
            assert CAROL in text_of(result)
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 4)
        # The page's answer is held for [web] undo_minutes: the sweep applies it after.
        served.sweep(now=datetime.now(UTC) + timedelta(minutes=10))
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 5)

        # Carol answers from her mail client: just "ACCEPT" above a French-style quote
        # of the token mail, which itself says ACCEPT and REFUSE.
        ask = asks[CAROL]
        quoted = "\n".join(
            "> " + line for line in ask.get_body(("plain",)).get_content().splitlines()
        )  # type: ignore[union-attr]
        reply = EmailMessage()
        reply["From"], reply["To"] = f"Carol <{CAROL}>", str(ask["Reply-To"])
        reply["Subject"] = f"RE: {ask['Subject']}"
        reply["Message-ID"], reply["In-Reply-To"] = "<r2@client.test>", ask["Message-ID"]
        reply["References"] = ask["Message-ID"]
        reply.set_content(
            f"ACCEPT\n\nLe lun. 2 mars 2026 à 09:00, mailbot <changes@bot.test> "
            f"a écrit :\n{quoted}\n"
        )
        smtp(served, reply, ask["Reply-To"].addresses[0].addr_spec)
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 8)

    done = [m for m in sent(served) if m["X-Mailbot-Event"] == "request-done"]
    assert sorted(to(m) for m in done) == sorted([ALICE, CAROL, BOB])
    assert all(m["X-Mailbot-Request"] == ask["X-Mailbot-Request"] for m in done)
