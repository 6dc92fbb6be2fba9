"""``GET /metrics`` of a running ``mailbot serve``, read over HTTP as Prometheus would,
while mail goes in by SMTP and out through a relay that defers one mail and
refuses another for good."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import make_settings, reserve_port
from factories import ALICE, BOB, CAROL, MailFactory, seed_world
from prometheus_client.parser import text_string_to_metric_families
from servers import Smarthost, relay, running, wait_for
from webserver import running as web_running

from mailbot.adapters.web import create_app
from mailbot.config import Settings
from mailbot.service import Mailbot

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class PickyRelay(Smarthost):
    """Defers mail to CAROL (451), refuses the first mail to ALICE for good (550),
    takes the rest."""

    refused_alice = False

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if CAROL in envelope.rcpt_tos:
            return "451 4.3.0 Try again later"
        if ALICE in envelope.rcpt_tos and not self.refused_alice:
            self.refused_alice = True
            return "550 5.1.1 Mailbox disabled"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated database of each kind for the whole module."""
    if request.param == "sqlite":
        target = tmp_path_factory.mktemp("metrics") / "mailbot.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    server = request.getfixturevalue("postgres_server")
    template = request.getfixturevalue("postgres_template")
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE test_metrics TEMPLATE {template}")
    admin.dispose()
    return f"{server}/test_metrics"


@pytest.fixture(scope="module")
def served(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mailbot]:
    """``serve`` on free ports, sending through the PickyRelay; shared by the module."""
    with relay(PickyRelay()) as picky:
        settings = make_settings(
            tmp_path_factory.mktemp("served"),
            database,
            smtp={"port": reserve_port()},
            web={"port": reserve_port()},
            outgoing={"transport": "smtp", "host": "127.0.0.1", "port": picky.port},
        )
        bot = Mailbot.from_settings(settings)
        seed_world(bot)
        with running(bot):
            yield bot
        bot.engine.dispose()
    if database.startswith("postgresql"):
        admin = sa.create_engine(database.rsplit("/", 1)[0] + "/postgres")
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("DROP DATABASE IF EXISTS test_metrics WITH (FORCE)")
        admin.dispose()


def web_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.web.port}"


def scrape(bot: Mailbot) -> Samples:
    """Every sample of ``/metrics``, by name and labels, as Prometheus reads them."""
    response = httpx.get(f"{web_url(bot.settings)}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when there is none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples that have these labels, whatever their others."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter of this process moved between two scrapes (every server
    in the test process shares the counters)."""
    return total(after, name, **labels) - total(before, name, **labels)


def until(bot: Mailbot, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``condition`` holds; the last scrape."""

    def check() -> Samples | None:
        samples = scrape(bot)
        return samples if condition(samples) else None

    found: Samples = wait_for(check)
    return found


def smtp_send(bot: Mailbot, sender: str, raw: bytes, to: str | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", bot.settings.smtp.port, timeout=30) as client:
        client.sendmail(sender, [to or bot.settings.bot.address], raw)


def test_counters_follow_mail_in_and_out(served: Mailbot) -> None:
    bot = served
    before = scrape(bot)
    assert value(before, "mailbot_database_up") == 1
    assert value(before, "mailbot_requests", status="pending") == 0
    change = MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}")
    smtp_send(bot, ALICE, change)

    after = until(
        bot,
        lambda s: (
            value(s, "mailbot_outbox_dead") == 1
            and grew(before, s, "mailbot_outgoing_mails_total", result="sent") >= 1
            and grew(before, s, "mailbot_outgoing_mails_total", result="retry") >= 1
            # counted just after the commit, possibly after the mail went out
            and grew(before, s, "mailbot_inbound_handled_total", outcome="processed") >= 1
            and grew(before, s, "mailbot_processing_latency_seconds_count") >= 1
        ),
    )
    processed = value(after, "mailbot_inbound_messages", status="processed")
    assert processed == value(before, "mailbot_inbound_messages", status="processed") + 1
    assert value(after, "mailbot_requests", status="pending") == 1
    assert value(after, "mailbot_requests", status="done") == 0
    latency = "mailbot_processing_latency_seconds_count"
    assert grew(before, after, latency) == 1
    assert grew(before, after, "mailbot_inbound_handled_total", outcome="processed") == 1
    assert grew(before, after, "mailbot_smtp_replies_total", code="250") >= 1
    # CAROL's mail is deferred: queued, and its age counts; ALICE's first is a dead letter.
    assert value(after, "mailbot_outbox_queued") == 1
    assert value(after, "mailbot_outbox_oldest_queued_age_seconds") > 0
    assert value(after, "mailbot_outbox_mails", status="dead") == 1
    assert grew(before, after, "mailbot_outgoing_mails_total", result="dead") == 1

    smtp_send(bot, ALICE, change)  # delivered again by the client: a duplicate
    again = until(bot, lambda s: grew(before, s, "mailbot_inbound_duplicates_total") >= 1)
    assert grew(before, again, "mailbot_inbound_duplicates_total") == 1
    assert value(again, "mailbot_inbound_messages", status="processed") == processed

    wrong = MailFactory()(BOB, "ACCEPT", "ACCEPT 7K3M-9QX2-PL4T-ZZ8W-ABCD")
    smtp_send(bot, BOB, wrong)
    later = until(
        bot,
        lambda s: (
            value(s, "mailbot_inbound_messages", status="processed") > processed
            and grew(before, s, "mailbot_processing_latency_seconds_count") >= 2
        ),
    )
    assert value(later, "mailbot_inbound_messages", status="processed") == processed + 1
    assert grew(before, later, "mailbot_bad_tokens_total", channel="email") == 1
    assert grew(before, later, latency) == 2

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp_send(bot, ALICE, change, to="someone@elsewhere.test")
    assert grew(before, scrape(bot), "mailbot_smtp_replies_total", code="550") == 1


def test_link_page_guesses_count_as_bad_tokens_until_the_client_is_throttled(
    served: Mailbot,
) -> None:
    before = scrape(served)
    base = web_url(served.settings)
    statuses = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while 429 not in statuses and len(statuses) < 200:
            guess = f"/v/{len(statuses):04d}-AAAA-BBBB-CCCC-DDDD"
            statuses.append(client.get(guess).status_code)
    assert statuses[-1] == 429
    after = scrape(served)
    assert grew(before, after, "mailbot_bad_tokens_total", channel="web") == statuses.count(404)
    assert grew(before, after, "mailbot_throttled_total", limit="guesses") == 1


def test_every_metric_is_documented(served: Mailbot) -> None:
    text = httpx.get(f"{web_url(served.settings)}/metrics", timeout=30).text
    for name in (
        "mailbot_requests",
        "mailbot_inbound_messages",
        "mailbot_inbound_duplicates",
        "mailbot_outbox_queued",
        "mailbot_outbox_oldest_queued_age_seconds",
        "mailbot_outbox_dead",
        "mailbot_processing_latency_seconds",
        "mailbot_smtp_replies",
        "mailbot_outgoing_mails",
        "mailbot_bad_tokens",
        "mailbot_throttled",
    ):
        assert re.search(rf"^# HELP {name}(_total)? \S", text, re.MULTILINE), name


def test_a_request_through_a_proxy_gets_the_404_of_an_unknown_url(served: Mailbot) -> None:
    """The proxy connects from 127.0.0.1, an allowed address; what it forwards is not."""
    base = web_url(served.settings)
    unknown = httpx.get(f"{base}/no-such-page", timeout=30)
    proxied = httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, timeout=30)
    assert unknown.status_code == proxied.status_code == 404
    assert proxied.text == unknown.text
    assert "mailbot_" not in proxied.text


def test_a_client_not_in_metrics_allow_gets_the_404_of_an_unknown_url(
    served: Mailbot, tmp_path: Path
) -> None:
    settings = served.settings.model_copy(
        update={"web": served.settings.web.model_copy(update={"metrics_allow": ["10.0.0.1"]})}
    )
    other = Mailbot.from_settings(settings)
    try:
        with web_running(create_app(other)) as base:
            refused = [
                httpx.request(method, f"{base}/metrics", timeout=30) for method in ("GET", "POST")
            ]
            unknown = httpx.get(f"{base}/no-such-page", timeout=30)
    finally:
        other.engine.dispose()
    for response in refused:
        assert response.status_code == 404
        assert response.text == unknown.text


def test_a_metrics_allow_that_is_not_an_address_is_a_one_line_error(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
    environment["MAILBOT_WEB__METRICS_ALLOW"] = '["127.0.0.1", "prometheus.internal"]'
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mailbot"), "init"],
        cwd=tmp_path,
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    error = result.stderr.decode()
    assert error.startswith("mailbot: error: invalid configuration: web.metrics_allow")
    assert "must be IP addresses or networks" in error
    assert "prometheus.internal" in error
    assert len(result.stderr.splitlines()) == 1
