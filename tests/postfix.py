"""A real Postfix in front of mailbot, set up from the files deploy/README.md tells an
operator to copy, and an SMTP server standing in for the rest of the Internet.

Postfix's configuration is the machine's own (the package's master.cf; a
main.cf with a queue, log and loopback port of its own, relaying every outgoing
mail to the capture server) followed by ``deploy/postfix/main.cf`` as shipped,
and for the pipe route by ``deploy/postfix/master.cf``. That file, ``transport``,
``recipients`` and ``deploy/mailbot.toml`` are copied with only their paths,
ports and the pipe's user replaced (``substitute`` checks that each replaced
text is there): the domain, the routes and every setting are the ones an
operator gets.
"""

from __future__ import annotations

import email
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import on_a_free_port
from servers import alive

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
BOT = "changes@bot.example.net"
"""The bot's address in deploy/mailbot.toml and deploy/postfix/."""
POSTFIX = shutil.which("postfix", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def tool(name: str) -> str:
    """One of Postfix's commands (postmap, postqueue, sendmail), beside ``postfix``."""
    return str(Path(str(POSTFIX)).parent / name)


PIPE_USER = "nobody"
"""The pipe route's ``user=`` here: a user that is neither root nor Postfix's own."""

BASE_MAIN_CF = """\
# The machine's own settings, which deploy/postfix/main.cf is appended to: a
# Postfix of its own in {root}, on the loopback interface, delivering nothing
# locally and relaying all mail to the capture server (the Internet), logging
# to a file (there is no syslog here), retrying deferred mail within seconds.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = mx.example.net
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
disable_dns_lookups = yes
smtp_tls_security_level = none
alias_maps =
alias_database =
biff = no
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


def substitute(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; each key must be there, so that
    a change to a deploy file cannot silently leave a production value in a test."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the deploy file"
        text = text.replace(old, new)
    return text


@dataclass
class Delivered:
    """One message as the Internet received it from Postfix."""

    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def header(self, name: str) -> str:
        return str(self.message[name] or "")

    def text(self) -> str:
        body = self.message.get_body(("plain",))
        return body.get_content() if body is not None else ""


@dataclass
class Internet:
    """The capture server playing every other mail server: it keeps what it is sent,
    and refuses at RCPT, with 550, the addresses in ``unknown``."""

    unknown: set[str] = field(default_factory=set)
    received: list[Delivered] = field(default_factory=list)
    port: int = 0

    async def handle_RCPT(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self.unknown:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.received.append(
            Delivered(
                envelope.mail_from or "",
                [r.lower() for r in envelope.rcpt_tos],
                envelope.original_content or b"",
            )
        )
        return "250 2.0.0 OK"

    def to(self, address: str) -> list[Delivered]:
        """What was delivered to ``address``, oldest first."""
        return [d for d in self.received if address.lower() in d.recipients]


@dataclass
class Postfix:
    """A started Postfix with its own configuration directory, queue and log."""

    root: Path
    port: int
    """Its SMTP port (25 in production)."""

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def maillog(self, lines: int = 40) -> str:
        """The end of its log (all of it with ``lines=0``), for assertion messages."""
        path = self.root / "maillog"
        text = path.read_text(errors="replace") if path.exists() else "(no maillog)"
        return "\n".join(text.splitlines()[-lines:])

    def deliveries(self, message_id: str) -> list[tuple[str, str]]:
        """(recipient, status) of each delivery attempt Postfix logged for the message
        with this Message-ID (``<...>``), in order: ``sent``, ``deferred``, ``bounced``."""
        return [(to, status) for to, status, _ in self.attempts(message_id)]

    def attempts(self, message_id: str) -> list[tuple[str, str, str]]:
        """(recipient, status, why) of each delivery attempt, as ``deliveries``; why
        is what Postfix logged after the status (a pipe's output, for instance)."""
        log = self.maillog(lines=0)
        queued = set(re.findall(rf"\]: ([0-9A-F]+): message-id={re.escape(message_id)}", log))
        found = re.finditer(r"\]: ([0-9A-F]+): to=<([^>]*)>.*?, status=(\w+)(.*)", log)
        return [(line[2], line[3], line[4].strip()) for line in found if line[1] in queued]

    def queue(self) -> str:
        """``postqueue -p``: the mail it holds, and why."""
        result = subprocess.run(
            [tool("postqueue"), "-c", str(self.etc), "-p"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout + result.stderr

    def flush(self) -> None:
        """``postqueue -f``: retry the deferred mail now."""
        subprocess.run(
            [tool("postqueue"), "-c", str(self.etc), "-f"], capture_output=True, check=True
        )

    def stop(self) -> None:
        """Stop it, and wait until its master process is gone."""
        pid_file = self.root / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
        subprocess.run(
            [str(POSTFIX), "-c", str(self.etc), "stop"], capture_output=True, check=False
        )
        deadline = time.monotonic() + 60
        while pid and alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def start_postfix(
    root: Path,
    relay_port: int,
    mailbot_port: int,
    *,
    pipe: tuple[Path, Path] | None = None,
) -> Postfix:
    """Postfix configured from deploy/postfix in ``root``, relaying to the Internet on
    ``relay_port``. The bot's domain goes to the listener on ``mailbot_port``, or
    with ``pipe=(mailbot command, config file)`` through the pipe route."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "queue").mkdir()
    shutil.chown(root / "data", "postfix")
    transport, master_cf = _routes(mailbot_port, pipe)
    (etc / "transport").write_text(transport)
    shutil.copyfile(DEPLOY / "postfix" / "recipients", etc / "recipients")
    main_cf = substitute((DEPLOY / "postfix" / "main.cf").read_text(), {"/etc/postfix/": f"{etc}/"})
    base = BASE_MAIN_CF.format(root=root, relay_port=relay_port)
    (etc / "main.cf").write_text(f"{base}\n{main_cf}")
    for table in ("transport", "recipients"):
        subprocess.run(
            [tool("postmap"), "-c", str(etc), str(etc / table)], check=True, capture_output=True
        )

    def start(port: int) -> str | None:
        (etc / "master.cf").write_text(f"{_debian_master_cf(port)}\n{master_cf}")
        result = subprocess.run(
            [str(POSTFIX), "-c", str(etc), "start"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return None
        return result.stdout + result.stderr + Postfix(root, port).maillog()

    port = on_a_free_port(start)
    return Postfix(root, port)


def _routes(mailbot_port: int, pipe: tuple[Path, Path] | None) -> tuple[str, str]:
    """deploy/postfix/transport, and what is appended to master.cf: the SMTP route to
    ``mailbot_port``, or the pipe route (the transport's other line, uncommented,
    and master.cf's service with the test's user, command and config file)."""
    transport = substitute(
        (DEPLOY / "postfix" / "transport").read_text(), {":2525": f":{mailbot_port}"}
    )
    master_cf = ""  # the SMTP route needs nothing there
    if pipe is not None:
        command, config = pipe
        transport = re.sub(r"^(bot\.example\.net\s+smtp:)", r"#\1", transport, flags=re.M)
        transport = substitute(
            transport, {"#bot.example.net    mailbot:": "bot.example.net    mailbot:"}
        )
        master_cf = substitute(
            (DEPLOY / "postfix" / "master.cf").read_text(),
            {
                "user=mailbot": f"user={PIPE_USER}",
                "/opt/mailbot/venv/bin/mailbot": str(command),
                "/etc/mailbot/mailbot.toml": str(config),
            },
        )
    return transport, master_cf


def _debian_master_cf(port: int) -> str:
    """The package's master.cf, with no chroot (the temp dirs are outside the
    default jail) and its SMTP server on ``port`` of the loopback interface."""
    text = Path("/usr/share/postfix/master.cf.dist").read_text()
    text = substitute(text, {"\nsmtp      inet": f"\n127.0.0.1:{port} inet"})
    return re.sub(
        r"^(\S+\s+(?:inet|unix|unix-dgram|fifo|pass)\s+\S+\s+\S+\s+)y(\s)",
        r"\1n\2",
        text,
        flags=re.M,
    )


def make_root(prefix: str) -> Path:
    """A temp dir Postfix's own user (and the pipe's) can reach."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def mailbot_config(
    path: Path, database: Path, *, smtp_port: int, web_port: int, postfix_port: int
) -> Path:
    """deploy/mailbot.toml at ``path``, with its database and ports replaced."""
    text = substitute(
        (DEPLOY / "mailbot.toml").read_text(),
        {
            "sqlite:////var/lib/mailbot/mailbot.db": f"sqlite:///{database}",
            "port = 2525": f"port = {smtp_port}",
            "port = 8080": f"port = {web_port}",
            "port = 25\n": f"port = {postfix_port}\n",
        },
    )
    path.write_text(text)
    return path


def as_pipe_user() -> dict[str, Any]:
    """Popen arguments that run a command as the pipe route's user."""
    user = pwd.getpwnam(PIPE_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def command_for_pipe_user(mailbot: Path, root: Path) -> Path:
    """The installed ``mailbot`` command, or one the pipe route's user can run.

    A virtualenv made from a Python in a home directory (pyenv's, under /root)
    cannot be run by another user. Then this is a virtualenv of the system's
    Python of the same version, readable by all, that sees the installed
    packages through a ``.pth`` file: the same mailbot, as /opt/mailbot/venv
    would hold it.
    """
    python = Path(sys.executable)
    try:
        subprocess.run([str(python), "-c", "pass"], check=True, **as_pipe_user())
        return mailbot
    except (OSError, subprocess.CalledProcessError):
        pass  # not for this user
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        raise FileNotFoundError(f"{PIPE_USER} cannot run {python}, and there is no {system}")
    venv = root / "venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "installed-mailbot.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    command = venv / "bin" / "mailbot"
    script = mailbot.read_text().split("\n", 1)[1]
    command.write_text(f"#!{venv}/bin/python\n{script}")
    command.chmod(0o755)
    return command
