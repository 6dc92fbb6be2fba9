"""Two installed ``mailbot serve`` instances on one PostgreSQL, as two MX hosts
would run them: a link page loaded on one decides when its form is posted to
the other, every limit counts the attempts made on both, and sweeps run from
every instance at once send each reminder and each expiry notice once.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cluster import BOT, CountingRelay, Instance, configure, import_world, run_json, sweep_together
from conftest import make_settings
from dovecot import PASSWORD, USER, ImapRelay, running_dovecot
from factories import ALICE, AUTHSERV_ID, BILL, MailFactory, dmarc, outbox, seed_world
from imapclient import IMAPClient
from servers import RelayController, wait_for
from test_entrypoint import MAILBOT, clean_environment
from test_web import form_for

from mailbot.adapters.imap_in import ImapReader
from mailbot.config import ImapSettings
from mailbot.service import Mailbot

BAD_TOKENS = 2
ANSWERS = 3
POLICY = (
    f"max_bad_tokens_per_hour = {BAD_TOKENS}\nmax_answers_per_hour = {ANSWERS}\n"
    "reminder_days = [3]\nsweep_seconds = 3600\n"
)
SERVICES = ["link.example", "tokens.example", "resend.example", "sweep.example"]
_LINK = re.compile(r"https://bot\.test(/v/[^\s>]+)")


@pytest.fixture(scope="module")
def relay() -> Iterator[CountingRelay]:
    handler = CountingRelay()
    controller = RelayController(handler)
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def database(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """An empty migrated PostgreSQL database shared by the module's instances."""
    name = f"instances_{os.getpid()}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    try:
        yield f"{postgres_server}/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, database: str, relay: CountingRelay
) -> Iterator[list[Instance]]:
    """Two running instances: A and B."""
    root = tmp_path_factory.mktemp("instances")
    instances = configure(
        root, database, relay.port, 2, POLICY, smtp_toml=f'authserv_id = "{AUTHSERV_ID}"'
    )
    import_world(instances[0].workdir, SERVICES)
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


def smtp_send(instance: Instance, sender: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", instance.smtp, timeout=60) as client:
        client.sendmail(sender, [BOT], raw)


def settle(pair: list[Instance]) -> None:
    """Wait until both have acted on everything stored and sent everything queued."""
    workdir = pair[0].workdir

    def settled() -> bool:
        if run_json(workdir, "inbound", "list", "--status", "received"):
            return False
        return all(m["status"] == "sent" for m in run_json(workdir, "outbox", "list"))

    wait_for(settled, timeout=180)


def open_request(pair: list[Instance], service: str, new_tech: str) -> str:
    """A request opened by Alice through instance A; its id once acted on."""
    smtp_send(pair[0], ALICE, MailFactory()(ALICE, f"CHANGE {service}", f"tech: {new_tech}"))

    def opened() -> str | None:
        found = run_json(pair[0].workdir, "requests", "list", "--service", service)
        return str(found[0]["id"]) if found else None

    request_id: str = wait_for(opened, timeout=180)
    settle(pair)
    return request_id


def shown(instance: Instance, request_id: str) -> dict[str, Any]:
    result: dict[str, Any] = run_json(instance.workdir, "requests", "show", request_id)
    return result


def validation(instance: Instance, request_id: str, email: str) -> dict[str, Any]:
    return next(v for v in shown(instance, request_id)["validations"] if v["email"] == email)


def mails(relay: CountingRelay, request_id: str) -> dict[tuple[str, str], int]:
    return {(e, to): n for (e, to, r), n in relay.snapshot().items() if r == request_id}


def test_a_link_page_loaded_on_one_instance_decides_when_posted_to_the_other(
    pair: list[Instance], relay: CountingRelay
) -> None:
    new_tech = "link-tech@agency.test"
    request_id = open_request(pair, "link.example", new_tech)
    (text,) = relay.bodies[("validation-requested", new_tech, request_id)]
    found = _LINK.search(text)
    assert found, text
    a, b = (f"http://127.0.0.1:{instance.web}" for instance in pair)
    with httpx.Client(timeout=60) as client:
        page = client.get(a + found.group(1))
        assert page.status_code == 200
        action, fields = form_for(page, "accept")
        posted = client.post(b + httpx.URL(action).path, data=fields)
    assert posted.status_code == 200, posted.text
    assert validation(pair[1], request_id, new_tech)["held"] is not None
    # Past the undo window, sweeps from both instances at once apply it, once.
    sweep_together([*pair, *pair], days=0.1)
    settle(pair)
    assert validation(pair[0], request_id, new_tech)["status"] == "accepted"
    accepted = [e for e in shown(pair[1], request_id)["events"] if e["actor"] == new_tech]
    assert [e["kind"] for e in accepted] == ["decision-held", "validation-accepted"]


def test_wrong_tokens_by_mail_are_counted_across_instances(
    pair: list[Instance], relay: CountingRelay
) -> None:
    """Two wrong tokens, one to each instance, reach the limit of two: the right
    token is then refused on either, as it would be on one instance."""
    new_tech = "tokens-tech@agency.test"
    request_id = open_request(pair, "tokens.example", new_tech)
    (text,) = relay.bodies[("validation-requested", new_tech, request_id)]
    token = re.search(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})\b", text)
    assert token
    mail = MailFactory()
    for n, instance in zip(range(BAD_TOKENS), pair * BAD_TOKENS, strict=False):
        wrong = f"ACCEPT {n}BCD-EFGH-JKMN-PQRS-TVWX"
        smtp_send(instance, new_tech, mail(new_tech, "Re: validation", wrong))
    settle(pair)
    smtp_send(pair[0], new_tech, mail(new_tech, "Re: validation", f"ACCEPT {token.group(1)}"))
    settle(pair)
    assert validation(pair[1], request_id, new_tech)["status"] == "pending"


def test_answers_per_hour_are_counted_across_instances(
    pair: list[Instance], relay: CountingRelay
) -> None:
    mail = MailFactory()
    for n in range(ANSWERS + 2):
        smtp_send(pair[n % 2], BILL, mail(BILL, "HELP", headers=dmarc(BILL)))
    settle(pair)
    assert relay.snapshot()[("help", BILL, "")] == ANSWERS


def test_a_resend_on_one_instance_counts_on_the_other(
    pair: list[Instance], relay: CountingRelay
) -> None:
    new_tech = "resend-tech@agency.test"
    request_id = open_request(pair, "resend.example", new_tech)
    mail = MailFactory()
    for instance in pair:  # the second, within the hour, is refused
        smtp_send(instance, ALICE, mail(ALICE, f"RESEND {request_id}", headers=dmarc(ALICE)))
        settle(pair)
    sent = mails(relay, request_id)
    assert sent[("validation-requested", new_tech)] == 2
    assert sent[("validation-requested", ALICE)] == 2
    assert (
        len([e for e in shown(pair[0], request_id)["events"] if e["kind"] == "tokens-resent"]) == 1
    )


def test_sweeps_in_every_instance_at_once_remind_and_expire_once(
    pair: list[Instance], relay: CountingRelay
) -> None:
    new_tech = "sweep-tech@agency.test"
    request_id = open_request(pair, "sweep.example", new_tech)
    sweep_together([*pair, *pair], days=4)  # reminder day 3 is due
    settle(pair)
    sweep_together([*pair, *pair], days=20)  # the request has expired
    settle(pair)
    sent = mails(relay, request_id)
    assert sent[("reminder", new_tech)] == sent[("reminder", ALICE)] == 1
    assert sent[("request-expired", new_tech)] == sent[("request-expired", ALICE)] == 1
    assert shown(pair[0], request_id)["status"] == "expired"


def test_link_page_guesses_are_counted_across_instances(pair: list[Instance]) -> None:
    """The guess limit (20 unknown tokens per client in ten minutes) is reached by
    guesses spread over both instances; then both refuse, with 429."""
    bases = [f"http://127.0.0.1:{instance.web}" for instance in pair]
    with httpx.Client(timeout=60) as client:
        answers = [
            client.get(f"{bases[n % 2]}/v/{n:04d}-ABCD-EFGH-JKMN-PQRS").status_code
            for n in range(20)
        ]
        assert answers == [404] * 20
        assert [client.get(f"{base}/v/9999-ABCD-EFGH-JKMN-PQRS").status_code for base in bases] == [
            429,
            429,
        ]


@pytest.mark.parametrize("round_", range(3))
def test_instances_starting_at_once_on_a_new_database_all_find_it_ready(
    tmp_path: Path, postgres_server: str, round_: int
) -> None:
    """Every unit runs `mailbot init` before `serve` (ExecStartPre): instances
    booting together on an empty database each create or find the schema, and
    none fails to start for the others having begun the same."""
    name = f"fresh_{os.getpid()}_{round_}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        (tmp_path / "mailbot.toml").write_text(f'[database]\nurl = "{postgres_server}/{name}"\n')
        inits = [
            subprocess.Popen(
                [str(MAILBOT), "init"],
                cwd=tmp_path,
                env=clean_environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(4)
        ]
        said = [init.communicate(timeout=300)[0].decode() for init in inits]
        assert [init.returncode for init in inits] == [0] * 4, said
        assert all(line.startswith("database ready at schema revision") for line in said)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def shared_database(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own."""
    name = f"shared_{os.getpid()}"
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    try:
        yield f"{postgres_server}/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def test_one_instance_at_a_time_reads_the_agency_mailbox_and_another_takes_over(
    tmp_path: Path,
    shared_database: str,
    mail: MailFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two readers moving the same messages at once would have the IMAP server
    copy some twice into the done folder: while one instance reads, the other
    stands by, logged in nowhere, and reads once the first has stopped."""
    caplog.set_level(logging.INFO, logger="mailbot.adapters.imap_in")
    bots = [Mailbot.from_settings(make_settings(tmp_path / name, shared_database)) for name in "ab"]
    seed_world(bots[0])
    stops = [threading.Event(), threading.Event()]
    readers: list[threading.Thread] = []
    with running_dovecot() as server:
        relays = [ImapRelay(server.port), ImapRelay(server.port)]
        imap = IMAPClient("127.0.0.1", port=server.port, ssl=False)
        imap.login(USER, PASSWORD)

        def done() -> int:
            if not imap.folder_exists("mailbot-done"):
                return 0
            return int(imap.folder_status("mailbot-done", ["MESSAGES"])[b"MESSAGES"])

        def start(n: int) -> None:
            settings = ImapSettings(
                enabled=True,
                host="127.0.0.1",
                port=relays[n].port,
                ssl=False,
                username=USER,
                password=PASSWORD,
            )
            # The two reach one server by two addresses here: the turn is per
            # mailbox as each instance's [imap] names it, so name it alike.
            reader = ImapReader(settings, bots[n], stops[n])
            reader.turn = bots[n].turn("the agency mailbox")
            readers.append(threading.Thread(target=reader.run, daemon=True))
            readers[-1].start()

        try:
            start(0)
            server.deliver(mail(ALICE, "HELP"))
            wait_for(lambda: done() == 1)
            start(1)
            wait_for(lambda: "standing by" in caplog.text)
            server.deliver(mail(ALICE, "HELP"))
            wait_for(lambda: done() == 2)
            assert relays[1].connections == 0
            stops[0].set()
            readers[0].join(60)
            server.deliver(mail(ALICE, "HELP"))
            wait_for(lambda: done() == 3)
            assert relays[1].connections == 1
            assert [m.event for m in outbox(bots[0])].count("help") == 3
        finally:
            for stop in stops:
                stop.set()
            for reader in readers:
                reader.join(60)
            imap.logout()
            for relay in relays:
                relay.close()
            for bot in bots:
                bot.engine.dispose()
    assert relays[0].connections == 1
