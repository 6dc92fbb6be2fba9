"""The inbound SMTP listener (aiosmtpd): check, store durably, answer, then process.

The handler answers ``250`` to DATA only once the raw bytes are committed;
anything that stops the commit becomes ``451 4.3.0`` so the sending MTA
retries (aiosmtpd would otherwise turn an exception into a permanent ``500``
that leaks its text). Messages arriving together share one commit, and MIME
parsing happens after the answer, off the SMTP path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbot import redact
from mailbot.inbound import RawMessage
from mailbot.service import Mailbot

log = logging.getLogger(__name__)

OK = "250 2.0.0 OK: queued"
RCPT_OK = "250 2.1.5 OK"
NOT_OURS = "550 5.1.1 Recipient address rejected: not a mailbot address"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"
STORE_TIMEOUT_SECONDS = 30.0
BATCH_LIMIT = 64


@dataclass
class _Pending:
    message: RawMessage
    stored: asyncio.Future[int] = field(repr=False)


class GroupCommitWriter:
    """Stores raw messages in batches: one commit (one fsync) for all that arrived together."""

    def __init__(self, bot: Mailbot, run_blocking: Callable[..., Any]) -> None:
        self.bot = bot
        self.run_blocking = run_blocking
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        """Set while nothing waits to be stored: a good moment for slower work."""
        self.idle.set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="inbound-writer")

    async def stop(self) -> None:
        if self.task is not None:
            await self.queue.join()
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def store(self, message: RawMessage) -> int:
        """The stored message's id, once its commit is durable."""
        pending = _Pending(message, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await asyncio.wait_for(asyncio.shield(pending.stored), STORE_TIMEOUT_SECONDS)

    async def _run(self) -> None:
        while True:
            if self.queue.empty():
                self.idle.set()
            batch = [await self.queue.get()]
            self.idle.clear()
            while not self.queue.empty() and len(batch) < BATCH_LIMIT:
                batch.append(self.queue.get_nowait())
            try:
                stored = await self.run_blocking(
                    self.bot.store_inbound_many, [p.message for p in batch]
                )
                for pending, result in zip(batch, stored, strict=True):
                    if not pending.stored.done():
                        pending.stored.set_result(result.id)
            except Exception as exc:  # each waiting client gets its 451
                log.warning("could not store %d message(s): %s", len(batch), exc)
                for pending in batch:
                    if not pending.stored.done():
                        pending.stored.set_exception(exc)
            finally:
                for _ in batch:
                    self.queue.task_done()


class InboundHandler:
    """aiosmtpd hooks: refuse early at RCPT, store at DATA, hand over for processing."""

    def __init__(
        self,
        writer: GroupCommitWriter,
        domains: Iterable[str],
        on_stored: Callable[[int], None],
    ) -> None:
        self.writer = writer
        self.domains = frozenset(d.lower() for d in domains)
        self.on_stored = on_stored

    async def handle_RCPT(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain not in self.domains:
            return NOT_OURS
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        message = RawMessage(
            raw=raw,
            source="smtp",
            recipients=tuple(envelope.rcpt_tos),
            envelope_from=envelope.mail_from,
        )
        try:
            inbound_id = await self.writer.store(message)
        except Exception as exc:  # the client must see 451, never a traceback
            log.warning("451 to %s: %s", session.peer, type(exc).__name__)
            return TRY_LATER
        log.info(
            "received message %d from <%s> for %s (%d bytes)",
            inbound_id,
            envelope.mail_from or "",
            redact.addresses(",".join(envelope.rcpt_tos), self.writer.bot.settings.bot.local_part),
            len(raw),
        )
        self.on_stored(inbound_id)
        return OK


def smtp_factory(handler: InboundHandler, hostname: str, max_bytes: int) -> Callable[[], SMTP]:
    """A protocol factory for ``loop.create_server``: one SMTP session per connection."""

    def build() -> SMTP:
        return SMTP(
            handler,
            hostname=hostname,
            data_size_limit=max_bytes,
            enable_SMTPUTF8=True,
            ident="mailbot ESMTP",
        )

    return build
