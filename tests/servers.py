"""Real servers for tests: mailbot's own runtime in a background thread, and an
aiosmtpd smarthost that records (or refuses) what it is sent."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client.parser import text_string_to_metric_families

from mailbot.runtime import Runtime
from mailbot.service import Mailbot

START_TIMEOUT = 120.0
"""How long a server may take to start or stop on a loaded machine: a bound on a
wait, never on how fast something must be."""


@contextmanager
def running(bot: Mailbot) -> Iterator[Runtime]:
    """``mailbot serve`` for ``bot``, in a thread with its own loop; stopped on exit."""
    loop = asyncio.new_event_loop()
    runtime_box: list[Runtime] = []
    started = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def go() -> None:
            runtime = Runtime(bot.settings, bot)
            runtime_box.append(runtime)
            task = asyncio.create_task(runtime.run())
            while not runtime.ready.is_set() and not task.done():
                await asyncio.sleep(0.01)
            started.set()
            await task

        try:
            loop.run_until_complete(go())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="mailbot-serve", daemon=True)
    thread.start()
    if not started.wait(START_TIMEOUT):
        raise AssertionError(f"serve did not start in {START_TIMEOUT:.0f} s")
    if failure:
        raise failure[0]
    try:
        yield runtime_box[0]
    finally:
        loop.call_soon_threadsafe(runtime_box[0].stopping.set)
        thread.join(START_TIMEOUT)
        assert not thread.is_alive(), "serve did not stop"
        if failure:
            raise failure[0]


def wait_for(condition: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


def maildir_count(root: Path) -> int:
    new = root / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


@dataclass
class Smarthost:
    """An aiosmtpd server standing in for the relay: refuses the first ``refusals``
    messages with ``refusal``, then accepts and keeps them."""

    refusals: int = 0
    refusal: str = "451 4.3.0 Try again later"
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    sessions: int = 0
    port: int = 0
    """Where it listens, once started by ``smarthost`` or ``relay``."""

    async def handle_EHLO(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.sessions += 1
        return responses

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.refusals > 0:
            self.refusals -= 1
            return self.refusal
        self.received.append(
            (envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 2.0.0 OK"


class RelayController(Controller):
    """aiosmtpd's threaded server on a port the kernel picks (port 0): ``port``
    is the one it got once started. Patient with a busy machine."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(
            handler, hostname="127.0.0.1", port=0, ready_timeout=START_TIMEOUT, **kwargs
        )

    async def _create_server(self) -> asyncio.AbstractServer:  # aiosmtpd's hook
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
        )
        self.port = int(server.sockets[0].getsockname()[1])
        return server


@contextmanager
def smarthost(**kwargs: Any) -> Iterator[Smarthost]:
    """A Smarthost (``Smarthost(**kwargs)``) listening on its own port, ``.port``."""
    handler = Smarthost(**kwargs)
    with relay(handler):
        yield handler


@contextmanager
def relay(handler: Smarthost, **smtp_options: Any) -> Iterator[Smarthost]:
    """``handler`` served by a RelayController while the block runs; its port is
    set on ``handler.port``."""
    controller = RelayController(handler, **smtp_options)
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


def alive(pid: int) -> bool:
    """Whether a process runs; a zombie (nobody reaps daemons in a container) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def received_backlog(web_port: int) -> int | None:
    """How many stored messages ``mailbot serve`` (its link pages on ``web_port``)
    has not acted on yet, from its /metrics; None while it cannot say. A cheap
    poll for a wait: a scrape, where ``mailbot inbound list`` starts a process."""
    url = f"http://127.0.0.1:{web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mailbot_database_up" and sample.value != 1:
                return None
            if sample.name == "mailbot_inbound_messages" and sample.labels == {
                "status": "received"
            }:
                return int(sample.value)
    return None
