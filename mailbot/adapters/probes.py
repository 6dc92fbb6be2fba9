"""What ``mailbot check`` tries over the network and on disk: the outgoing relay
(or Maildir), the agency mailbox, and the web listener behind ``base_url``.

Each probe does what mailbot itself will do, up to the point where it would
change something (no mail is sent, none is read), and its line names the step
that failed and the setting to look at. Every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from pathlib import Path

from mailbot.config import OutgoingSettings, Settings
from mailbot.outgoing.compose import bounce_address
from mailbot.service.checks import FAIL, OK, SKIP, WARN, Check, free_margin, unshared_link_key
from mailbot.service.health import disk_problem

_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_SERVER_TIMINGS = re.compile(r"\s*\([0-9.]+ \+ [0-9.]+ (\+ [0-9.]+ )?secs\)")


class _Refused(Exception):
    """A step of the relay session that did not go through, said for the operator."""


# -- outgoing ------------------------------------------------------------------


def outgoing_check(settings: Settings, timeout: float) -> Check:
    if settings.outgoing.transport == "smtp":
        return relay_check(settings, timeout)
    return maildir_check(settings)


def relay_check(settings: Settings, timeout: float) -> Check:
    """Connect, EHLO, STARTTLS and AUTH as configured, then offer the bounce address
    as sender (MAIL FROM) and reset: a relay that will refuse our mail says so here."""
    out = settings.outgoing
    where = f"{out.host}:{out.port}"
    sender = bounce_address(settings.bot.local_part, settings.bot.domain, "check@localhost")
    try:
        done = _relay_session(out, sender, timeout)
    except (_Refused, OSError) as exc:  # smtplib's errors are OSErrors too
        return Check(FAIL, "relay", f"{where}: {_relay_failure(exc, timeout)}")
    detail = f"{where}: " + ", ".join(done)
    if out.username and not (out.ssl or out.starttls) and out.host not in _LOOPBACK_HOSTS:
        return Check(
            WARN,
            "relay",
            detail + "; but the password crosses the network in clear: set"
            " [outgoing] starttls = true or ssl = true",
        )
    return Check(OK, "relay", detail)


def _relay_failure(exc: Exception, timeout: float) -> str:
    """What went wrong in the relay session, and where to look."""
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return f"no answer within {timeout:g} s"  # smtplib reports it as a disconnection
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "the relay closed the connection: see its log"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"the relay answered {exc.smtp_code} {_text(exc.smtp_error)}: see its log"
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS failed ({exc.reason or exc}): check [outgoing] ssl and starttls,"
            " and the relay's certificate"
        )
    if isinstance(exc, smtplib.SMTPException):
        return f"{exc}: see the relay's log"
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"cannot connect: {reason}: is the relay running? check [outgoing] host and port"


def _relay_session(out: OutgoingSettings, sender: str, timeout: float) -> list[str]:
    client: smtplib.SMTP
    if out.ssl:
        context = ssl.create_default_context()
        client = smtplib.SMTP_SSL(out.host, out.port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(out.host, out.port, timeout=timeout)
    try:
        return _relay_steps(client, out, sender)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _relay_steps(client: smtplib.SMTP, out: OutgoingSettings, sender: str) -> list[str]:
    done = ["TLS" if out.ssl else "connected"]
    code, text = client.ehlo()
    if code != 250:
        raise _Refused(f"EHLO answered {code} {_text(text)}: see the relay's log")
    done.append("EHLO answered")
    if out.starttls and not out.ssl:
        if not client.has_extn("starttls"):
            raise _Refused(
                "the relay offers no STARTTLS: enable TLS on it, or set [outgoing] starttls = false"
            )
        client.starttls(context=ssl.create_default_context())
        client.ehlo()
        done.append("STARTTLS")
    if out.username:
        done.append(_login(client, out))
    code, text = client.mail(sender)
    if code != 250:
        raise _Refused(
            f"sender {sender} refused ({code} {_text(text)}): allow mailbot's host or"
            " its login to send from this domain on the relay"
        )
    client.rset()
    done.append("sender accepted")
    return done


def _login(client: smtplib.SMTP, out: OutgoingSettings) -> str:
    if not client.has_extn("auth"):
        hint = "set [outgoing] starttls = true" if not (out.ssl or out.starttls) else "see it"
        raise _Refused(f"the relay offers no AUTH on this connection: {hint}")
    try:
        client.login(out.username or "", out.password or "")
    except smtplib.SMTPAuthenticationError as exc:
        raise _Refused(
            f"AUTH as {out.username} refused ({exc.smtp_code} {_text(exc.smtp_error)}):"
            " check [outgoing] username and password"
        ) from None
    return f"AUTH as {out.username}"


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def maildir_check(settings: Settings) -> Check:
    """The Maildir can take a file: one is written in it and removed."""
    root = settings.outgoing.maildir.absolute()
    if problem := disk_problem(root, free_margin(settings)):
        return Check(FAIL, "maildir", f"{problem}: check [outgoing] maildir")
    if not root.exists():
        return Check(OK, "maildir", f"{root} will be created by the first mail")
    where = root / "tmp" if (root / "tmp").is_dir() else root
    probe = where / f".mailbot-check.{os.getpid()}"
    try:
        _write_and_remove(probe)
    except OSError as exc:
        return Check(
            FAIL,
            "maildir",
            f"cannot write in {where}: {exc.strerror}: run mailbot as the directory's owner",
        )
    return Check(OK, "maildir", f"{root} writable")


def _write_and_remove(path: Path) -> None:
    try:
        with path.open("wb") as handle:
            handle.write(b"mailbot check\n")
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        path.unlink(missing_ok=True)


# -- the agency mailbox ------------------------------------------------------------


def imap_check(settings: Settings, timeout: float) -> Check:
    """Log in and look at the folders as the reader does (``mailbot imap check``)."""
    imap = settings.imap
    if not imap.enabled:
        return Check(SKIP, "imap", "[imap] enabled = false: no agency mailbox is read")
    from imapclient.exceptions import IMAPClientError, LoginError

    from mailbot.adapters.imap_in import mailbox_report

    where = f"{imap.host}:{imap.port} as {imap.username}"
    try:
        lines = mailbox_report(imap, timeout)
    except LoginError as exc:
        return Check(
            FAIL, "imap", f"{where}: login refused ({_imap_text(exc)}): check [imap] password"
        )
    except TimeoutError:
        return Check(FAIL, "imap", f"{where}: no answer within {timeout:g} s")
    except IMAPClientError as exc:
        return Check(
            FAIL,
            "imap",
            f"{where}: {_imap_text(exc)}: check [imap] folder, done_folder and failed_folder",
        )
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return Check(
            FAIL,
            "imap",
            f"{where}: cannot connect: {reason}: check [imap] host, port, ssl and starttls",
        )
    return Check(OK, "imap", f"{where}: " + "; ".join(lines[1:3]))


def _imap_text(exc: Exception) -> str:
    """The server's words, without the bytes quoting and Dovecot's timings."""
    said = exc.args[0] if exc.args else exc
    text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
    return _SERVER_TIMINGS.sub("", _text(text)).rstrip(".")


# -- base_url ----------------------------------------------------------------------


def base_url_check(settings: Settings, timeout: float) -> Check:
    """``GET {base_url}/healthz``, straight (no proxy from the environment), as a
    reader's browser would reach the link pages."""
    import http.client
    import urllib.error
    import urllib.request

    url = f"{settings.bot.base_url}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except urllib.error.URLError as exc:
        return _no_answer(url, exc.reason)
    except (OSError, http.client.HTTPException) as exc:
        return _no_answer(url, exc)
    if status == 200:
        if unshared_link_key(settings):
            return Check(
                WARN,
                "base_url",
                f"{url} answered 200, but [web] secret_key is unset: with several"
                " instances on this PostgreSQL database, set the same key on each, or a"
                " link page loaded from one is refused by another",
            )
        return Check(OK, "base_url", f"{url} answered 200")
    if status == 503:
        return Check(
            FAIL,
            "base_url",
            f"{url} answered 503: mailbot cannot take mail now (database or disk);"
            " `mailbot serve`'s log says why",
        )
    return Check(
        FAIL,
        "base_url",
        f"{url} answered {status}: is [bot] base_url the address of `mailbot serve`?"
        " (a proxy in front must pass /healthz to it)",
    )


def _no_answer(url: str, reason: object) -> Check:
    if isinstance(reason, OSError) and reason.strerror:
        reason = reason.strerror
    return Check(
        FAIL,
        "base_url",
        f"no answer from {url} ({reason}): is `mailbot serve` running, and does"
        " [bot] base_url lead to its [web] host and port?",
    )
