"""The agency mailbox against a real Dovecot: applied then moved, failures set aside,
nothing lost across a server restart, nothing done twice after a crash."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_settings, reserve_port
from dovecot import PASSWORD, USER, Dovecot, ImapRelay, running_dovecot
from factories import ALICE, CAROL, MailFactory, outbox, refuse_inserts, seed_world, token_in
from imapclient import IMAPClient
from servers import maildir_count, running, wait_for

from mailbot.adapters.imap_in import ImapReader
from mailbot.cli import main
from mailbot.config import ImapSettings
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction

pytestmark = pytest.mark.usefixtures("world")


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


def imap_settings(server: Dovecot) -> ImapSettings:
    return ImapSettings(
        enabled=True,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
        username=USER,
        password=PASSWORD,
        poll_seconds=1,
    )


@pytest.fixture
def client(dovecot_server: Dovecot) -> Iterator[IMAPClient]:
    """A client on an emptied mailbox (the server is shared by the whole session)."""
    imap = IMAPClient("127.0.0.1", port=dovecot_server.port, ssl=False)
    imap.login(USER, PASSWORD)
    for folder in ("INBOX", "mailbot-done", "mailbot-failed"):
        if imap.folder_exists(folder):
            imap.select_folder(folder)
            if uids := imap.search("ALL"):
                imap.delete_messages(uids)
                imap.expunge()
    imap.select_folder("INBOX")
    yield imap
    with contextlib.suppress(Exception):  # a test may have logged out or restarted the server
        imap.logout()


def count(imap: IMAPClient, folder: str) -> int:
    return int(imap.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])


def read_once(bot: Mailbot, server: Dovecot) -> int:
    """One pass of the reader over the mailbox, as after each IDLE wake-up."""
    settings = imap_settings(server)
    reader = ImapReader(settings, bot, threading.Event())
    imap = reader.connect()
    try:
        imap.select_folder(settings.folder)
        return reader.catch_up(imap)
    finally:
        imap.logout()


def open_request(bot: Mailbot, mail: MailFactory) -> dict[str, str]:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    return {m.to: token_in(m) for m in outbox(bot) if m.event == "validation-requested"}


def test_a_validation_in_the_mailbox_is_applied_then_moved(
    bot: Mailbot, mail: MailFactory, client: IMAPClient, dovecot_server: Dovecot
) -> None:
    tokens = open_request(bot, mail)
    dovecot_server.deliver(mail(CAROL, "Re: validation", f"ACCEPT {tokens[CAROL]}"))
    assert read_once(bot, dovecot_server) == 1
    assert (count(client, "INBOX"), count(client, "mailbot-done")) == (0, 1)
    assert [m.event for m in outbox(bot)][-1] == "validation-recorded"


def test_a_message_that_cannot_be_processed_goes_to_the_failed_folder(
    bot: Mailbot,
    mail: MailFactory,
    client: IMAPClient,
    dovecot_server: Dovecot,
) -> None:
    refuse_inserts(bot, "outbox")  # answering HELP fails: a broken database
    dovecot_server.deliver(mail(ALICE, "HELP"))
    read_once(bot, dovecot_server)
    assert (count(client, "INBOX"), count(client, "mailbot-failed")) == (0, 1)


def test_a_message_the_database_will_not_store_is_set_aside_and_the_rest_read(
    bot: Mailbot,
    mail: MailFactory,
    client: IMAPClient,
    dovecot_server: Dovecot,
) -> None:
    """Left in the folder, it would stop each pass at itself and hold back the
    messages behind it; it goes to the failed folder, and the next is read."""
    refuse_inserts(bot, "inbound_message", "refused@client.test")
    dovecot_server.deliver(mail(ALICE, "HELP", message_id="<refused@client.test>"))
    dovecot_server.deliver(mail(ALICE, "HELP"))
    assert read_once(bot, dovecot_server) == 2
    assert count(client, "INBOX") == 0
    assert (count(client, "mailbot-failed"), count(client, "mailbot-done")) == (1, 1)
    assert [m.event for m in outbox(bot)] == ["help"]


def test_a_crash_between_commit_and_move_does_not_act_twice(
    bot: Mailbot, mail: MailFactory, client: IMAPClient, dovecot_server: Dovecot
) -> None:
    tokens = open_request(bot, mail)
    raw = mail(CAROL, "Re: validation", f"ACCEPT {tokens[CAROL]}")
    bot.receive(raw, source="imap")  # committed, then the process died before the move
    before = len(outbox(bot))
    dovecot_server.deliver(raw)
    assert read_once(bot, dovecot_server) == 1
    assert len(outbox(bot)) == before
    assert count(client, "mailbot-done") == 1


def test_mail_arriving_while_the_server_is_down_is_read_after_it_returns(
    bot: Mailbot, mail: MailFactory, client: IMAPClient, dovecot_server: Dovecot
) -> None:
    tokens = open_request(bot, mail)
    stop = threading.Event()
    reader = ImapReader(imap_settings(dovecot_server), bot, stop)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        dovecot_server.deliver(mail(ALICE, "x", f"ACCEPT {tokens[ALICE]}"))
        wait_for(lambda: count(client, "mailbot-done") == 1)  # seen while IDLE
        client.logout()
        dovecot_server.stop()  # mid-IDLE
        dovecot_server.deliver_to_maildir(mail(CAROL, "x", f"ACCEPT {tokens[CAROL]}"))
        dovecot_server.start()
        fresh = IMAPClient("127.0.0.1", port=dovecot_server.port, ssl=False)
        fresh.login(USER, PASSWORD)
        wait_for(lambda: count(fresh, "mailbot-done") == 2, timeout=60)
        fresh.logout()
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive()
    with transaction(bot.engine) as session:
        assert [r.status for r in queries.requests(session)] == ["done"]


class CountedStop(threading.Event):
    """The reader's stop flag, noting each backoff it waits out instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_a_folder_the_server_refuses_is_retried_after_a_growing_backoff(
    bot: Mailbot, dovecot_server: Dovecot
) -> None:
    """Login works, SELECT fails: without a backoff the reader would reconnect
    as fast as the server answers, and log a line each time."""
    stop = CountedStop()
    settings = imap_settings(dovecot_server).model_copy(update={"folder": "No/Such/Folder"})
    thread = threading.Thread(target=ImapReader(settings, bot, stop).run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(stop.waits) >= 8)
    finally:
        stop.set()
        thread.join(60)
    assert stop.waits[:8] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_server_reply_the_reader_cannot_use_costs_a_reconnect_not_the_reader(
    bot: Mailbot, mail: MailFactory, client: IMAPClient, dovecot_server: Dovecot
) -> None:
    """A SELECT answered without its UIDVALIDITY, as a broken server or proxy
    may: the reader must not die of it, or the mailbox goes unread until a restart."""
    tokens = open_request(bot, mail)
    dovecot_server.deliver(mail(CAROL, "Re: validation", f"ACCEPT {tokens[CAROL]}"))
    relay = ImapRelay(dovecot_server.port, drop=b"[UIDVALIDITY ")
    stop = threading.Event()
    settings = imap_settings(dovecot_server).model_copy(update={"port": relay.port})
    thread = threading.Thread(target=ImapReader(settings, bot, stop).run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.folder_exists("mailbot-done") and count(client, "mailbot-done"))
    finally:
        stop.set()
        thread.join(60)
        relay.close()
    assert relay.connections == 2
    assert [m.event for m in outbox(bot)][-1] == "validation-recorded"


def test_a_folder_another_reader_has_just_created_is_used(
    bot: Mailbot, client: IMAPClient, dovecot_server: Dovecot
) -> None:
    """Two instances reading one agency mailbox start together: both find no
    done folder, both create it, and the second is told it exists (RFC 5530's
    ALREADYEXISTS). Played here by a relay that hides the folder list."""
    for folder in ("mailbot-done", "mailbot-failed"):
        if not client.folder_exists(folder):
            client.create_folder(folder)
    relay = ImapRelay(dovecot_server.port, drop=b"* LIST ")
    settings = imap_settings(dovecot_server).model_copy(update={"port": relay.port})
    try:
        lines = ImapReader(settings, bot, threading.Event()).check()
    finally:
        relay.close()
    assert "done folder mailbot-done and failed folder mailbot-failed exist" in lines


def test_imap_check_reports_the_mailbox(
    bot: Mailbot, client: IMAPClient, dovecot_server: Dovecot
) -> None:
    lines = ImapReader(imap_settings(dovecot_server), bot, threading.Event()).check()
    assert any("IDLE: yes" in line for line in lines)
    assert client.folder_exists("mailbot-done")


def test_serve_reads_the_agency_mailbox(
    tmp_path: Path,
    database_url: str,
    mail: MailFactory,
    client: IMAPClient,
    dovecot_server: Dovecot,
) -> None:
    """A customer's acceptance, forwarded by the agency into its mailbox, takes effect."""
    imap = imap_settings(dovecot_server).model_dump()
    settings = make_settings(
        tmp_path,
        database_url,
        smtp={"port": reserve_port()},
        web={"port": reserve_port()},
        imap=imap,
    )
    served = Mailbot.from_settings(settings)
    try:
        seed_world(served)
        tokens = open_request(served, mail)
        forward = (
            f"Hello, see below.\n\n---------- Forwarded message ---------\n"
            f"From: Carol Agency <{CAROL}>\nDate: Mon, 2 Mar 2026 at 09:00\n"
            f"Subject: Re: validation\nTo: <desk@agency.test>\n\n"
            f"ACCEPT {tokens[CAROL]}\n"
        )
        dovecot_server.deliver(mail("desk@agency.test", "Fwd: Re: validation", forward))
        with running(served):
            wait_for(lambda: count(client, "mailbot-done") == 1)
            wait_for(lambda: maildir_count(settings.outgoing.maildir) == 4)
        assert [m.event for m in outbox(served)][-1] == "validation-recorded"
    finally:
        served.engine.dispose()


def test_imap_check_through_the_cli(
    tmp_path: Path,
    database_url: str,
    dovecot_server: Dovecot,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "mailbot.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n'
        f'[imap]\nhost = "127.0.0.1"\nport = {dovecot_server.port}\nssl = false\n'
        f'username = "{USER}"\npassword = "{PASSWORD}"\n'
    )
    assert main(["--config", str(config), "imap", "check"]) == 0
    out = capsys.readouterr().out
    assert f"as {USER}" in out
    assert "enabled = false" in out  # it says the mailbox is checked but not read by serve
    config.write_text(config.read_text().replace(PASSWORD, "wrong"))
    assert main(["--config", str(config), "imap", "check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailbot: error: IMAP check failed")
    assert "Traceback" not in err
