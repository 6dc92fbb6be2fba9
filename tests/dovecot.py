"""A real Dovecot IMAP server for tests: own config in a temp dir, a passwd-file user,
a Maildir, a free loopback port. Started and stopped by the test fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import address_in_use, held_port
from servers import alive, wait_for

USER = "agency@bot.test"
PASSWORD = "secret-agency-password"


@dataclass
class Dovecot:
    root: Path
    port: int
    hold: socket.socket
    """Keeps ``port`` from other programs while the server is stopped."""

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    def start(self) -> None:
        """Start on ``port`` (held by the test session: no other program takes it)."""
        failure = self.try_start()
        if failure is not None:
            raise RuntimeError(failure)

    def try_start(self) -> str | None:
        """Start, and wait until it listens; None then, else what it logged.

        Dovecot binds its listeners before it forks into the background: a port
        in use makes ``dovecot`` itself exit with an error.
        """
        logged = self.log.stat().st_size if self.log.exists() else 0
        # The daemon keeps whatever it inherits open: give it no pipe to hold.
        started = subprocess.run(
            ["dovecot", "-c", str(self.config)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if started.returncode == 0:
            wait_for(lambda: _listening(self.port) or self._master_gone())
            if _listening(self.port) and not self._master_gone():
                return None
        with self.log.open("rb") as log:
            log.seek(logged)
            return f"dovecot exited ({started.returncode}): {log.read().decode(errors='replace')}"

    def _master_gone(self) -> bool:
        """Whether the master wrote its pid and then died; a pid file still being
        written (empty) is not known yet, not gone."""
        try:
            pid = (self.root / "run" / "master.pid").read_text().strip()
        except FileNotFoundError:
            return False
        return pid.isdigit() and not alive(int(pid))

    @property
    def log(self) -> Path:
        return self.root / "dovecot.log"

    def stop(self) -> None:
        pid_file = self.root / "run" / "master.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid) and not _listening(self.port), timeout=120)
        pid_file.unlink(missing_ok=True)

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put a message in the mailbox without IMAP, as the MTA would."""
        subprocess.run(
            ["doveadm", "-c", str(self.config), "save", "-u", USER, "-m", folder],
            input=raw,
            check=True,
            capture_output=True,
        )

    def deliver_to_maildir(self, raw: bytes) -> None:
        """Drop a message straight into the Maildir, as a local MDA does even while
        the IMAP server is down."""
        local, _, domain = USER.partition("@")
        maildir = self.root / "mail" / domain / local / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.mailbot-test.localhost"
        (maildir / "tmp" / name).write_bytes(raw)
        (maildir / "tmp" / name).rename(maildir / "new" / name)
        if os.geteuid() == 0:  # dovecot reads mail as the unprivileged user only
            for path in (self.root / "mail").rglob("*"):
                os.chown(path, 65534, 65534)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def make_dovecot() -> Dovecot:
    """A started Dovecot of its own, on a port it holds for as long as it lives; on
    another port should the first one be in use all the same."""
    root = Path(tempfile.mkdtemp(prefix="mailbot-dovecot-"))
    root.chmod(0o755)  # dovecot's auth process (user dovecot) reads the passwd-file
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    shutil.chown(root / "mail", 65534, 65534) if os.geteuid() == 0 else None
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    failure = ""
    for _ in range(5):
        hold = held_port()
        server = Dovecot(root, int(hold.getsockname()[1]), hold)
        write_config(root, server.port)
        failure = server.try_start() or ""
        if not failure:
            return server
        hold.close()
        if not address_in_use(failure):
            break
    raise RuntimeError(failure)


def write_config(root: Path, port: int) -> None:
    (root / "dovecot.conf").write_text(f"""
instance_name = mailbot-test-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={root}/mail/%d/%n
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")


@contextmanager
def running_dovecot() -> Iterator[Dovecot]:
    """A Dovecot for a fixture: a failure under CI=true when it is not installed."""
    if shutil.which("dovecot") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot not found, and CI=true requires it")
        pytest.skip("dovecot not found")
    server = make_dovecot()
    try:
        yield server
    finally:
        server.stop()
        server.hold.close()
        shutil.rmtree(server.root, ignore_errors=True)


class ImapRelay:
    """A TCP relay in front of Dovecot, on a port of its own: it counts the
    client's connections and, on the first only, keeps from the client every
    line of the server's containing ``drop`` (a server that misbehaves once)."""

    def __init__(self, upstream: int, drop: bytes | None = None) -> None:
        self.upstream = upstream
        self.drop = drop
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            drop = self.drop if self.connections == 1 else None
            for source, sink, dropped in ((client, server, None), (server, client, drop)):
                thread = threading.Thread(target=_pipe, args=(source, sink, dropped), daemon=True)
                self.threads.append(thread)
                thread.start()

    def close(self) -> None:
        for end in (self.listener, *self.sockets):  # a shutdown wakes a blocked accept()
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(60)
        for end in (self.listener, *self.sockets):
            end.close()


def _pipe(source: socket.socket, sink: socket.socket, drop: bytes | None) -> None:
    """Copy lines until either side closes, then close the other's way too."""
    try:
        with source.makefile("rb") as lines:
            for line in lines:
                if drop is None or drop not in line:
                    sink.sendall(line)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)
