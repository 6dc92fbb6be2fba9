"""Received mail as the service handles it: the raw message and its dedup key,
and, once parsed, who speaks in it and whether it may be acted on at all.

Values and functions of a message and the settings: no queries, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from mailbot import commands, mailparse
from mailbot.authentication import FAIL, NONE, PASS, Verdict
from mailbot.authentication import verdict as sender_verdict
from mailbot.compose import bounced_message_id
from mailbot.config import Settings
from mailbot.models import InboundMessage


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool
    status: str


@dataclass(frozen=True)
class RawMessage:
    """A message as received, before anything is read from it but its Message-ID."""

    raw: bytes
    source: str = "cli"
    recipients: tuple[str, ...] = ()
    envelope_from: str | None = None

    @cached_property
    def message_id(self) -> str | None:
        return mailparse.message_id_of(self.raw)

    @cached_property
    def dedup_key(self) -> str:
        """The Message-ID, or a digest of the bytes for the rare message without one."""
        if self.message_id:
            return f"mid:{self.message_id}"
        return f"sha256:{hashlib.sha256(self.raw).hexdigest()}"

    def row(self, now: datetime) -> InboundMessage:
        return InboundMessage(
            dedup_key=self.dedup_key,
            message_id=self.message_id,
            source=self.source,
            envelope_from=self.envelope_from,
            recipients=",".join(r.lower() for r in self.recipients),
            raw=self.raw,
            received_at=now,
        )


UNVERIFIED = Verdict(NONE, "")


@dataclass(frozen=True)
class Inbound:
    """A received message being processed: who speaks in it, and what they say.

    Usually the sender speaks. In mail from the agency mailbox or a trusted
    forwarder whose own note holds no command, the forwarded message speaks:
    its sender is the actor and its new text the command, and ``via`` keeps
    the forwarder's address for the event log.
    """

    id: int
    parsed: mailparse.ParsedMessage
    sender: str
    sender_name: str
    subject: str
    new_text: str
    tokens: tuple[str, ...]
    quoted_tokens: tuple[str, ...]
    references: tuple[str, ...]
    recipients: tuple[str, ...]
    via: str | None = None
    authentication: Verdict = UNVERIFIED
    """What the trusted ``Authentication-Results`` say of the mail's own sender (for
    a forward, of the forwarder, who speaks for the forwarded sender)."""

    @property
    def message_id(self) -> str | None:
        return self.parsed.message_id

    @property
    def authenticated(self) -> bool:
        """DMARC (or an aligned DKIM or SPF pass) vouches for the sender."""
        return self.authentication.level == PASS

    @property
    def forged(self) -> bool:
        """DMARC fails: the sender is not believed (only a token it carries is)."""
        return self.authentication.level == FAIL


def speaker(row: InboundMessage, parsed: mailparse.ParsedMessage, settings: Settings) -> Inbound:
    """Who speaks in a received message, and what they say (see Inbound)."""
    assert row.id is not None
    assert parsed.sender is not None
    recipients = (
        tuple(filter(None, row.recipients.split(",")))
        + parsed.recipients
        + parsed.envelope_recipients
    )
    verdict = sender_verdict(
        parsed.authentication_results,
        settings.smtp.authserv_id,
        parsed.sender.rpartition("@")[2],
    )
    own = Inbound(
        row.id,
        parsed,
        parsed.sender,
        parsed.sender_name,
        parsed.subject,
        parsed.new_text,
        parsed.tokens_in_new_text,
        parsed.tokens_in_quote,
        parsed.references,
        recipients,
        authentication=verdict,
    )
    forwarded = parsed.forwarded
    trusted = row.source == "imap" or parsed.sender in settings.policy.trusted_forwarders
    if not trusted or forwarded is None or forwarded.sender is None:
        return own
    if commands.has_command(parsed.forwarder_note):  # the forwarder speaks for itself
        return own
    return Inbound(
        row.id,
        parsed,
        forwarded.sender,
        forwarded.sender_name,
        forwarded.subject,
        forwarded.new_text,
        forwarded.tokens_in_new_text,
        (),
        (),
        recipients,
        via=parsed.sender,
        authentication=verdict,
    )


def ignore_reason(
    parsed: mailparse.ParsedMessage, row: InboundMessage, settings: Settings
) -> str | None:
    """Why a message must not be acted on or answered, or None when it may."""
    if row.envelope_from is not None and row.envelope_from.strip("<> ") == "":
        return "null envelope sender (a bounce)"
    if parsed.sender is None:
        return "no usable sender"
    if settings.bot.address in _header(parsed, "X-Loop").lower():
        return "our own mail come back (X-Loop)"
    if parsed.autoreply:
        return "auto-reply"
    if parsed.automatic:
        return "automatic message (list, bulk or report)"
    local, _, domain = parsed.sender.partition("@")
    bot = settings.bot
    if domain == bot.domain and local.split("+")[0] == bot.local_part:
        return "sent by mailbot itself"
    if _robot_address(parsed.sender) or _robot_address(row.envelope_from or ""):
        return "sent by a robot address (no-reply, mailer-daemon, postmaster)"
    addressed = (*row.recipients.split(","), *parsed.envelope_recipients, *parsed.recipients)
    if any(bounced_message_id(a, bot.local_part, bot.domain) for a in addressed if a):
        return "sent to the bounce address, and not a bounce"
    return None


_ROBOT_LOCAL = re.compile(
    r"^(?:mailer[-_.]?daemon|postmaster|(?:do[-_.]?)?no[-_.]?reply|do[-_.]?not[-_.]?reply"
    r"|auto[-_.]?(?:reply|responder))(?:[-_.+].*)?$",
    re.IGNORECASE,
)


def _robot_address(address: str) -> bool:
    """Addresses robots send from: answering them reaches no one, or loops.

    Only what such addresses are called everywhere: a person's own address
    never looks like ``noreply`` or ``mailer-daemon``.
    """
    return _ROBOT_LOCAL.match(address.strip("<> ").partition("@")[0]) is not None


def _header(parsed: mailparse.ParsedMessage, name: str) -> str:
    wanted = name.lower()
    return next((v for k, v in parsed.headers.items() if k.lower() == wanted), "")
