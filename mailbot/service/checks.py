"""What ``mailbot check`` looks at on the service's side: where the settings came
from, the database (reachable, at the schema this version uses, writable), and
whether the addresses and links mailbot puts in its mail lead back to it.

Every check returns a ``Check``: a status, the check's name and one line that
says what is wrong and what to do. A check reports what it finds instead of
raising; the command bounds each one with a timeout. The network probes (relay,
agency mailbox, ``base_url``) are in ``adapters/probes.py``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from mailbot.config import Settings
from mailbot.configfile import config_path
from mailbot.outgoing.compose import BOUNCE_PREFIX
from mailbot.service import database
from mailbot.service.health import disk_problem
from mailbot.storage import engine as db

Status = Literal["ok", "warn", "skip", "FAIL"]
OK: Status = "ok"
WARN: Status = "warn"
"""Worth a look, but mailbot works: the exit status stays 0."""
SKIP: Status = "skip"
FAIL: Status = "FAIL"

MAX_LOCAL_PART = 64
"""RFC 5321's limit on the part of an address before the ``@``."""
VERP_KEY_LENGTH = len("+" + BOUNCE_PREFIX) + 32
"""What a bounce address adds to the bot's local part: ``+bounce-`` and a
32-character Message-ID key (``outgoing/compose.py``)."""
UNREACHABLE_DOMAINS = ("localhost", "invalid", "local")
"""Top-level names no mail server elsewhere delivers to (RFC 2606, RFC 6762)."""
_NOT_A_DOMAIN = re.compile(r"[@\s/:]|^[.-]|[.-]$|\.\.")


@dataclass(frozen=True)
class Check:
    """One check's result: one line of ``mailbot check``."""

    status: Status
    name: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}"


def worst(name: str, findings: list[tuple[Status, str]], fine: str) -> Check:
    """One line for several findings: the worst status, then every finding, the
    failures first."""
    for status in (FAIL, WARN):
        if any(level == status for level, _ in findings):
            ordered = sorted(findings, key=lambda finding: finding[0] != FAIL)
            return Check(status, name, "; ".join(text for _, text in ordered))
    return Check(OK, name, fine)


# -- config ----------------------------------------------------------------------


def config_check(explicit: str | None) -> Check:
    """Which file was read (the settings are valid by now: ``load_settings`` would
    have stopped the command), and which environment variables override it."""
    path = config_path(explicit)
    source = f"{path.absolute()} read" if path else "built-in defaults (no config file found)"
    overrides = sorted(
        name for name in os.environ if name.upper().startswith("MAILBOT_") and "__" in name
    )
    if overrides:
        source += "; overridden by " + ", ".join(overrides)
    return Check(OK, "config", source)


def secrets_of(settings: Settings) -> list[str]:
    """Every password and key in the settings, to be kept out of any output."""
    found = [
        sa.make_url(settings.database.url).password,
        settings.outgoing.password,
        settings.imap.password,
        settings.web.secret_key,
    ]
    return [str(secret) for secret in found if secret]


def unshared_link_key(settings: Settings) -> bool:
    """Whether link-page forms are signed with a key of this process's own while
    the database may be shared by other instances (PostgreSQL)."""
    backend = sa.make_url(settings.database.url).get_backend_name()
    return backend == "postgresql" and not settings.web.secret_key


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def free_margin(settings: Settings) -> int:
    """The free disk space ``/healthz`` asks for (``[database] min_free_bytes``)."""
    margin = settings.database.min_free_bytes
    return 2 * settings.smtp.max_message_bytes if margin is None else margin


# -- database --------------------------------------------------------------------


def database_check(settings: Settings, timeout: float) -> Check:
    """Reachable, at the newest migration, and writable (a write rolled back)."""
    where = database.location(settings)
    url = sa.make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        where += "" if path.is_absolute() else f" ({path.absolute()})"
        if not path.is_file():
            return Check(FAIL, "database", f"{where}: no database file: run `mailbot init`")
        if problem := disk_problem(path.parent, free_margin(settings)):
            return Check(FAIL, "database", f"{where}: {problem}")
    engine = _engine(settings, timeout)
    try:
        return _schema_and_write(engine, where)
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        return Check(FAIL, "database", f"{where}: cannot connect: {reason}: check [database] url")
    finally:
        engine.dispose()


def _engine(settings: Settings, timeout: float) -> Engine:
    """The service's engine on SQLite (its locking and pragmas); on PostgreSQL one
    that gives up connecting after ``timeout``."""
    url = sa.make_url(settings.database.url)
    if url.get_backend_name() == "sqlite":
        busy = min(timeout, settings.database.busy_timeout_seconds)
        return db.make_engine(settings.database.model_copy(update={"busy_timeout_seconds": busy}))
    return sa.create_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": max(1, round(timeout))}
    )


def _schema_and_write(engine: Engine, where: str) -> Check:
    with engine.connect().execution_options(**{db.READ_ONLY: True}) as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head, known = _revisions()
    problem = _schema_problem(current, head, known) or _write_problem(engine)
    if problem:
        return Check(FAIL, "database", f"{where}: {problem}")
    return Check(OK, "database", f"{where}: reachable, schema at head ({head}), writable")


def _schema_problem(current: str | None, head: str | None, known: set[str]) -> str | None:
    if current is None:
        return "reachable, but it has no schema: run `mailbot init`"
    if current == head:
        return None
    if current in known:
        return f"schema at {current}, behind {head}: run `mailbot init` to upgrade it"
    return (
        f"schema at {current}, which this mailbot does not know (newer than it?): install"
        " the mailbot version that last ran `mailbot init`"
    )


def _write_problem(engine: Engine) -> str | None:
    """A write that is rolled back: the file's permissions, a read-only replica or a
    role without privileges all show here (SQLite takes its write lock for it)."""
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                connection.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))
            finally:
                transaction.rollback()
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        return (
            f"schema at head, but not writable: {reason}: check the owner and permissions"
            " of the file or the database role's privileges"
        )
    return None


def _revisions() -> tuple[str | None, set[str]]:
    """The newest migration this version ships, and every one it knows."""
    with as_file(files("mailbot.migrations")) as location:
        script = ScriptDirectory(str(location))
        return script.get_current_head(), {rev.revision for rev in script.walk_revisions()}


# -- addresses -------------------------------------------------------------------


def addresses_check(settings: Settings) -> Check:
    """Mail sent from the bot, its bounces and its links must come back to it.

    The listener takes every recipient at the bot address's domain and at
    ``[smtp] domains``; the reply and bounce (VERP) addresses are the bot
    address with a ``+`` key, so they are in that domain by construction. What
    can go wrong is the domain itself, a malformed entry in ``[smtp] domains``,
    a bounce address too long to be sent back, and links no reader can open.
    """
    bot = settings.bot
    findings = [*_domain_findings(settings), *_link_findings(settings)]
    verp_length = len(bot.local_part) + VERP_KEY_LENGTH
    if verp_length > MAX_LOCAL_PART:
        findings.append(
            (
                WARN,
                f"bounce addresses would have {verp_length} characters before the @, more than"
                f" the {MAX_LOCAL_PART} SMTP allows: shorten the local part of [bot] address"
                f" to {MAX_LOCAL_PART - VERP_KEY_LENGTH} characters",
            )
        )
    accepted = ", ".join([bot.domain, *(d for d in settings.smtp.domains if d != bot.domain)])
    fine = (
        f"mail to {accepted} is accepted; {bot.address} and its reply and bounce"
        f" addresses ({bot.local_part}+...@{bot.domain}) come back to it"
    )
    return worst("addresses", findings, fine)


def _domain_findings(settings: Settings) -> list[tuple[Status, str]]:
    findings: list[tuple[Status, str]] = []
    malformed = [repr(d) for d in settings.smtp.domains if _NOT_A_DOMAIN.search(d) or not d]
    if malformed:
        findings.append(
            (
                FAIL,
                f"[smtp] domains: {', '.join(malformed)}"
                + (" is not a domain name" if len(malformed) == 1 else " are not domain names")
                + ", so no recipient ever matches: write bare domains, like example.com",
            )
        )
    domain = settings.bot.domain
    if settings.outgoing.transport == "smtp" and _unreachable(domain):
        findings.append(
            (
                FAIL,
                f"[bot] address {settings.bot.address} is in {domain}, where no one elsewhere"
                " can send replies or bounces: set it to an address in a domain the front"
                " MTA receives for mailbot",
            )
        )
    return findings


def _unreachable(domain: str) -> bool:
    return "." not in domain or domain.rsplit(".", 1)[1] in UNREACHABLE_DOMAINS


def _link_findings(settings: Settings) -> list[tuple[Status, str]]:
    """Links carry tokens: they must open for the reader, and not in clear text."""
    base_url = settings.bot.base_url
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if _loopback(host):
        if settings.outgoing.transport != "smtp":
            return []
        return [
            (
                WARN,
                f"links in mails start with {base_url}, which only this machine can open:"
                " set [bot] base_url to the address readers use (fine for a test relay)",
            )
        ]
    if parts.scheme == "http":
        return [
            (
                WARN,
                f"links in mails carry tokens over plain http ({base_url}): serve them"
                " over https and set [bot] base_url to the https address",
            )
        ]
    return []


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified
