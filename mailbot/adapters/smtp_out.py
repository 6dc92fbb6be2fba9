"""Outgoing mail through a smarthost over SMTP (plain, STARTTLS or implicit TLS).

SMTP reply classes map onto the outbox's two failure kinds: 4xx and network
trouble may go through later; 5xx will not, and neither will an address
smtplib cannot put on the wire (a non-ASCII address goes with SMTPUTF8 when
the relay offers it, and fails for good, alone, when it does not).
"""

from __future__ import annotations

import smtplib
import ssl

from mailbot.config import OutgoingSettings
from mailbot.outgoing.outbox import PermanentFailure, TemporaryFailure

TIMEOUT_SECONDS = 30.0


class SmtpTransport:
    """One SMTP session per outbox flush: connected on the first mail, reused for
    the next ones, dropped after any failure so the next mail starts afresh."""

    def __init__(self, settings: OutgoingSettings) -> None:
        self.settings = settings
        self._client: smtplib.SMTP | None = None

    def send(self, envelope_from: str, recipient: str, payload: bytes) -> None:
        try:
            self._deliver(envelope_from, recipient, payload)
        except smtplib.SMTPRecipientsRefused as exc:
            code, message = next(iter(exc.recipients.values()))
            raise _failure(code, message) from None
        except smtplib.SMTPResponseException as exc:
            raise _failure(exc.smtp_code, exc.smtp_error) from None
        except (UnicodeError, ValueError) as exc:  # an address or bytes smtplib cannot send
            raise PermanentFailure(f"cannot send: {type(exc).__name__}: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()

    def _deliver(self, envelope_from: str, recipient: str, payload: bytes) -> None:
        try:
            if self._client is None:
                self._client = self._connect()
            options = _options(self._client, envelope_from, recipient)
            self._client.sendmail(envelope_from, [recipient], payload, mail_options=options)
        except PermanentFailure:
            raise  # nothing was sent: the session is still good
        except BaseException:
            self.close()  # whatever went wrong, the next mail starts a new session
            raise

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if settings.ssl:
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=TIMEOUT_SECONDS, context=context
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=TIMEOUT_SECONDS)
        try:
            client.ehlo_or_helo_if_needed()
            if settings.starttls and not settings.ssl:
                client.starttls(context=context)
                client.ehlo()
            if settings.username:
                client.login(settings.username, settings.password or "")
        except BaseException:
            client.close()
            raise
        return client


def _options(client: smtplib.SMTP, envelope_from: str, recipient: str) -> list[str]:
    """SMTPUTF8 for a non-ASCII address, when the relay offers it (RFC 6531);
    without it such an address can never be sent through this relay."""
    if envelope_from.isascii() and recipient.isascii():
        return []
    if client.has_extn("smtputf8"):
        return ["SMTPUTF8"]
    raise PermanentFailure(
        f"cannot send to {recipient!r}: non-ASCII address and the relay does not offer SMTPUTF8"
    )


def _failure(code: int, message: bytes | str) -> TemporaryFailure | PermanentFailure:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    detail = f"{code} {text}"
    return PermanentFailure(detail) if 500 <= code < 600 else TemporaryFailure(detail)
