"""Worker processes, through the installed command: ``mailbot serve`` with
``[workers] processes = N`` and ``mailbot worker`` beside it, on SQLite and
PostgreSQL, fed over real SMTP, answering into a Maildir.

Whatever acts (serve's workers, a separate worker, a worker killed with
SIGKILL and started again), every acknowledged message is acted on exactly
once and every mail is written once; no worker outlives serve.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from conftest import reserve_port
from servers import alive, wait_for
from test_crash_recovery import BOT, Burst, acted, answered, backlog
from test_entrypoint import MAILBOT, clean_environment, mailbot, start_serve

from mailbot.worker import (
    ACTIVE_SECONDS,
    BURST_LOOK_SECONDS,
    BURST_RATE,
    BURST_WINDOW_SECONDS,
    DEFER_SECONDS,
    IDLE_MAX_SECONDS,
    IDLE_MIN_SECONDS,
    QUIET_SECONDS,
    Arrivals,
    IdlePace,
)

SERVICES = 4
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
_TOKEN = re.compile(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})\b")


def world() -> dict[str, Any]:
    """Services whose admins ask to change their tech contact."""
    contacts = [
        {"handle": f"AD{i}-MB", "email": f"admin{i}@customer{i}.test", "name": f"Admin {i}"}
        for i in range(SERVICES)
    ] + [
        {"handle": f"TE{i}-MB", "email": f"tech{i}@hosting.test", "name": f"Tech {i}"}
        for i in range(SERVICES)
    ]
    services = [
        {
            "name": f"site{i}.test",
            "kind": "domain",
            "admin": f"AD{i}-MB",
            "tech": f"TE{i}-MB",
            "billing": f"AD{i}-MB",
        }
        for i in range(SERVICES)
    ]
    return {"contacts": contacts, "services": services}


def configure(workdir: Path, database_url: str, processes: int) -> dict[str, int]:
    """mailbot.toml, an initialised database with the world; the ports to listen on."""
    ports = {"smtp": reserve_port(), "web": reserve_port()}
    (workdir / "mailbot.toml").write_text(
        f'[bot]\naddress = "{BOT}"\n'
        f'[database]\nurl = "{database_url}"\n'
        f"[smtp]\nport = {ports['smtp']}\n[web]\nport = {ports['web']}\n"
        f'[outgoing]\nmaildir = "{workdir / "sent"}"\n'
        f"[workers]\nprocesses = {processes}\n"
    )
    (workdir / "world.json").write_text(json.dumps(world()))
    for command in (["init"], ["import", "world.json"]):
        result = mailbot(workdir, *command)
        assert result.returncode == 0, result.stderr
    return ports


@pytest.fixture
def started() -> Any:
    """Processes started by a test, killed at its end if still running."""
    processes: list[Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def serve(workdir: Path, ports: dict[str, int], started: list[Popen[bytes]]) -> Popen[bytes]:
    process = start_serve(workdir, workdir / f"serve-{len(started)}.log", ports)
    started.append(process)
    return process


def worker_pids(log: Path) -> dict[int, int]:
    """The pid of each worker serve started, the latest per slot, from serve's log."""
    return {int(slot): int(pid) for slot, pid in _STARTED.findall(log.read_text())}


def send(port: int, sender: str, raw: bytes, to: str = BOT) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.sendmail(sender, [to], raw)


def message(sender: str, subject: str, body: str, n: int) -> bytes:
    return (
        f"From: {sender}\r\nTo: {BOT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <w{n}.{sender}>\r\n\r\n{body}\r\n"
    ).encode()


def sent_mail(workdir: Path) -> list[Any]:
    new = workdir / "sent" / "new"
    return [
        message_from_bytes(path.read_bytes(), policy=policy.default)
        for path in (sorted(new.iterdir()) if new.is_dir() else [])
    ]


def requests(workdir: Path) -> list[dict[str, Any]]:
    result = mailbot(workdir, "requests", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def settled(workdir: Path) -> bool:
    """Nothing stored waits to be acted on, and nothing queued waits to be sent."""
    result = mailbot(workdir, "outbox", "list", "--sent", "0", "--json")
    return backlog(workdir) == [] and result.returncode == 0 and json.loads(result.stdout) == []


def changes_accepted(workdir: Path, port: int) -> None:
    """Every admin asks for a new tech contact; every validation mail is then
    answered ACCEPT with its token, by its recipient; until all are done."""
    for i in range(SERVICES):
        admin = f"admin{i}@customer{i}.test"
        body = f"CHANGE site{i}.test\r\ntech: newtech{i}@agency.test"
        send(port, admin, message(admin, f"CHANGE site{i}.test", body, i))
    wait_for(lambda: len(requests(workdir)) == SERVICES, timeout=180)
    answered_tokens: set[str] = set()
    while any(request["status"] == "pending" for request in requests(workdir)):
        wait_for(lambda: settled(workdir), timeout=180)
        for mail in sent_mail(workdir):
            if mail["X-Mailbot-Event"] != "validation-requested":
                continue
            found = _TOKEN.search(mail.get_body(("plain",)).get_content())
            assert found, mail
            if found.group(1) not in answered_tokens:
                answered_tokens.add(found.group(1))
                to = str(mail["To"]).split("<")[-1].rstrip(">")
                text = f"ACCEPT {found.group(1)}"
                send(port, to, message(to, text, text, len(answered_tokens)))
        wait_for(lambda: settled(workdir), timeout=180)


def all_answered(burst: Burst, total: int) -> bool:
    """Whether each of the burst's messages got an answer (250 or an error)."""
    return len(burst.acked) + len(burst.refused) + len(burst.deferred) >= total


def sent_in_full(burst: Burst, clients: int, per_client: int) -> Burst:
    """The burst, once every message got its answer (250 or an error)."""
    burst.start(clients, per_client)
    total = clients * per_client
    wait_for(lambda: all_answered(burst, total), timeout=300)
    burst.join()
    return burst


def assert_each_mail_written_once(workdir: Path) -> None:
    """No (event, recipient, request) was written twice to the Maildir."""
    written = Counter(
        (str(m["X-Mailbot-Event"]), str(m["To"]), str(m["X-Mailbot-Request"]))
        for m in sent_mail(workdir)
    )
    assert written
    assert max(written.values()) == 1, written.most_common(3)


def assert_burst_acted_on_once(workdir: Path, burst: Burst) -> None:
    acked = set(burst.acked)
    assert acked
    assert burst.refused == []
    counts = acted(workdir)
    assert {sender: counts[sender] for sender in acked} == dict.fromkeys(acked, 1)
    assert max(counts.values()) == 1
    written = answered(workdir / "sent")
    assert {sender: written[sender] for sender in acked} == dict.fromkeys(acked, 1)


def test_serve_with_two_workers_acts_on_requests_and_replies_once(
    tmp_path: Path, database_url: str, started: list[Popen[bytes]]
) -> None:
    ports = configure(tmp_path, database_url, processes=2)
    server = serve(tmp_path, ports, started)
    burst = Burst(ports["smtp"], "h")
    burst.start(clients=3, per_client=12)
    changes_accepted(tmp_path, ports["smtp"])
    wait_for(lambda: all_answered(burst, 36), timeout=300)
    burst.join()
    wait_for(lambda: settled(tmp_path), timeout=180)
    assert {request["status"] for request in requests(tmp_path)} == {"done"}
    assert_burst_acted_on_once(tmp_path, burst)
    assert_each_mail_written_once(tmp_path)
    log = (tmp_path / "serve-0.log").read_text()
    assert set(worker_pids(tmp_path / "serve-0.log")) == {1, 2}
    # serve itself only stored: each message was acted on in a worker process
    assert "mailbot worker acting on stored mail" in log
    assert server.poll() is None


def test_a_separate_worker_acts_beside_serves_own_even_while_that_one_hangs(
    tmp_path: Path, database_url: str, started: list[Popen[bytes]]
) -> None:
    """serve with one worker, and ``mailbot worker`` beside it: while serve's
    worker is stopped (SIGSTOP), the other acts on everything; once it runs
    again, both act, and nothing is acted on twice."""
    ports = configure(tmp_path, database_url, processes=1)
    serve(tmp_path, ports, started)
    pids = wait_for(lambda: worker_pids(tmp_path / "serve-0.log"))
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = Popen(
            [str(MAILBOT), "worker"],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_environment(),
        )
    started.append(worker)
    wait_for(lambda: "acting on stored mail" in log.read_text(), timeout=120)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        first = sent_in_full(Burst(ports["smtp"], "s"), clients=3, per_client=10)
        wait_for(lambda: settled(tmp_path), timeout=180)
        assert log.read_text().count("help sent to") == len(first.acked)
    finally:
        os.kill(pids[1], signal.SIGCONT)
    second = sent_in_full(Burst(ports["smtp"], "t"), clients=3, per_client=10)
    wait_for(lambda: settled(tmp_path), timeout=180)
    for burst in (first, second):
        assert_burst_acted_on_once(tmp_path, burst)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    assert "Traceback" not in log.read_text()


def test_a_worker_killed_mid_burst_is_restarted_and_nothing_is_acted_on_twice(
    tmp_path: Path, database_url: str, started: list[Popen[bytes]]
) -> None:
    ports = configure(tmp_path, database_url, processes=2)
    serve(tmp_path, ports, started)
    log = tmp_path / "serve-0.log"
    wait_for(lambda: len(worker_pids(log)) == 2)
    first = worker_pids(log)
    burst = Burst(ports["smtp"], "k")
    burst.start(clients=3, per_client=30)
    wait_for(lambda: len(burst.acked) >= 30, timeout=180)
    os.kill(first[1], signal.SIGKILL)
    wait_for(lambda: worker_pids(log).get(1, first[1]) != first[1], timeout=120)
    wait_for(lambda: all_answered(burst, 90), timeout=300)
    burst.join()
    wait_for(lambda: settled(tmp_path), timeout=180)
    assert "worker 1 (pid" in log.read_text()
    assert "killed by SIGKILL" in log.read_text()
    assert not alive(first[1])
    assert alive(worker_pids(log)[1])
    assert alive(first[2])
    assert_burst_acted_on_once(tmp_path, burst)
    assert_each_mail_written_once(tmp_path)


def test_a_worker_killed_by_a_signal_without_a_name_is_restarted(
    tmp_path: Path, started: list[Popen[bytes]]
) -> None:
    """A real-time signal (which Python's ``signal.Signals`` cannot name) kills
    a worker: serve says so and starts it again, and the new one acts."""
    ports = configure(tmp_path, f"sqlite:///{tmp_path / 'mailbot.db'}", processes=1)
    server = serve(tmp_path, ports, started)
    log = tmp_path / "serve-0.log"
    wait_for(lambda: 1 in worker_pids(log))
    first = worker_pids(log)[1]
    unnamed = signal.SIGRTMIN + 1
    os.kill(first, unnamed)
    wait_for(lambda: worker_pids(log).get(1, first) != first, timeout=120)
    assert f"worker 1 (pid {first}) was killed by signal {unnamed}" in log.read_text()
    burst = sent_in_full(Burst(ports["smtp"], "r"), clients=1, per_client=3)
    wait_for(lambda: settled(tmp_path), timeout=180)
    assert_burst_acted_on_once(tmp_path, burst)
    assert not alive(first)
    assert alive(worker_pids(log)[1])
    assert server.poll() is None
    assert "Traceback" not in log.read_text()


PAUSE = 1.5 * QUIET_SECONDS
"""A pause between arrivals, clear of rounding."""


class ArrivalsSeen:
    """An Arrivals on a clock the test moves, over ids the test stores."""

    def __init__(self) -> None:
        self.now, self.newest = 0.0, 0
        self.arrivals = Arrivals(lambda: self.newest, clock=lambda: self.now)

    def step(self, seconds: float, stored: int = 0) -> bool:
        """Whether acting holds back, ``seconds`` later and ``stored`` messages on."""
        self.now += seconds
        self.newest += stored
        return bool(self.arrivals.hold())


def test_acting_yields_to_a_burst_of_arrivals_for_a_bounded_time() -> None:
    """While the newest stored id keeps moving, a worker holds back, for at
    most DEFER_SECONDS; then it acts beside the burst until arrivals pause,
    and the next burst is yielded to again."""
    seen = ArrivalsSeen()
    assert seen.step(0.0, stored=1)  # a message just stored: hold back
    tick = QUIET_SECONDS / 2
    held = [seen.step(tick, stored=1) for _ in range(int(2 * DEFER_SECONDS / tick))]
    assert held[0]  # held back at first
    assert not held[-1]  # not past the bound
    assert sum(held) == pytest.approx(DEFER_SECONDS / tick, abs=3)
    assert not seen.step(tick, stored=1)  # the burst goes on: acting goes on beside it
    seen.step(QUIET_SECONDS)  # the last arrival seen
    assert not seen.step(BURST_WINDOW_SECONDS)  # then a pause
    assert seen.step(PAUSE, stored=1)  # a new burst is yielded to again


def test_a_burst_committed_in_slow_batches_holds_acting_back_until_it_ends() -> None:
    """On a loaded machine the listener's batch commits leave gaps far longer
    than QUIET_SECONDS between two moves of the newest id: at the burst's
    rate they are not pauses. Once the burst ends, acting starts within the
    window."""
    seen = ArrivalsSeen()
    seen.step(1.0)
    commit = 8 * QUIET_SECONDS
    batch = int(5 * BURST_RATE * commit)  # arriving at five times the burst rate
    held = []
    for _ in range(20):
        held.append(seen.step(0.0, stored=batch))
        held += [seen.step(commit / 4) for _ in range(3)]  # the next batch commits
        seen.step(commit / 4)
    assert all(held)
    seen.step(0.0, stored=batch)
    waited = 0.0
    while seen.step(PAUSE):
        waited += PAUSE
    assert waited <= BURST_WINDOW_SECONDS + PAUSE


def test_a_worker_held_back_by_a_burst_looks_at_it_seldom() -> None:
    """Every worker looks at the newest id while it holds back, and each look
    is a query: through a long burst they come at the slower burst pace."""
    now, looks = [0.0], [0]
    rate = 5 * BURST_RATE

    def newest() -> int:
        looks[0] += 1
        return int(rate * max(0.0, now[0] - 1.0))  # the burst starts at 1 s

    arrivals = Arrivals(newest, clock=lambda: now[0])
    now[0] = 1.0
    while now[0] < 1.0 + DEFER_SECONDS / 2:
        held = arrivals.hold()
        assert held > 0
        now[0] += held
    most = (DEFER_SECONDS / 2) / BURST_LOOK_SECONDS + BURST_WINDOW_SECONDS / QUIET_SECONDS
    assert looks[0] <= most


def test_paced_arrivals_are_acted_on_between_them() -> None:
    """Replies arriving tens a second, sometimes two in one commit, are not a
    burst: every gap of QUIET_SECONDS between them is a pause."""
    seen = ArrivalsSeen()
    seen.step(1.0)
    gap = 0.03
    assert (4 / 3) / gap < BURST_RATE / 4  # 44 a second
    for n in range(100):
        assert seen.step(gap - PAUSE, stored=1 + (n % 3 == 0))
        assert not seen.step(PAUSE)


def test_a_slow_trickle_seen_after_a_long_look_is_not_a_burst() -> None:
    """A worker busy acting looks again late, and sees everything stored
    meanwhile at once: that is a burst only if it came at the burst's rate."""
    seen = ArrivalsSeen()
    seen.step(1.0)
    trickle = int(BURST_RATE * 0.5 * 1.0)  # half the rate, over a second unseen
    assert seen.step(1.0, stored=trickle)  # just stored
    assert not seen.step(PAUSE)
    fast = int(BURST_RATE * 2 * 0.3)  # twice the rate, over 0.3 s unseen
    assert seen.step(0.3, stored=fast)
    assert seen.step(PAUSE)


def test_no_worker_outlives_serve(tmp_path: Path, started: list[Popen[bytes]]) -> None:
    """SIGTERM: serve stops its workers and exits 0. SIGKILL: they stop on their own."""
    ports = configure(tmp_path, f"sqlite:///{tmp_path / 'mailbot.db'}", processes=2)
    for n, how in enumerate((signal.SIGKILL, signal.SIGTERM)):
        server = serve(tmp_path, ports, started)
        log = tmp_path / f"serve-{n}.log"
        wait_for(lambda log=log: len(worker_pids(log)) == 2)  # type: ignore[misc]
        pids = list(worker_pids(log).values())
        assert all(map(alive, pids))
        server.send_signal(how)
        status = server.wait(timeout=120)
        assert status == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        wait_for(lambda pids=pids: not any(map(alive, pids)), timeout=120)  # type: ignore[misc]
        assert "Traceback" not in log.read_text()


def test_worker_with_a_bad_configuration_or_database_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    assert b"worker" in mailbot(tmp_path, "--help").stdout
    assert b"SIGTERM" in mailbot(tmp_path, "worker", "--help").stdout
    (tmp_path / "mailbot.toml").write_text("[workers]\nprocesses = -1\n")
    result = mailbot(tmp_path, "worker")
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "workers.processes" in lines[0]
    database = tmp_path / "empty.db"
    (tmp_path / "mailbot.toml").write_text(f'[database]\nurl = "sqlite:///{database}"\n')
    result = mailbot(tmp_path, "worker")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "mailbot init" in lines[0]


def test_a_worker_that_just_acted_naps_briefly_and_an_idle_one_seldom_looks() -> None:
    """Right after a message, the next one (a paced reply) is found within the
    shortest nap; a worker with nothing to do for a while looks four times a
    second at most."""
    now = [0.0]
    pace = IdlePace(clock=lambda: now[0])

    def naps_over(seconds: float) -> list[float]:
        taken: list[float] = []
        end = now[0] + seconds
        while now[0] < end:
            taken.append(pace.nap())
            now[0] += taken[-1]
        return taken

    idle = naps_over(10.0)
    assert max(idle) == IDLE_MAX_SECONDS
    assert len(idle) <= 10.0 / IDLE_MAX_SECONDS + 5
    pace.acted()
    assert set(naps_over(ACTIVE_SECONDS - IDLE_MIN_SECONDS)) == {IDLE_MIN_SECONDS}
    assert naps_over(ACTIVE_SECONDS)[-1] > IDLE_MIN_SECONDS  # then longer again
