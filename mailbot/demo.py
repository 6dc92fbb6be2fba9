"""``mailbot demo``: the seed's story, played for real on a throwaway directory.

The admin of example.com hands the technical contact to a web agency. A real
``mailbot serve`` runs as a subprocess on free loopback ports; the demo talks
to it the way people and their mail clients would: SMTP to send, HTTP to click
the link and press Accept, the Maildir to read what mailbot sent.
"""

from __future__ import annotations

import contextlib
import email
import functools
import json
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

BOT = "changes@mailbot.localhost"
ADMIN = "alice@example.com"
AGENCY = "support@websenso.example"
TECH = "bob@example.com"
WORLD = {
    "contacts": [
        {"handle": "AM1234-MB", "email": ADMIN, "name": "Alice Martin", "language": "en"},
        {"handle": "BB200-MB", "email": TECH, "name": "Bob Brown", "language": "en"},
        {"handle": "WS900-MB", "email": AGENCY, "name": "WebSenso", "language": "en"},
    ],
    "services": [
        {
            "name": "example.com",
            "kind": "domain",
            "admin": "AM1234-MB",
            "tech": "BB200-MB",
            "billing": "AM1234-MB",
        },
    ],
}
WAIT_SECONDS = 120.0
"""How long the demo waits for each step (the server to start, a mail to arrive)
before it gives up: generous, so that a busy machine only makes it slower."""
PORT_ATTEMPTS = 5
UNDO_WINDOW = timedelta(minutes=10, seconds=1)
"""A little more than the default [web] undo_minutes: when a page answer counts."""


class DemoFailed(Exception):
    pass


def run_demo(*, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="mailbot-demo-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        _prepare(root)
        server, config = _start_server(root)
        _story(root, config)
        return _stop_server(server)
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        if keep:
            print(f"\n(demo files kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _write_config(root: Path, config: dict[str, Any]) -> None:
    (root / "mailbot.toml").write_text(
        f'[bot]\naddress = "{BOT}"\nbase_url = "http://127.0.0.1:{config["web"]}"\n'
        f'[database]\nurl = "sqlite:///{root}/mailbot.db"\n'
        f"[smtp]\nport = {config['smtp']}\n[web]\nport = {config['web']}\n"
        f'[outgoing]\nmaildir = "{root}/sent"\n'
    )


def _prepare(root: Path) -> None:
    _write_config(root, {"smtp": 0, "web": 0})  # the ports are chosen when serving
    (root / "customers.json").write_text(json.dumps(WORLD))
    print("mailbot demo: changing the technical contact of example.com, by email\n")
    print(f"  example.com   admin: Alice <{ADMIN}>   tech: Bob <{TECH}>")
    print(f"  the agency    WebSenso <{AGENCY}>\n")
    _mailbot(root, "init")
    _mailbot(root, "import", "customers.json")


def _mailbot(root: Path, *args: str) -> str:
    command = [sys.executable, "-m", "mailbot", "--config", str(root / "mailbot.toml"), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root)
    if result.returncode != 0:
        raise DemoFailed(f"mailbot {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _start_server(root: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``mailbot serve`` on two free loopback ports, and those ports.

    Each port is held (bound, not listening) until the server takes it over, so
    that no other program is handed it meanwhile; should one be in use all the
    same, the server says so and is started again on others.
    """
    command = [sys.executable, "-m", "mailbot", "--config", str(root / "mailbot.toml"), "serve"]
    for _ in range(PORT_ATTEMPTS):
        with _held_port() as smtp, _held_port() as web:
            config = {"smtp": smtp, "web": web}
            _write_config(root, config)
            with (root / "serve.log").open("wb") as log:  # the child keeps its own copy
                server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT)
            _wait(functools.partial(_settled, server, smtp, web), "mailbot serve to start")
        if server.poll() is None:
            print(f"- mailbot serve is running (SMTP on port {smtp}, web on port {web})")
            return server, config
        output = (root / "serve.log").read_text(errors="replace").strip()
        if "cannot listen" not in output:
            raise DemoFailed(f"mailbot serve: {output}")
    raise DemoFailed(f"mailbot serve found no free port in {PORT_ATTEMPTS} attempts")


@contextlib.contextmanager
def _held_port() -> Iterator[int]:
    """A loopback port the kernel picked, kept from other programs while the block
    runs: bound with SO_REUSEADDR but not listening, so that ``mailbot serve``
    (which binds with SO_REUSEADDR too) can take it over."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _settled(server: subprocess.Popen[bytes], *ports: int) -> bool:
    """Whether the server has either exited or opened all its ports."""
    return server.poll() is not None or all(map(_listening, ports))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise DemoFailed(f"timed out waiting for {what}")


def _story(root: Path, config: dict[str, Any]) -> None:
    mailbox = _Mailbox(root / "sent" / "new")
    print(f"\n1. Alice mails {BOT}: CHANGE example.com / tech: {AGENCY}")
    _send(config["smtp"], ADMIN, "CHANGE example.com", f"tech: {AGENCY}\n")
    opened = mailbox.expect(3, "the request mails")
    for message in opened:
        _show(message)
    asks = {
        m["To"].addresses[0].addr_spec: m
        for m in opened
        if m["X-Mailbot-Event"] == "validation-requested"
    }

    link = _link(asks[ADMIN])
    print(f"\n2. Alice opens her link, chooses Accept and sends: {link.split('/v/')[0]}/v/…")
    print(f"   {_click_accept(link)}")
    _show(mailbox.expect(1, "the mail that says what was recorded")[0])
    later = (datetime.now(UTC) + UNDO_WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"   Her answer can be undone for {UNDO_WINDOW.seconds // 60} minutes; then it counts:")
    print(f"   mailbot sweep --now {later}")
    _mailbot(root, "sweep", "--now", later)
    _show(mailbox.expect(1, "the acceptance receipt")[0])

    ask = asks[AGENCY]
    print("\n3. WebSenso replies to its token mail with just: ACCEPT")
    _send(
        config["smtp"],
        AGENCY,
        f"Re: {ask['Subject']}",
        "ACCEPT\n\nThe WebSenso team\n",
        to=ask["Reply-To"].addresses[0].addr_spec,
        in_reply_to=ask["Message-ID"],
    )
    for message in mailbox.expect(3, "the confirmations"):
        _show(message)

    service = json.loads(_mailbot(root, "services", "show", "example.com", "--json"))
    requests = json.loads(_mailbot(root, "requests", "list", "--json"))
    print(
        f"\n4. example.com now: admin {service['admin']}, tech {service['tech']}, "
        f"billing {service['billing']}"
    )
    for request in requests:
        print(f"   request {request['id']}: {request['status']}")
    if service["tech"] != AGENCY or [r["status"] for r in requests] != ["done"]:
        raise DemoFailed("the change did not take effect")


def _send(
    port: int,
    sender: str,
    subject: str,
    body: str,
    *,
    to: str = BOT,
    in_reply_to: str | None = None,
) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = make_msgid(domain=sender.partition("@")[2])
    if in_reply_to:
        message["In-Reply-To"] = message["References"] = in_reply_to
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.send_message(message)


class _Mailbox:
    """Reads the Maildir mailbot delivers to, in arrival order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen = 0

    def expect(self, count: int, what: str) -> list[EmailMessage]:
        def arrived() -> list[Path] | None:
            files = sorted(self.folder.glob("*")) if self.folder.is_dir() else []
            return files if len(files) >= self.seen + count else None

        files = _wait(arrived, what)[self.seen : self.seen + count]
        self.seen += count
        return [_parse(path.read_bytes()) for path in files]


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _show(message: EmailMessage) -> None:
    to = message["To"].addresses[0].addr_spec
    print(f"   ✉ to {to:<26} [{message['X-Mailbot-Event']}] {message['Subject']}")
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    if token := re.search(r"\b[0-9A-Z]{4}(?:-[0-9A-Z]{4}){4}\b", text):
        print(f"     personal token {token.group(0)}")


def _link(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    found = re.search(r"https?://\S+/v/[0-9A-Z]+", body.get_content() if body else "")
    if not found:
        raise DemoFailed("no link in the validation mail")
    return found.group(0)


class _Forms(HTMLParser):
    """Finds the page's form fields, with the Accept choice picked, as a person would."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        name, value = values.get("name"), values.get("value")
        if tag not in ("input", "button") or not name or not value:
            return
        if name != "decision" or value == "accept":
            self.fields[name] = value


def _click_accept(link: str) -> str:
    """GET the page (which changes nothing), then submit its Accept form."""
    with urllib.request.urlopen(link, timeout=60) as response:  # noqa: S310 (loopback http)
        forms = _Forms()
        forms.feed(response.read().decode())
        shown = response.status
    forms.fields["decision"] = "accept"
    data = urllib.parse.urlencode(forms.fields).encode()
    with urllib.request.urlopen(link, data=data, timeout=60) as response:  # noqa: S310
        page = response.read().decode()
        answered = response.status
    heading = re.search(r"<h1[^>]*>(.*?)</h1>", page, re.S)
    title = " ".join(re.sub(r"<[^>]+>", " ", heading.group(1)).split()) if heading else "?"
    return f"GET {shown} (the page with the form), POST {answered}: \u201c{title}\u201d"


def _stop_server(server: subprocess.Popen[bytes]) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        raise DemoFailed("mailbot serve did not stop on SIGTERM") from None
    print(f"\n- mailbot serve stopped on SIGTERM (exit code {code}); the request is done.")
    return 0 if code == 0 else 1
