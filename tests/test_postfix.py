"""deploy/ as an operator copies it: a real Postfix in front of a real ``mailbot serve``,
mail in from the Internet, mailbot's mail out through Postfix, bounces back to
the VERP address; and the pipe route, where Postfix runs ``mailbot process
--store-only`` and ``mailbot serve`` acts on what it stores, which defers
rather than bounces when the database or the configuration is unavailable.

The Internet is an SMTP server on 127.0.0.1 that Postfix relays everything to
(tests/postfix.py); mailbot is the installed command, run as a separate process.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import smtplib
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import reserve_port
from postfix import (
    BOT,
    PIPE_USER,
    POSTFIX,
    Delivered,
    Internet,
    Postfix,
    as_pipe_user,
    command_for_pipe_user,
    mailbot_config,
    make_root,
    start_postfix,
    tool,
)
from servers import RelayController
from test_entrypoint import MAILBOT, clean_environment, listening

T = TypeVar("T")
ALICE = "alice@example.com"
"""Admin of every service here."""
CAROL = "carol@agency.example"
"""Named as the new tech contact."""
GONE = "gone@nowhere.example"
"""An address the Internet refuses with 550."""
WORLD = {
    "contacts": [
        {"handle": "AM1-EX", "email": ALICE, "name": "Alice Martin", "language": "en"},
        {"handle": "CA2-EX", "email": CAROL, "name": "Carol Agency", "language": "en"},
    ],
    "services": [
        {"name": name, "kind": "domain", "admin": "AM1-EX", "tech": "AM1-EX", "billing": "AM1-EX"}
        for name in (
            "in.example",
            "reply.example",
            "bounce.example",
            "two.example",
            "twice.example",
            "pipe.example",
            "later.example",
            "unread.example",
        )
    ],
}
VERP = re.compile(r"^changes\+bounce-[^@]+@bot\.example\.net$")
PIPE_REQUEST = "<pipe.1@client.example>"
DEADLINE = 60.0
"""How long to wait for mail to cross Postfix and mailbot on a loaded machine."""


def require_postfix() -> None:
    """Skip without Postfix (or without root, which Postfix needs to start); under
    ``CI=true``, where both must be there, fail instead."""
    missing = "postfix not installed" if POSTFIX is None else None
    if missing is None and os.geteuid() != 0:
        missing = "Postfix starts only as root"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}, and CI=true requires the Postfix tests to run")
    pytest.skip(missing)


@dataclass
class Deployment:
    """Postfix, the Internet behind it and mailbot behind it, as the deploy doc sets
    them up; ``config`` is mailbot's copy of deploy/mailbot.toml."""

    internet: Internet
    postfix: Postfix
    config: Path
    workdir: Path
    listener: int = 0
    """The port of mailbot's SMTP listener, on the SMTP route."""
    web: int = 0
    """The port of its link pages and /healthz, on the SMTP route."""
    command: Path = MAILBOT
    as_user: dict[str, Any] = field(default_factory=dict)
    """Popen arguments that run mailbot as the pipe route's user, on that route."""

    def mailbot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(self.command, self.config, self.workdir, self.as_user, *args)

    def json(self, *args: str) -> Any:
        result = self.mailbot(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def send(self, raw: bytes, sender: str, *recipients: str) -> None:
        """Hand a message to Postfix's SMTP port, as a server on the Internet would."""
        with smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=DEADLINE) as client:
            client.sendmail(sender, list(recipients), raw)

    def wait(self, condition: Callable[[], T], what: str) -> T:
        """Poll until ``condition`` holds; on time-out, say what was awaited and show
        Postfix's log and queue."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if result := condition():
                return result
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}\n--- maillog:\n{self.postfix.maillog()}\n"
            f"--- queue:\n{self.postfix.queue()}\n--- serve.log:\n{self.serve_log()}"
        )

    def logged(self, message_id: str, attempts: int) -> list[tuple[str, str]]:
        """Postfix's delivery attempts for the message, once it has logged ``attempts``."""

        def enough() -> list[tuple[str, str]]:
            found = self.postfix.deliveries(message_id)
            return found if len(found) >= attempts else []

        return self.wait(enough, f"Postfix to log {attempts} delivery attempts of {message_id}")

    def serve_log(self) -> str:
        path = self.workdir / "serve.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(none)"

    def mail(self, to: str, event: str, service: str | None = None) -> list[Delivered]:
        """What the Internet received for ``to`` of this X-Mailbot-Event (and request
        for ``service``, named in the subject)."""
        return [
            d
            for d in self.internet.to(to)
            if d.header("X-Mailbot-Event") == event
            and (service is None or service in d.header("Subject"))
        ]


def change(service: str, new_tech: str, message_id: str | None = None) -> bytes:
    return message(ALICE, BOT, f"CHANGE {service}", f"tech: {new_tech}\n", message_id)


def message(
    sender: str, to: str, subject: str, body: str, message_id: str | None = None, **headers: str
) -> bytes:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = message_id or make_msgid(domain="client.example")
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body)
    return mail.as_bytes()


def reply(token_mail: Delivered, sender: str, body: str, *, cc: str | None = None) -> bytes:
    """A mail client's reply to ``token_mail``: to its Reply-To, quoting nothing."""
    extra = {"Cc": cc} if cc else {}
    return message(
        sender,
        token_mail.header("Reply-To"),
        f"Re: {token_mail.header('Subject')}",
        body,
        In_Reply_To=token_mail.header("Message-ID"),
        References=token_mail.header("Message-ID"),
        **extra,
    )


def reply_address(token_mail: Delivered) -> str:
    return re.sub(r"^.*<|>$", "", token_mail.header("Reply-To"))


@pytest.fixture(scope="module")
def internet() -> Iterator[Internet]:
    require_postfix()
    handler = Internet(unknown={GONE})
    controller = RelayController(handler)
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def smtp_route(internet: Internet) -> Iterator[Deployment]:
    """The recommended route: Postfix relays the bot's domain to ``mailbot serve``."""
    root = make_root("mailbot-postfix-")
    smtp_port, web_port = reserve_port(), reserve_port()
    config, state = root / "mailbot.toml", root / "state"
    deployment: Deployment | None = None
    try:
        state.mkdir()
        deployment = set_up(internet, root, config, state, listener=smtp_port, web=web_port)
        with serving(deployment):
            yield deployment
    finally:
        if deployment is not None:
            deployment.postfix.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def serving(deployment: Deployment) -> Iterator[None]:
    """``mailbot serve`` on the deployment's configuration and database, as its
    user, listening while the block runs; its output in serve.log."""
    with (deployment.workdir / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [str(deployment.command), "--config", str(deployment.config), "serve"],
            cwd=deployment.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_environment(),
            **deployment.as_user,
        )
    try:
        deployment.wait(
            lambda: (
                server.poll() is not None
                or (listening(deployment.listener) and listening(deployment.web))
            ),
            "mailbot serve to listen",
        )
        assert server.poll() is None, deployment.serve_log()
        yield
    finally:
        server.terminate()
        server.wait(120)


def set_up(
    internet: Internet,
    root: Path,
    config: Path,
    state: Path,
    *,
    listener: int = 0,
    web: int = 0,
    pipe: tuple[Path, dict[str, Any]] | None = None,
) -> Deployment:
    """Postfix from deploy/postfix and mailbot from deploy/mailbot.toml, its database
    made and filled: Postfix starts while mailbot works (both take seconds).
    ``pipe=(command, user)``: the pipe route, mailbot run as that user."""
    command, as_user = pipe or (MAILBOT, {})

    def configure(postfix_port: int) -> None:
        mailbot_config(
            config,
            state / "mailbot.db",
            smtp_port=listener or reserve_port(),
            web_port=web or reserve_port(),
            postfix_port=postfix_port,
        )
        if pipe:  # root:mailbot 0640, as the deploy doc says
            shutil.chown(config, "root", as_user["group"])
            config.chmod(0o640)

    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(
            start_postfix,
            root / "postfix",
            internet.port,
            listener,
            pipe=(command, config) if pipe else None,
        )
        try:
            configure(0)  # no mail is sent before Postfix's port is known
            for step in (["init"], ["import", str(_world(root))]):
                result = run(command, config, state, as_user, *step)
                assert result.returncode == 0, result.stderr
        except BaseException:
            with suppress(Exception):  # a Postfix that did start is stopped
                starting.result().stop()
            raise
        postfix = starting.result()
    configure(postfix.port)
    return Deployment(internet, postfix, config, state, listener, web, command, as_user)


def run(
    command: Path, config: Path, cwd: Path, as_user: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    """The installed mailbot command with this configuration."""
    return subprocess.run(
        [str(command), "--config", str(config), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=120,
        check=False,
        **as_user,
    )


def _world(workdir: Path) -> Path:
    path = workdir / "world.json"
    path.write_text(json.dumps(WORLD))
    return path


def open_request(
    route: Deployment, service: str, new_tech: str = CAROL, message_id: str | None = None
) -> Delivered:
    """Send a CHANGE through Postfix; the token mail the new contact gets."""
    route.send(change(service, new_tech, message_id), ALICE, BOT)
    [token_mail] = route.wait(
        lambda: route.mail(new_tech, "validation-requested", service),
        f"the token mail to {new_tech} for {service}",
    )
    return token_mail


def the_request(route: Deployment, service: str) -> dict[str, Any]:
    """The service's one request, as ``requests list --json`` shows it."""
    [request] = [r for r in route.json("requests", "list") if r["service"] == service]
    return request  # type: ignore[no-any-return]


def test_a_request_comes_in_through_postfix_and_its_token_mails_leave_through_it(
    smtp_route: Deployment,
) -> None:
    token_mail = open_request(smtp_route, "in.example")
    assert VERP.match(token_mail.sender), token_mail.sender
    assert token_mail.header("From").endswith(f"<{BOT}>")
    assert "mx.example.net" in token_mail.header("Received"), "not relayed by Postfix"
    [admin_mail] = smtp_route.wait(
        lambda: smtp_route.mail(ALICE, "validation-requested", "in.example"),
        "the admin's token mail",
    )
    assert VERP.match(admin_mail.sender)
    assert admin_mail.sender != token_mail.sender, "one VERP address per mail"
    request = the_request(smtp_route, "in.example")
    assert request["status"] == "pending"
    assert {v["email"]: v["delivery"] for v in request["validations"]} == {
        ALICE: "sent",
        CAROL: "sent",
    }


def healthz(route: Deployment) -> tuple[int, bytes]:
    """What ``mailbot serve`` answers on /healthz."""
    url = f"http://127.0.0.1:{route.web}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serve_behind_postfix_is_healthy(smtp_route: Deployment) -> None:
    assert healthz(smtp_route) == (200, b"ok\n")


def test_an_address_of_the_domain_that_is_not_the_bot_is_refused_by_postfix(
    smtp_route: Deployment,
) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp_route.send(
            message(ALICE, "sales@bot.example.net", "HELP", ""), ALICE, "sales@bot.example.net"
        )
    [(code, text)] = refused.value.recipients.values()
    assert code == 550
    assert b"User unknown in relay recipient table" in text


def test_the_deploy_docs_check_from_the_postfix_machine_is_answered(
    smtp_route: Deployment,
) -> None:
    """``printf 'Subject: HELP\\n\\nHELP\\n' | sendmail -f you@example.com changes@...``"""
    etc = str(smtp_route.postfix.etc)
    command = [tool("sendmail"), "-C", etc, "-f", "you@example.com", BOT]
    subprocess.run(command, input=b"Subject: HELP\n\nHELP\n", check=True, timeout=60)
    [answer] = smtp_route.wait(lambda: smtp_route.mail("you@example.com", "help"), "the answer")
    assert "CHANGE" in answer.text()
    assert VERP.match(answer.sender), answer.sender


def test_a_message_too_big_for_mailbot_is_refused_by_postfix_itself(
    smtp_route: Deployment,
) -> None:
    """Refused to its sender during the SMTP session, never accepted then bounced."""
    limit = tomllib.loads(smtp_route.config.read_text())["smtp"]["max_message_bytes"]
    raw = message(ALICE, BOT, "HELP", "x" * 76 + "\n") + b"x" * limit
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp_route.send(raw, ALICE, BOT)
    assert refused.value.smtp_code == 552
    assert b"size exceeds" in refused.value.smtp_error


def test_an_answer_to_the_reply_address_is_recorded(smtp_route: Deployment) -> None:
    token_mail = open_request(smtp_route, "reply.example")
    address = reply_address(token_mail)
    assert re.fullmatch(r"changes\+[0-9a-z]+@bot\.example\.net", address), address
    smtp_route.send(reply(token_mail, CAROL, "ACCEPT\n"), CAROL, address)
    smtp_route.wait(
        lambda: smtp_route.mail(CAROL, "validation-recorded", "reply.example"),
        "the confirmation of Carol's answer",
    )
    validations = the_request(smtp_route, "reply.example")["validations"]
    assert {v["email"]: v["status"] for v in validations} == {ALICE: "pending", CAROL: "accepted"}


def test_a_bounce_comes_back_through_postfix_to_the_verp_address(
    smtp_route: Deployment,
) -> None:
    smtp_route.send(change("bounce.example", GONE), ALICE, BOT)
    [told] = smtp_route.wait(
        lambda: smtp_route.mail(ALICE, "delivery-failed", "bounce.example"),
        "the requester to be told the token mail bounced",
    )
    assert GONE in told.text()
    log = smtp_route.postfix.maillog(lines=0)
    assert re.search(rf"to=<{re.escape(GONE)}>, .*status=bounced", log), log
    returned = (
        r"to=<changes\+bounce-[^>]+@bot\.example\.net>, "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{smtp_route.listener}, .*status=sent"
    )
    assert re.search(returned, log), log
    served = (smtp_route.workdir / "serve.log").read_text(errors="replace")
    assert re.search(r"received message \d+ from <> for changes\+bounce-", served), served
    validations = the_request(smtp_route, "bounce.example")["validations"]
    assert {v["email"]: v["delivery"] for v in validations} == {ALICE: "sent", GONE: "failed"}


def test_a_message_to_two_bot_addresses_is_acted_on_once_and_not_bounced(
    smtp_route: Deployment,
) -> None:
    token_mail = open_request(smtp_route, "two.example")
    address = reply_address(token_mail)
    answer = reply(token_mail, CAROL, "ACCEPT\n", cc=BOT)
    smtp_route.send(answer, CAROL, address, BOT)
    smtp_route.wait(
        lambda: smtp_route.mail(CAROL, "validation-recorded", "two.example"),
        "the confirmation of Carol's answer",
    )
    message_id = str(email.message_from_bytes(answer)["Message-ID"])
    delivered = smtp_route.logged(message_id, 2)
    assert sorted(delivered) == sorted([(BOT, "sent"), (address, "sent")]), (
        smtp_route.postfix.maillog(80)
    )
    stored = [
        m for m in smtp_route.json("inbound", "list") if m["message_id"] == message_id.strip("<>")
    ]
    assert [m["status"] for m in stored] == ["processed"]
    assert not [d for d in smtp_route.internet.to(CAROL) if d.sender == ""], "bounced"


def test_a_message_delivered_twice_has_one_effect(smtp_route: Deployment) -> None:
    message_id = "<twice.1@client.example>"
    raw = change("twice.example", CAROL, message_id=message_id)
    smtp_route.send(raw, ALICE, BOT)
    smtp_route.send(raw, ALICE, BOT)
    assert smtp_route.logged(message_id, 2) == [(BOT, "sent"), (BOT, "sent")]
    smtp_route.wait(
        lambda: smtp_route.mail(CAROL, "validation-requested", "twice.example"),
        "the token mail",
    )
    assert [r["service"] for r in smtp_route.json("requests", "list")].count("twice.example") == 1
    assert len(smtp_route.mail(CAROL, "validation-requested", "twice.example")) == 1


@pytest.fixture(scope="module")
def pipe_route(internet: Internet) -> Iterator[Deployment]:
    """The pipe route: a Postfix of its own runs ``mailbot process --store-only``
    for the bot's domain, as an unprivileged user, on a database of its own, and
    ``mailbot serve``, as that user on the same configuration and database, acts
    on what it stores and sends mailbot's mail. Laid out as deploy/README.md
    says: the configuration readable by the user's group only, the database in
    a directory of the user's."""
    root = make_root("mailbot-postfix-pipe-")
    state = root / "state"  # /var/lib/mailbot
    listener, web = reserve_port(), reserve_port()
    deployment: Deployment | None = None
    try:
        state.mkdir()
        shutil.chown(state, PIPE_USER)
        pipe = (command_for_pipe_user(MAILBOT, root), as_pipe_user())
        config = root / "mailbot.toml"
        deployment = set_up(internet, root, config, state, listener=listener, web=web, pipe=pipe)
        with serving(deployment):
            yield deployment
    finally:
        if deployment is not None:
            deployment.postfix.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pipe_token_mail(pipe_route: Deployment) -> Delivered:
    """Carol's token mail for a request opened through the pipe route."""
    return open_request(pipe_route, "pipe.example", message_id=PIPE_REQUEST)


def test_the_pipe_route_acts_on_mail_and_sends_through_postfix(
    pipe_route: Deployment, pipe_token_mail: Delivered
) -> None:
    assert VERP.match(pipe_token_mail.sender), pipe_token_mail.sender
    assert "mx.example.net" in pipe_token_mail.header("Received"), "not relayed by Postfix"
    assert pipe_route.logged(PIPE_REQUEST, 1) == [(BOT, "sent")]
    log = pipe_route.postfix.maillog(lines=0)
    assert re.search(rf"to=<{re.escape(BOT)}>, relay=mailbot, .*status=sent", log), log


def test_the_pipe_route_takes_a_message_to_two_bot_addresses_once(
    pipe_route: Deployment, pipe_token_mail: Delivered
) -> None:
    address = reply_address(pipe_token_mail)
    answer = reply(pipe_token_mail, CAROL, "ACCEPT\n", cc=BOT)
    message_id = str(email.message_from_bytes(answer)["Message-ID"])
    pipe_route.send(answer, CAROL, address, BOT)
    delivered = pipe_route.logged(message_id, 2)
    assert sorted(delivered) == sorted([(BOT, "sent"), (address, "sent")])
    pipe_route.wait(
        lambda: pipe_route.mail(CAROL, "validation-recorded", "pipe.example"),
        "the confirmation of Carol's answer",
    )
    stored = pipe_route.wait(
        lambda: [
            m
            for m in pipe_route.json("inbound", "list")
            if m["message_id"] == message_id.strip("<>") and m["status"] != "received"
        ],
        "serve to act on the answer",
    )
    assert [m["status"] for m in stored] == ["processed"]
    # serve acted on it once and queued its mail in the same commit: all of it is sent
    pipe_route.wait(
        lambda: all(m["status"] == "sent" for m in pipe_route.json("outbox", "list")),
        "serve to send what it queued",
    )
    pipe_route.wait(lambda: "Mail queue is empty" in pipe_route.postfix.queue(), "an empty queue")
    events = [
        d.header("X-Mailbot-Event")
        for d in pipe_route.internet.to(CAROL)
        if "pipe.example" in d.header("Subject")
    ]
    assert sorted(events) == ["validation-recorded", "validation-requested"]
    validations = the_request(pipe_route, "pipe.example")["validations"]
    assert {v["email"]: v["status"] for v in validations} == {ALICE: "pending", CAROL: "accepted"}


@contextmanager
def mode(path: Path, changed: int) -> Iterator[None]:
    """``path`` with other permissions while the block runs."""
    before = path.stat().st_mode & 0o7777
    path.chmod(changed)
    try:
        yield
    finally:
        path.chmod(before)


def deferred_then_delivered(
    route: Deployment,
    service: str,
    outage: AbstractContextManager[None],
    reason: str,
    serve_during: tuple[int, bytes],
) -> None:
    """A CHANGE for ``service`` sent during ``outage`` stays in Postfix's queue (the
    pipe exits 75, saying ``reason``), and is acted on once the outage is over, by
    the ``serve`` that ran through it (its /healthz answering ``serve_during``
    meanwhile), healthy again without a restart."""
    message_id = f"<{service}@client.example>"
    with outage:
        route.send(change(service, CAROL, message_id), ALICE, BOT)
        first = route.logged(message_id, 1)[0]
        assert first == (BOT, "deferred"), route.postfix.maillog()
        queued = route.postfix.queue()
        assert ALICE in queued, queued
        assert BOT in queued, queued
        assert "Traceback" not in queued, queued
        why = route.postfix.attempts(message_id)[0][2]  # the pipe's exit 75, and its line
        assert f"temporary failure. Command output: mailbot: error: {reason}" in why, why
        assert healthz(route) == serve_during
    route.postfix.flush()
    route.wait(
        lambda: route.mail(CAROL, "validation-requested", service),
        "the message to be delivered once the outage is over",
    )
    route.wait(
        lambda: route.postfix.deliveries(message_id)[-1] == (BOT, "sent"),
        "Postfix to log the delivery",
    )
    assert "bounced" not in {status for _, status in route.postfix.deliveries(message_id)}
    dsns = [d for d in route.internet.to(ALICE) if d.sender == "" and message_id.encode() in d.raw]
    assert not dsns, "bounced"
    assert healthz(route) == (200, b"ok\n"), route.serve_log()


def test_the_pipe_route_defers_mail_while_the_database_is_unavailable(
    pipe_route: Deployment,
) -> None:
    deferred_then_delivered(
        pipe_route,
        "later.example",
        mode(pipe_route.workdir, 0),
        "database unavailable",
        serve_during=(503, b"unavailable\n"),
    )


def test_the_pipe_route_defers_mail_while_the_configuration_cannot_be_read(
    pipe_route: Deployment,
) -> None:
    deferred_then_delivered(
        pipe_route,
        "unread.example",
        mode(pipe_route.config, 0o600),
        "cannot read config file",
        serve_during=(200, b"ok\n"),  # it read the file when it started
    )
