"""Received mail as the service handles it once parsed: who speaks in it, and
whether it may be acted on at all (the raw message is ``intake.RawMail``).

Values and functions of a message and the settings: no queries, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailbot import commands, mailparse
from mailbot.config import Settings
from mailbot.mailparse.authentication import FAIL, NONE, PASS, Verdict
from mailbot.mailparse.authentication import verdict as sender_verdict
from mailbot.outgoing.compose import bounced_message_id
from mailbot.storage.tables import InboundRow


@dataclass(frozen=True)
class StoredMail:
    id: int
    duplicate: bool
    status: str


UNVERIFIED = Verdict(NONE, "")


@dataclass(frozen=True)
class ReceivedMail:
    """A received message being processed: who speaks in it, and what they say.

    Usually the sender speaks. In mail from the agency mailbox or a trusted
    forwarder whose own note holds no command, the forwarded message speaks:
    its sender is the actor and its new text the command, and ``via`` keeps
    the forwarder's address for the event log. A forward that hides its
    sender's address (Outlook inside one organisation writes only the name)
    speaks with the forwarder as actor: its token still works, since a token
    is a credential on its own, but a bare reply is not the forwarder's to make.
    """

    id: int
    parsed: mailparse.ParsedMail
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


def speaker(row: InboundRow, parsed: mailparse.ParsedMail, settings: Settings) -> ReceivedMail:
    """Who speaks in a received message, and what they say (see ReceivedMail)."""
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
    own = ReceivedMail(
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
    if not trusted or forwarded is None:
        return own
    if commands.has_command(parsed.forwarder_note):  # the forwarder speaks for itself
        return own
    return ReceivedMail(
        row.id,
        parsed,
        forwarded.sender or parsed.sender,
        forwarded.sender_name,
        forwarded.subject,
        forwarded.new_text,
        forwarded.tokens_in_new_text,
        forwarded.tokens_in_quote,
        forwarded.references,
        recipients,
        via=parsed.sender,
        authentication=verdict,
    )


def ignore_reason(parsed: mailparse.ParsedMail, row: InboundRow, settings: Settings) -> str | None:
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


def _header(parsed: mailparse.ParsedMail, name: str) -> str:
    wanted = name.lower()
    return next((v for k, v in parsed.headers.items() if k.lower() == wanted), "")
