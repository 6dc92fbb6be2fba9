"""Several installed ``mailbot serve`` processes on one database, as several MX
hosts would run them, and a relay that counts every mail they send.

Each instance has a directory of its own (its mailbot.toml: its SMTP and web
ports, the shared database, the shared ``[web] secret_key``, the relay); the
instances are started, killed with SIGKILL and restarted at will. The relay
keeps every mail with the three headers that name it (event, recipient,
request) and the token of each validation request, for replies.
"""

from __future__ import annotations

import email
import json
import queue
import re
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import reserve_port
from factories import WORLD
from test_entrypoint import MAILBOT, clean_environment, mailbot, start_serve

BOT = "changes@bot.test"
SECRET_KEY = "one-secret-for-every-instance"
_TOKEN = re.compile(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){4})\b")

Key = tuple[str, str, str]
"""What names one mail at the relay: (X-Mailbot-Event, recipient, X-Mailbot-Request)."""


@dataclass(frozen=True)
class Token:
    request: str
    recipient: str
    token: str
    subject: str


@dataclass
class CountingRelay:
    """The smarthost of every instance: counts each mail by its key, and hands
    each validation request's token to ``tokens``."""

    received: Counter[Key] = field(default_factory=Counter)
    tokens: queue.Queue[Token] = field(default_factory=queue.Queue)
    bodies: dict[Key, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        message = email.message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(message, EmailMessage)
        for recipient in envelope.rcpt_tos:
            key = (
                str(message["X-Mailbot-Event"]),
                recipient,
                str(message["X-Mailbot-Request"] or ""),
            )
            text = _text(message)
            with self.lock:
                self.received[key] += 1
                self.bodies.setdefault(key, []).append(text)
            found = _TOKEN.search(text)
            if key[0] == "validation-requested" and found:
                self.tokens.put(Token(key[2], recipient, found.group(1), str(message["Subject"])))
        return "250 2.0.0 OK"

    def count(self, event: str) -> int:
        with self.lock:
            return sum(n for key, n in self.received.items() if key[0] == event)

    def snapshot(self) -> Counter[Key]:
        with self.lock:
            return Counter(self.received)


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


@dataclass
class Instance:
    """One ``mailbot serve`` in its own directory, on its own ports."""

    workdir: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def smtp(self) -> int:
        return self.ports["smtp"]

    @property
    def web(self) -> int:
        return self.ports["web"]

    def start(self) -> None:
        log = self.workdir / f"serve-{self.starts}.log"
        self.starts += 1
        self.process = start_serve(self.workdir, log, self.ports)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut would leave it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def configure(
    root: Path,
    database_url: str,
    relay_port: int,
    count: int,
    policy_toml: str = "",
    smtp_toml: str = "",
    workers: Sequence[int] = (),
) -> list[Instance]:
    """``count`` instance directories on one database; the first one initialises it.
    ``workers`` gives instance n ``[workers] processes = workers[n]`` (0 past its end)."""
    instances = []
    for n in range(count):
        workdir = root / f"instance-{n}"
        workdir.mkdir()
        ports = {"smtp": reserve_port(), "web": reserve_port()}
        (workdir / "mailbot.toml").write_text(
            f'[bot]\naddress = "{BOT}"\nbase_url = "https://bot.test"\n'
            f'[database]\nurl = "{database_url}"\n'
            f"[smtp]\nport = {ports['smtp']}\n{smtp_toml}\n"
            f'[web]\nport = {ports["web"]}\nsecret_key = "{SECRET_KEY}"\n'
            f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {relay_port}\n'
            f"[policy]\n{policy_toml}\n"
            f"[workers]\nprocesses = {workers[n] if n < len(workers) else 0}\n"
        )
        instances.append(Instance(workdir, ports))
    assert run(instances[0].workdir, "init").returncode == 0
    return instances


def import_world(workdir: Path, services: list[str]) -> None:
    """The standard contacts, and one domain per name in ``services`` (the admin
    is Alice, the tech contact Bob)."""
    template = WORLD["services"][0]
    world = {
        "contacts": WORLD["contacts"],
        "services": [{**template, "name": name} for name in services],
    }
    (workdir / "world.json").write_text(json.dumps(world))
    result = run(workdir, "import", "world.json")
    assert result.returncode == 0, result.stderr


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The installed command in an instance's directory."""
    return mailbot(workdir, *args)


def run_json(workdir: Path, *args: str) -> Any:
    result = run(workdir, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sweep_process(workdir: Path, days: float) -> subprocess.Popen[bytes]:
    """``mailbot sweep --now <now + days>``, started and left running."""
    when = (datetime.now(UTC) + timedelta(days=days)).isoformat()
    return subprocess.Popen(
        [str(MAILBOT), "sweep", "--now", when],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_environment(),
    )


def sweep_together(instances: list[Instance], days: float) -> None:
    """One sweep from every instance's directory at once, each run to its end."""
    sweeps = [sweep_process(instance.workdir, days) for instance in instances]
    for sweep in sweeps:
        assert sweep.wait(120) == 0
