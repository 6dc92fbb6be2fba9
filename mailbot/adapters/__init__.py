"""Protocol adapters: they translate SMTP, IMAP, HTTP and Maildir to calls into the service."""

from __future__ import annotations

from mailbot.adapters.maildir_out import MaildirTransport
from mailbot.adapters.smtp_out import SmtpTransport
from mailbot.config import Settings
from mailbot.outgoing.outbox import Transport


def outgoing_transport(settings: Settings) -> Transport:
    """The transport ``[outgoing] transport`` names."""
    if settings.outgoing.transport == "smtp":
        return SmtpTransport(settings.outgoing)
    return MaildirTransport(settings.outgoing.maildir)
