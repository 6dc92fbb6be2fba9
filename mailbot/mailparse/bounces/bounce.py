"""What a bounce says (``Bounce``), and the limits and address pattern that both
ways of reading one (RFC 3464 reports and free-text bounces) share."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DIAGNOSTIC_CHARS = 20_000
MAX_RECIPIENTS = 50

ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)


@dataclass(frozen=True)
class Bounce:
    recipients: tuple[str, ...]
    """Addresses that failed (or, for a delay warning, that are delayed), lower-cased."""
    permanent: bool
    """The mail will not be delivered: ``Action: failed``, a 5.x.x status, or a failure text."""
    delayed: bool = False
    """Only a delay warning: the reporting server is still trying."""
    status: tuple[str, ...] = ()
    """Enhanced status codes found (``5.1.1``...), in order."""
    diagnostic: str = ""
    """The server's reason, shortened (Diagnostic-Code or the report's text)."""
    standard: bool = False
    """An RFC 3464 report (as opposed to a free-text bounce)."""
    original_message_id: str | None = None
    """Message-ID of the mail that bounced (from the returned message or its headers)."""
    original_envelope_from: str | None = None
    """The envelope sender the bounce went back to (a VERP address, for mailbot's mail)."""
    original_sender: str | None = None
    """From address of the returned message."""
    original_subject: str = ""
    original_envelope_id: str | None = None
    """RFC 3461 ENVID echoed by the report (``Original-Envelope-Id``)."""
    reporting_mta: str = ""


def short(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]
