"""The crash harness: installed ``mailbot serve`` processes on one database (three on
PostgreSQL, one on SQLite), a burst of requests and validation replies spread
over their listeners, each process killed with SIGKILL at random moments and
restarted, and sweeps with a clock days ahead running beside them (killed at
random too). Afterwards every acknowledged message was acted on exactly once,
every mail reached the relay exactly once, and no request changed state twice.
"""

from __future__ import annotations

import hashlib
import queue
import random
import smtplib
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from cluster import (
    BOT,
    CountingRelay,
    Instance,
    Key,
    Token,
    configure,
    import_world,
    run_json,
    sweep_process,
    sweep_together,
)
from factories import ALICE, CAROL, MailFactory
from servers import RelayController, wait_for

REQUESTS = 380
"""With two validation replies each (but for the ones left to expire), over 1,000
acknowledged messages."""
SILENT_ONE_IN = 10
"""One request in this many is never answered: it is reminded, then expires."""
KILLS = 3
"""SIGKILLs per instance during the burst."""
POLICY = "reminder_days = [3, 7]\nsweep_seconds = 5\n"
SWEEP_DAYS = (4, 8)
"""How far ahead the chaos sweeps' clocks run."""


def silent(request: str) -> bool:
    return int(hashlib.sha256(request.encode()).hexdigest(), 16) % SILENT_ONE_IN == 0


@dataclass
class Traffic:
    """Client threads that send each queued message to a random live listener until
    one answers 250 (the same bytes again after a broken session, as an MTA
    retries), recording what was acknowledged."""

    instances: list[Instance]
    pending: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    acked: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, clients: int) -> None:
        for n in range(clients):
            thread = threading.Thread(target=self._run, args=(random.Random(n),), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            try:
                key, raw = self.pending.get(timeout=0.1)
            except queue.Empty:
                continue
            port = rng.choice(self.instances).smtp
            if not self._deliver(port, raw, key):
                self.stop.wait(0.05)  # that listener is down: another try, maybe elsewhere
                self.pending.put((key, raw))

    def _deliver(self, port: int, raw: bytes, key: str) -> bool:
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        except OSError:
            return False
        try:
            client.sendmail(ALICE if key.startswith("request") else key.split()[-1], [BOT], raw)
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                with self.lock:
                    self.refused.append(f"{key}: {exc}")
                return True
            return False
        except (OSError, smtplib.SMTPException):
            return False
        finally:
            client.close()
        with self.lock:
            self.acked.add(key)
        return True


@dataclass
class Chaos:
    """SIGKILLs the instances at random moments (each restarted at once) and runs
    sweeps with a clock days ahead, some of them killed too, until stopped."""

    instances: list[Instance]
    traffic: Traffic
    kills: int = 0
    sweeps: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._killer, self._sweeper):
            thread = threading.Thread(target=self._guarded, args=(target,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)
        if self.failures:
            raise self.failures[0]

    def _guarded(self, target: object) -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:  # reported to the test thread
            self.failures.append(exc)

    def _killer(self) -> None:
        """``KILLS`` per instance, at random points of the burst (by how many
        messages were acknowledged so far), each instance started again at once."""
        rng = random.Random(1)
        total = len(self.traffic.pending.queue) * 2.5
        points = sorted(rng.uniform(0.03, 0.85) * total for _ in range(self.planned))
        victims = [i for i in self.instances for _ in range(KILLS)]
        rng.shuffle(victims)
        for point, instance in zip(points, victims, strict=True):
            while len(self.traffic.acked) < point:
                if self.stop.wait(0.05):
                    return
            instance.kill()
            self.kills += 1
            instance.start()

    @property
    def planned(self) -> int:
        return len(self.instances) * KILLS

    def _sweeper(self) -> None:
        """Sweeps days ahead, one at a time, every third one killed mid-way (the
        instances' own sweeps run beside them, every few seconds)."""
        rng = random.Random()
        while not self.stop.wait(1.0):
            sweep = sweep_process(rng.choice(self.instances).workdir, rng.choice(SWEEP_DAYS))
            self.sweeps += 1
            if self.sweeps % 3:
                sweep.wait(300)
                continue
            try:
                sweep.wait(rng.uniform(0.5, 4.0))
            except subprocess.TimeoutExpired:
                sweep.kill()  # SIGKILL, mid-sweep or mid-flush
                sweep.wait()


@pytest.fixture
def relay() -> Iterator[CountingRelay]:
    handler = CountingRelay()
    controller = RelayController(handler)
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def instances(tmp_path: Path, database_url: str, relay: CountingRelay) -> Iterator[list[Instance]]:
    count = 1 if database_url.startswith("sqlite") else 3
    # On PostgreSQL one instance acts through a worker process of its own (killed
    # with it: its supervisor's death ends it), the others act in-process.
    workers = () if count == 1 else (0, 1, 0)
    started = configure(tmp_path, database_url, relay.port, count, POLICY, workers=workers)
    yield started
    for instance in started:
        instance.kill()


def test_killed_instances_act_on_every_message_once_and_send_every_mail_once(
    instances: list[Instance], relay: CountingRelay, database_url: str
) -> None:
    services = [f"svc{n}.example" for n in range(REQUESTS)]
    import_world(instances[0].workdir, services)
    for instance in instances:
        instance.start()
    traffic = Traffic(instances)
    mail = MailFactory()
    for name in services:
        traffic.pending.put((f"request {name}", mail(ALICE, f"CHANGE {name}", f"tech: {CAROL}")))
    chaos = Chaos(instances, traffic)
    traffic.start(clients=6)
    chaos.start()
    try:
        replies = answer_tokens(relay, traffic, mail, len(services))
        expected = {f"request {name}" for name in services} | replies
        wait_for(lambda: traffic.acked >= expected, timeout=600)
        wait_for(lambda: chaos.kills == chaos.planned or chaos.failures, timeout=600)
    finally:
        chaos.join()
        traffic.join()
    assert chaos.kills == chaos.planned
    assert traffic.refused == []
    assert len(expected) >= 1000

    drain(instances, relay)
    sweep_together(instances, days=20)  # the silent requests expire, from every instance
    drain(instances, relay)

    requests = run_json(instances[0].workdir, "requests", "list")
    assert sorted(r["service"] for r in requests) == sorted(services)  # each opened once
    for request in requests:
        assert request["status"] == ("expired" if silent(request["id"]) else "done"), request
    assert_sent_once(instances[0].workdir, relay)
    assert_state_changed_once(database_url)


def answer_tokens(
    relay: CountingRelay, traffic: Traffic, mail: MailFactory, requests: int
) -> set[str]:
    """Queue a reply to each validation request as its token reaches the relay, until
    every request's two have come; returns the replies' keys."""
    keys: set[str] = set()
    seen: set[tuple[str, str]] = set()
    while len(seen) < 2 * requests:
        token: Token = relay.tokens.get(timeout=300)
        if (token.request, token.recipient) in seen:
            continue  # a mail sent twice: the final checks say so
        seen.add((token.request, token.recipient))
        if silent(token.request):
            continue
        key = f"reply {token.request} {token.recipient}"
        body = f"ACCEPT {token.token}"
        traffic.pending.put((key, mail(token.recipient, f"Re: {token.subject}", body)))
        keys.add(key)
    return keys


def drain(instances: list[Instance], relay: CountingRelay) -> None:
    """Wait until nothing stored is left to act on and every queued mail is sent
    (the claims of killed senders are taken over once their lease is over: a
    sweep just past the chaos sweeps' clock, which a killed one leased its
    mails by, sees every lease over at once)."""
    workdir = instances[0].workdir

    def settled() -> bool:
        if run_json(workdir, "inbound", "list", "--status", "received"):
            return False
        unsent = [m for m in outbox(workdir) if m["status"] != "sent"]
        if unsent:
            sweep_together(instances[:1], days=max(SWEEP_DAYS) + 0.01)
        return not unsent

    wait_for(settled, timeout=300)


def outbox(workdir: Path) -> list[dict[str, object]]:
    mails: list[dict[str, object]] = run_json(workdir, "outbox", "list", "--sent", "1000000")
    return mails


def assert_sent_once(workdir: Path, relay: CountingRelay) -> None:
    """The relay got each queued mail exactly once; a contact is reminded at most
    once per reminder day."""
    queued: Counter[Key] = Counter()
    for m in outbox(workdir):
        assert m["status"] == "sent", m
        queued[(str(m["event"]), str(m["to"]), str(m["request"] or ""))] += 1
    received = relay.snapshot()
    assert received == queued
    for key, count in received.items():
        assert count <= (2 if key[0] == "reminder" else 1), key
    assert relay.count("request-done") > 0
    assert relay.count("request-expired") > 0


def assert_state_changed_once(database_url: str) -> None:
    """Per the event log: each contact decided once, each request ended once."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT request_id, kind, actor_email FROM event")
            ).all()
    finally:
        engine.dispose()
    changes = Counter(
        (request, kind, actor if kind.startswith("validation") else None)
        for request, kind, actor in rows
        if kind != "reminder-sent"
    )
    assert changes
    assert [key for key, count in changes.items() if count > 1] == []
