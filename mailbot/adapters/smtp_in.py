"""The inbound SMTP listener (aiosmtpd): check, store durably, answer, then process.

The handler answers ``250`` to DATA only once the raw bytes are committed;
anything that stops the commit becomes ``451 4.3.0`` so the sending MTA
retries (aiosmtpd would otherwise turn an exception into a permanent ``500``
that leaks its text). Messages arriving together share one commit, and MIME
parsing happens after the answer, off the SMTP path.

Every limit a legitimate client could hit answers 4xx, so that it retries:
too many connections (421, or the oldest idle session is closed to make
room), too many recipients (452, the rest go in another transaction), a
session past its lifetime (421). A message is never refused for its
formatting: a line may be as long as the whole message may be (aiosmtpd's
default of 1,000 octets would answer ``500 Line too long`` to mail that real
MTAs relay every day, webmail bounces among them); the only bound is
``[smtp] max_message_bytes``, answered ``552``. aiosmtpd closes a session silent for
``[smtp] timeout_seconds``; its timer restarts at each command only, so the
whole message after DATA must also arrive within it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbot import logs, metrics
from mailbot.adapters.connections import ConnectionLimiter
from mailbot.config import SmtpSettings
from mailbot.errors import StorageUnavailable
from mailbot.intake import RawMail, envelope_problem
from mailbot.mailparse import redact
from mailbot.service import Mailbot

log = logging.getLogger(__name__)

OK = "250 2.0.0 OK: queued"
RCPT_OK = "250 2.1.5 OK"
NOT_OURS = "550 5.1.1 Recipient address rejected: not a mailbot address"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
SESSION_TOO_LONG = "421 4.4.2 Session too long, closing connection"
TOO_BIG = "552 5.3.4 Message too big"
_LINE_TOO_LONG = "500 Line too long"
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_ADDRESS = re.compile(f"<({_DOT_ATOM}@{_DOT_ATOM})>(?: ([^ \t\r\n(][^\r\n]*))?")
"""``<local@domain>``, both parts dot-atoms (RFC 5322 3.2.3), then nothing or
one space and the parameters: no quoting, comments, source route, non-ASCII
or folding, which aiosmtpd's own parse handles."""
STORE_TIMEOUT_SECONDS = 30.0
BATCH_LIMIT = 64


@dataclass
class _Pending:
    message: RawMail
    stored: asyncio.Future[int] = field(repr=False)


class GroupCommitWriter:
    """Stores raw messages in batches: one commit (one fsync) for all that arrived together."""

    def __init__(self, bot: Mailbot, run_blocking: Callable[..., Any]) -> None:
        self.bot = bot
        self.run_blocking = run_blocking
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="inbound-writer")

    async def stop(self) -> None:
        if self.task is not None:
            await self.queue.join()
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def store(self, message: RawMail) -> int:
        """The stored message's id, once its commit is durable."""
        pending = _Pending(message, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await asyncio.wait_for(asyncio.shield(pending.stored), STORE_TIMEOUT_SECONDS)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < BATCH_LIMIT:
                batch.append(self.queue.get_nowait())
            try:
                await self._store(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _store(self, batch: list[_Pending]) -> None:
        """One commit for the batch. Should the database refuse it for something
        other than an outage, each message is tried alone: one message it
        cannot take must not cost the clients of the others a 451 (and again
        at each of their retries, when it keeps arriving beside them)."""
        try:
            stored = await self.run_blocking(
                self.bot.store_inbound_many, [p.message for p in batch]
            )
        except StorageUnavailable as exc:  # each waiting client gets its 451
            _failed(batch, exc)
        except Exception as exc:
            if len(batch) == 1:
                _failed(batch, exc)
                return
            for pending in batch:
                await self._store([pending])
        else:
            for pending, result in zip(batch, stored, strict=True):
                if not pending.stored.done():
                    pending.stored.set_result(result.id)


def _storable(address: str) -> bool:
    return envelope_problem(address) is None


def _failed(batch: list[_Pending], exc: Exception) -> None:
    log.warning("could not store %d message(s): %s", len(batch), logs.first_line(exc))
    for pending in batch:
        if not pending.stored.done():
            pending.stored.set_exception(exc)


class Activity:
    """When a client last spoke in a mail transaction, and how many messages
    wait for their commit: what acting in the listener's own process keeps out
    of the way of. Messages are stored in batches, so in a burst every client
    can be silent at once, waiting for its 250 while the batch commits; those
    waits are the burst, not a pause in it."""

    def __init__(self) -> None:
        self.last = 0.0
        self.storing = 0

    def seen(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def quiet_for(self, now: float) -> float:
        """Seconds since the listener last had mail to take in; 0 while it has."""
        return 0.0 if self.storing else now - self.last


class InboundHandler:
    """aiosmtpd hooks: refuse early at RCPT, store at DATA, hand over for processing."""

    def __init__(
        self,
        writer: GroupCommitWriter,
        domains: Iterable[str],
        on_stored: Callable[[int], None],
        max_recipients: int = 100,
        activity: Activity | None = None,
    ) -> None:
        self.writer = writer
        self.domains = frozenset(d.lower() for d in domains)
        self.on_stored = on_stored
        self.max_recipients = max_recipients
        self.activity = activity or Activity()

    async def handle_RCPT(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self.activity.seen()
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return TOO_MANY_RECIPIENTS
        domain = address.rpartition("@")[2].lower()
        if domain not in self.domains:
            return NOT_OURS
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        message = RawMail(
            raw=raw,
            source="smtp",
            recipients=tuple(envelope.rcpt_tos),
            envelope_from=envelope.mail_from,
        )
        self.activity.storing += 1
        try:
            inbound_id = await self.writer.store(message)
        except Exception as exc:  # the client must see 451, never a traceback
            log.warning("451 to %s: %s", session.peer, type(exc).__name__)
            return TRY_LATER
        finally:
            self.activity.storing -= 1
            self.activity.seen()
        log.info(
            "received message %d from <%s> for %s (%d bytes)",
            inbound_id,
            (envelope.mail_from or "").strip("<>"),  # a bounce's null sender is "<>"
            redact.addresses(",".join(envelope.rcpt_tos), self.writer.bot.settings.bot.local_part),
            len(raw),
            extra={"inbound_id": inbound_id, "outcome": "stored"},
        )
        self.on_stored(inbound_id)
        return OK


class LimitedSMTP(SMTP):
    """An aiosmtpd session counted by its listener's ConnectionLimiter, with a lifetime."""

    def __init__(
        self, handler: InboundHandler, limiter: ConnectionLimiter, lifetime: float, **kwargs: Any
    ) -> None:
        # A line may be as long as a message may be (the reader is made with this limit).
        self.line_length_limit = kwargs.get("data_size_limit") or SMTP.line_length_limit
        super().__init__(handler, **kwargs)
        self.limiter = limiter
        self.lifetime = lifetime
        self.admitted = False
        self.receiving = False
        self.messages = 0
        self.last_reply = self.loop.time()
        self.end_of_life: asyncio.TimerHandle | None = None
        self.expired = False

    # The session as ConnectionLimiter sees it (connections.Tracked).
    @property
    def peer_address(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else "?"

    def waiting_since(self) -> float | None:
        """Since its last reply, unless a message is arriving or being stored."""
        return None if self.receiving else self.last_reply

    def has_served(self) -> bool:
        return self.messages > 0

    def evict(self) -> None:
        self._close_with(TOO_MANY_CONNECTIONS)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.end_of_life is None:  # not again after STARTTLS
            self.admitted = self.limiter.admit(self)
            self.end_of_life = self.loop.call_later(self.lifetime, self._end_of_life)

    def connection_lost(self, error: Exception | None) -> None:
        self.limiter.release(self)
        if self.end_of_life is not None:
            self.end_of_life.cancel()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        # aiosmtpd's session loop, which greets first: a refused client gets
        # 421 instead of the greeting (RFC 5321 3.1) and is disconnected.
        if not self.admitted:
            with contextlib.suppress(ConnectionError):
                await self.push(TOO_MANY_CONNECTIONS)
            self._close_with(None)
            return
        await super()._handle_client()

    async def push(self, status: AnyStr) -> None:
        if self.receiving and _text(status).startswith(_LINE_TOO_LONG):
            status = TOO_BIG  # type: ignore[assignment]  # such a line is over the size limit
        await super().push(status)
        self.last_reply = self.loop.time()
        metrics.smtp_reply(_text(status))

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        self.receiving = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.receiving = False
            self.last_reply = self.loop.time()
            if self.expired:
                self._close_with(SESSION_TOO_LONG)
        if envelope is not None and envelope.original_content is not None:
            self.messages += 1

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL FROM or RCPT TO, and the parameters after it.

        Nearly every address is a plain ``<local@domain>`` of dot-atoms, for
        which aiosmtpd's full RFC 5322 parse (a quarter of the listener's CPU)
        gives back the text between the brackets: such an address is read here,
        anything else by aiosmtpd as before.

        aiosmtpd lets through an address longer than any path may be and one
        with a control character: both are refused here like any malformed
        address (553), rather than met by a database that cannot store them.
        """
        plain = _PLAIN_ADDRESS.fullmatch(arg)
        if plain is None:
            address, rest = super()._getaddr(arg)
            return (address, rest) if not address or _storable(address) else (None, None)
        address, parameters = plain.group(1), plain.group(2) or ""
        if self.local_part_limit and address.index("@") > self.local_part_limit:
            return None, None
        return (address, parameters) if _storable(address) else (None, None)

    def _end_of_life(self) -> None:
        """Close now, or once the message arriving has its answer (its 250 is not lost)."""
        self.expired = True
        if not self.receiving:
            self._close_with(SESSION_TOO_LONG)

    def _close_with(self, reply: str | None) -> None:
        """Close at once, telling the client why when there is something to tell."""
        if self.transport is None or self.transport.is_closing():
            return
        if reply is not None:
            self.transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
            metrics.smtp_reply(reply)
        self.transport.close()


def _text(status: str | bytes) -> str:
    return status if isinstance(status, str) else status.decode("ascii", "replace")


def smtp_factory(
    handler: InboundHandler, hostname: str, settings: SmtpSettings, max_connections: int
) -> Callable[[], SMTP]:
    """A protocol factory for ``loop.create_server``: one SMTP session per connection."""
    limiter = ConnectionLimiter("smtp", max_connections, settings.max_connections_per_client)

    def build() -> SMTP:
        return LimitedSMTP(
            handler,
            limiter,
            settings.max_session_seconds,
            hostname=hostname,
            data_size_limit=settings.max_message_bytes,
            enable_SMTPUTF8=True,
            ident="mailbot ESMTP",
            timeout=settings.timeout_seconds,
        )

    return build
