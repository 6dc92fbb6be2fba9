"""Outgoing mail through a smarthost over SMTP (plain, STARTTLS or implicit TLS).

SMTP reply classes map onto the outbox's two failure kinds: 4xx and network
trouble may go through later; 5xx will not, and neither will an address
smtplib cannot put on the wire (a non-ASCII address goes with SMTPUTF8 when
the relay offers it, and fails for good, alone, when it does not).

The session is driven step by step rather than with ``sendmail`` so that the
outbox's commit point falls between the body and its final dot: the relay is
handed the whole mail first, the row is marked sent, and only then is the
dot that makes the relay take the mail sent (see mailbot.outgoing.outbox).
"""

from __future__ import annotations

import functools
import re
import smtplib
import socket
import ssl

from mailbot.config import OutgoingSettings
from mailbot.outgoing.outbox import CommitPoint, PermanentFailure, TemporaryFailure

TIMEOUT_SECONDS = 30.0
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


class SmtpTransport:
    """One SMTP session per outbox flush: connected on the first mail, reused for
    the next ones, dropped after any failure so the next mail starts afresh."""

    def __init__(self, settings: OutgoingSettings) -> None:
        self.settings = settings
        self._client: smtplib.SMTP | None = None

    def send(
        self,
        envelope_from: str,
        recipient: str,
        payload: bytes,
        commit_point: CommitPoint,
    ) -> None:
        try:
            client = self._stage(envelope_from, recipient, payload)
        except PermanentFailure:
            raise  # nothing was sent: the session is still good
        except Exception as exc:
            self._drop()  # whatever went wrong, the next mail starts a new session
            raise _translated(exc) from None
        except BaseException:
            self._drop()
            raise
        try:
            commit_point(functools.partial(_final_dot, client))
        except BaseException:
            self._drop()  # no final dot, or no answer awaited: the session is done
            raise
        try:
            _expect(client.getreply(), 250)
        except Exception as exc:
            self._drop()  # refused or cut off at the dot: the outbox puts the row back
            raise _translated(exc) from None
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()

    def _drop(self) -> None:
        """Close the connection without a word: a relay waiting for the end of DATA
        discards the mail."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _stage(self, envelope_from: str, recipient: str, payload: bytes) -> smtplib.SMTP:
        """MAIL, RCPT, DATA and the whole body, all but the final dot."""
        if self._client is None:
            self._client = self._connect()
        client = self._client
        options = _options(client, envelope_from, recipient)
        _expect(client.mail(envelope_from, options), 250)
        _expect(client.rcpt(recipient), 250, 251)
        client.putcmd("data")
        _expect(client.getreply(), 354)
        body = _LEADING_DOT.sub(b"..", _LINE_END.sub(b"\r\n", payload))
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        client.send(body)
        return client

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        client: smtplib.SMTP
        if settings.ssl:
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=TIMEOUT_SECONDS, context=_tls()
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=TIMEOUT_SECONDS)
        try:
            # The final dot is written alone, after the body and a commit: without
            # this, Nagle's algorithm would hold it until the relay acknowledges
            # the body, which a delayed ACK puts off for tens of milliseconds.
            if client.sock is not None:
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.ehlo_or_helo_if_needed()
            if settings.starttls and not settings.ssl:
                client.starttls(context=_tls())
                client.ehlo()
            if settings.username:
                client.login(settings.username, settings.password or "")
        except BaseException:
            client.close()
            raise
        return client


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS settings for the relay, made once: loading the system's CA
    certificates costs about 10 ms of CPU, and a session starts at each flush."""
    return ssl.create_default_context()


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


def _final_dot(client: smtplib.SMTP) -> None:
    """The final dot, in one write: from here on the relay has the mail."""
    try:
        if client.sock is None:
            raise smtplib.SMTPServerDisconnected("the relay's connection is closed")
        client.sock.sendall(b".\r\n")  # the socket's own: no wrapper before the write
    except Exception as exc:
        raise _translated(exc) from None


def _expect(reply: tuple[int, bytes], *codes: int) -> None:
    code, message = reply
    if code not in codes:
        raise smtplib.SMTPResponseException(code, message)


def _translated(exc: Exception) -> Exception:
    """A failure as the outbox knows them; a surprise as it is."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return _failure(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, (UnicodeError, ValueError)):  # an address or bytes smtplib cannot send
        return PermanentFailure(f"cannot send: {type(exc).__name__}: {exc}")
    if isinstance(exc, (smtplib.SMTPException, OSError)):
        return TemporaryFailure(f"{type(exc).__name__}: {exc}")
    return exc


def _failure(code: int, message: bytes | str) -> TemporaryFailure | PermanentFailure:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    detail = f"{code} {text}"
    return PermanentFailure(detail) if 500 <= code < 600 else TemporaryFailure(detail)
