"""The ``mailbot`` command: each subcommand parses its arguments and calls the service.

User errors end in one line on stderr and a non-zero exit status, never a
traceback: 1 when the thing asked for does not exist or failed, 2 for bad
usage or configuration, 75 (EX_TEMPFAIL) when ``process`` should be retried.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import sqlalchemy.exc

from mailbot import logs
from mailbot.adapters import outgoing_transport
from mailbot.clock import Clock, FixedClock
from mailbot.config import Settings, load_settings
from mailbot.errors import (
    ConfigError,
    ImportFileError,
    MailbotError,
    NotRetryable,
    ProcessingFailed,
    StorageUnavailable,
    UnknownRequest,
)
from mailbot.service import Mailbot
from mailbot.service.importer import apply_import, read_import_file
from mailbot.storage import engine as db
from mailbot.storage import queries
from mailbot.views import inbound_json, outbox_json, request_json, service_json

EX_OK, EX_FAILED, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75


class CommandFailed(Exception):
    """A one-line explanation for the user, and the exit status to end with."""

    def __init__(self, message: str, status: int = EX_FAILED) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        settings = load_settings(args.config)
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        return _fail(str(exc), EX_USAGE)
    except CommandFailed as exc:
        return _fail(str(exc), exc.status)
    except (db.SchemaOutOfDate, db.DatabaseUnavailable) as exc:
        return _fail(str(exc), EX_FAILED)
    except sqlalchemy.exc.OperationalError as exc:
        return _fail(f"database unavailable ({_where(settings)}): {exc.orig}", EX_TEMPFAIL)
    except StorageUnavailable as exc:
        return _fail(f"database unavailable ({_where(settings)}): {exc}", EX_TEMPFAIL)


def _where(settings: Settings) -> str:
    """The database URL, without its password, for an error message."""
    return sqlalchemy.make_url(settings.database.url).render_as_string(hide_password=True)


def _configure_logging(args: argparse.Namespace) -> None:
    """Warnings for one-shot commands; one line per message and per mail for ``serve``."""
    quiet = logging.INFO if args.command == "serve" else logging.WARNING
    logs.configure(logging.DEBUG if args.verbose else quiet)


def _fail(message: str, status: int) -> int:
    print(f"mailbot: error: {message}", file=sys.stderr)
    return status


@contextmanager
def _bot(settings: Settings, clock: Clock | None = None) -> Iterator[Mailbot]:
    """The service on a database at the current schema, closed when the command ends."""
    bot = Mailbot.from_settings(settings, clock)
    try:
        db.check_schema(bot.engine)
        yield bot
    finally:
        bot.engine.dispose()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- commands ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    engine = db.make_engine(settings.database)
    try:
        revision = db.upgrade(engine)
    finally:
        engine.dispose()
    print(f"database ready at schema revision {revision}")
    return EX_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = read_import_file(Path(args.file))
        with _bot(settings) as bot:
            report = apply_import(bot.engine, data, bot.clock.now())
    except ImportFileError as exc:
        raise CommandFailed(str(exc)) from None
    print(
        f"contacts: {report.contacts_created} created, {report.contacts_updated} updated; "
        f"services: {report.services_created} created, {report.services_updated} updated"
    )
    return EX_OK


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    raw = _read_message(args.file)
    try:
        with _bot(settings) as bot:
            outcome = bot.receive(
                raw, source="cli", recipients=tuple(args.recipient), envelope_from=args.sender
            )
            if not args.no_flush:
                _flush_quietly(bot, settings)
    except (
        sqlalchemy.exc.OperationalError,
        StorageUnavailable,
        db.SchemaOutOfDate,
        db.DatabaseUnavailable,
    ) as exc:
        raise CommandFailed(f"message not handled, try again later: {exc}", EX_TEMPFAIL) from None
    except ProcessingFailed as exc:
        # Stored and marked failed for an operator to look at; retrying would not help.
        print(f"mailbot: stored, but processing failed ({exc}); see the log", file=sys.stderr)
        return EX_OK
    print(outcome)
    return EX_OK


def _read_message(name: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise CommandFailed(f"cannot read {name}: {exc.strerror}", EX_USAGE) from None


def cmd_requests_list(args: argparse.Namespace, settings: Settings) -> int:
    with _bot(settings) as bot, db.transaction(bot.engine) as session:
        rows = queries.requests(
            session, status=args.status, service=args.service, contact=args.contact
        )
        items = [request_json(session, row, events=False) for row in rows]
    if args.json:
        _print_json(items)
        return EX_OK
    for item in items:
        changes = ", ".join(f"{c['role']}: {c['from']} -> {c['to']}" for c in item["changes"])
        print(f"{item['id']}  {item['status']:<9}  {item['service']}  {changes}")
    if not items:
        print("no requests")
    return EX_OK


def cmd_requests_show(args: argparse.Namespace, settings: Settings) -> int:
    with _bot(settings) as bot, db.transaction(bot.engine) as session:
        row = queries.request_row(session, args.id)
        if row is None:
            raise CommandFailed(f"no request {args.id}")
        item = request_json(session, row)
    if args.json:
        _print_json(item)
        return EX_OK
    print(f"{item['id']}  {item['service']}  {item['status']}  (requested by {item['requester']})")
    print(
        f"  created {item['created_at']}, expires {item['expires_at']}, closed {item['closed_at']}"
    )
    for change in item["changes"]:
        print(f"  {change['role']}: {change['from']} -> {change['to']}")
    for v in item["validations"]:
        print(
            f"  validation {v['side']:<7} {v['email']}: {v['status']}"
            f" ({v['channel'] or '-'}, {v['decided_at'] or '-'}, delivery {v['delivery']})"
        )
    for event in item["events"]:
        print(f"  {event['at']}  {event['kind']}  {event['actor'] or ''}")
    return EX_OK


def cmd_requests_cancel(args: argparse.Namespace, settings: Settings) -> int:
    return _steer(settings, args.id, "cancel")


def cmd_requests_resend(args: argparse.Namespace, settings: Settings) -> int:
    return _steer(settings, args.id, "resend")


def _steer(settings: Settings, request_id: str, action: str) -> int:
    with _bot(settings) as bot:
        act = bot.cancel_request if action == "cancel" else bot.resend_request
        try:
            request = act(request_id)
        except UnknownRequest as exc:
            raise CommandFailed(str(exc)) from None
        except MailbotError as exc:
            raise CommandFailed(
                f"cannot {action} {request_id}: {exc.code}{': ' + exc.detail if exc.detail else ''}"
            ) from None
    print(f"{request.id}: {action} done; the request is {request.status.value}")
    return EX_OK


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    clock = FixedClock(_parse_now(args.now)) if args.now else None
    with _bot(settings, clock) as bot:
        report = bot.sweep()
        if not args.no_flush:
            _flush_quietly(bot, settings)
    print(f"expired {report.expired}, reminded {report.reminded}")
    return EX_OK


def _flush_quietly(bot: Mailbot, settings: Settings) -> None:
    """Send what a command just queued; what cannot go now stays queued for later."""
    try:
        bot.flush_outbox(outgoing_transport(settings))
    except (sqlalchemy.exc.OperationalError, StorageUnavailable, OSError) as exc:
        logging.getLogger(__name__).warning("mail stays queued: %s", exc)


def _parse_now(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandFailed(f"--now: not an ISO 8601 date and time: {text!r}", EX_USAGE) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_services_show(args: argparse.Namespace, settings: Settings) -> int:
    with _bot(settings) as bot, db.transaction(bot.engine) as session:
        row = queries.service_row(session, args.name)
        if row is None:
            raise CommandFailed(f"no service {args.name}")
        item = service_json(session, row)
    if args.json:
        _print_json(item)
        return EX_OK
    print(
        f"{item['name']} ({item['kind']}, {'in' if item['in_good_standing'] else 'NOT in'}"
        " good standing)"
    )
    for role in ("admin", "tech", "billing"):
        contact = item["contacts"][role]
        print(f"  {role:<8} {contact['email']}  {contact['handle'] or ''}  {contact['name']}")
    return EX_OK


def cmd_outbox_flush(args: argparse.Namespace, settings: Settings) -> int:
    transport = outgoing_transport(settings)
    with _bot(settings) as bot:
        if args.all:
            bot.hurry_outbox()
        report = bot.flush_outbox(transport)
    print(f"sent {report.sent}, to retry {report.retried}, dead {report.dead}")
    return EX_OK


def cmd_outbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    if (args.id is None) == (not args.dead):
        raise CommandFailed("give one mail's ID or --dead (see `mailbot outbox retry --help`)", 2)
    with _bot(settings) as bot:
        try:
            rows = bot.retry_outbox(None if args.dead else [args.id])
        except NotRetryable as exc:
            raise CommandFailed(str(exc)) from None
        if not args.no_flush:
            _flush_quietly(bot, settings)
    for row in rows:
        print(f"{row.id}: {row.event} to {row.to_email} queued again")
    if not rows:
        print("no dead mail")
    return EX_OK


def cmd_inbound_list(args: argparse.Namespace, settings: Settings) -> int:
    with _bot(settings) as bot, db.transaction(bot.engine) as session:
        rows = queries.inbound_overview(session, args.status, args.limit)
        items = [inbound_json(row) for row in rows]
        counts = queries.inbound_counts(session)
    if args.json:
        _print_json(items)
        return EX_OK
    for item in items:
        print(
            f"{item['id']:>7} {item['status']:<9} {item['received_at']}  {item['source']:<4}"
            f"  {item['message_id'] or '-'}  {item['outcome']}"
        )
    total = ", ".join(f"{counts.get(s, 0)} {s}" for s in INBOUND_STATUSES)
    print(f"stored: {total}")
    return EX_OK


INBOUND_STATUSES = ("received", "processed", "ignored", "failed")


def cmd_outbox_list(args: argparse.Namespace, settings: Settings) -> int:
    with _bot(settings) as bot, db.transaction(bot.engine) as session:
        rows = queries.outbox_overview(session, sent_limit=args.sent)
        items = [outbox_json(row) for row in rows]
    if args.json:
        _print_json(items)
        return EX_OK
    for item in items:
        when = item["sent_at"] or item["next_attempt_at"]
        error = f"  last error: {item['last_error']}" if item["last_error"] else ""
        print(
            f"{item['id']:>6} {item['status']:<7} {when}  {item['event']:<20} {item['to']}"
            f"  (request {item['request'] or '-'}, {item['attempts']} attempts){error}"
        )
    if not items:
        print("the outbox is empty")
    return EX_OK


def cmd_imap_check(args: argparse.Namespace, settings: Settings) -> int:
    import threading

    from imapclient.exceptions import IMAPClientError

    from mailbot.adapters.imap_in import ImapReader

    if not settings.imap.host or not settings.imap.username:
        raise CommandFailed("set [imap] host and username first", EX_USAGE)
    with _bot(settings) as bot:
        reader = ImapReader(settings.imap, bot, threading.Event())
        try:
            lines = reader.check()
        except (IMAPClientError, OSError) as exc:
            raise CommandFailed(f"IMAP check failed: {exc}") from None
    print("\n".join(lines))
    if not settings.imap.enabled:
        print("note: [imap] enabled = false, so `mailbot serve` will not read this mailbox")
    return EX_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.runtime import serve  # the servers' imports are only paid for here

    try:
        serve(settings)
    except OSError as exc:
        raise CommandFailed(f"cannot listen: {exc.strerror or exc}") from None
    return EX_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.demo import run_demo

    return run_demo(keep=args.keep)


# -- parser -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming where to look for help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mailbot",
        description="Email-driven approval of contact changes on domain names and services.",
        epilog="Configuration: --config, else $MAILBOT_CONFIG, else ./mailbot.toml, else "
        "built-in defaults; MAILBOT_<SECTION>__<KEY> overrides any key.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(commands, "init", cmd_init, "create or upgrade the database schema", "init")
    command = _command(
        commands,
        "import",
        cmd_import,
        "upsert contacts and services from a JSON file",
        "import customers.json",
    )
    command.add_argument("file", metavar="FILE")
    _add_process(commands)
    _add_requests(_group(commands, "requests", "list, show and steer change requests"))
    _add_services(_group(commands, "services", "show services"))
    _add_outbox(_group(commands, "outbox", "the queue of outgoing mail"))
    _add_inbound(_group(commands, "inbound", "received mail and the backlog not yet acted on"))
    imap = _group(commands, "imap", "the agency mailbox")
    _command(
        imap,
        "check",
        cmd_imap_check,
        "connect with the [imap] settings and verify the folders",
        "imap check",
    )
    command = _command(
        commands,
        "sweep",
        cmd_sweep,
        "send due reminders and expire stale requests, once",
        "sweep --now 2026-03-05T09:00:00Z",
    )
    command.add_argument(
        "--now",
        metavar="ISO8601",
        help="act as if the clock read this (default: now; UTC if no zone)",
    )
    _no_flush(command)
    _command(
        commands,
        "serve",
        cmd_serve,
        "run the SMTP listener, link pages, scheduler and outbox sender",
        "--config /etc/mailbot/mailbot.toml serve",
    )
    command = _command(
        commands,
        "demo",
        cmd_demo,
        "play a whole scenario end to end on a throwaway directory",
        "demo",
    )
    command.add_argument("--keep", action="store_true", help="keep the demo directory")
    return parser


def _no_flush(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--no-flush",
        action="store_true",
        help="leave the mail this queues to `serve` or `outbox flush` (default: send it now)",
    )


def _group(commands: Any, name: str, help_text: str) -> Any:
    """A command with actions of its own (``mailbot requests list`` ...)."""
    group = commands.add_parser(name, help=help_text, description=help_text)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def _command(
    commands: Any, name: str, handler: Handler, help_text: str, example: str
) -> argparse.ArgumentParser:
    """One command or action, with its help text and an example."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text, epilog=f"example: mailbot {example}"
    )
    command.set_defaults(handler=handler)
    return command


def _add_process(commands: Any) -> None:
    command = _command(
        commands,
        "process",
        cmd_process,
        "handle one raw RFC 5322 message as if received by SMTP",
        "process --recipient changes@example.net < message.eml",
    )
    command.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        default="-",
        help="the message file, or - for standard input (default)",
    )
    command.add_argument(
        "--recipient",
        metavar="ADDR",
        action="append",
        default=[],
        help="envelope recipient (repeatable)",
    )
    command.add_argument("--sender", metavar="ADDR", help="envelope sender (empty for bounces)")
    _no_flush(command)


def _add_requests(actions: Any) -> None:
    listing = _command(
        actions,
        "list",
        cmd_requests_list,
        "list requests, newest first",
        "requests list --status pending",
    )
    listing.add_argument("--status", choices=["pending", "done", "refused", "expired", "cancelled"])
    listing.add_argument("--service", metavar="NAME", help="only this service's requests")
    listing.add_argument(
        "--contact", metavar="EMAIL", help="only requests this address opened or must validate"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    show = _command(
        actions,
        "show",
        cmd_requests_show,
        "one request with its validations and events",
        "requests show CR-7K2QX9MD --json",
    )
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    for name, handler, text in (
        ("cancel", cmd_requests_cancel, "withdraw a pending request; every party is told"),
        ("resend", cmd_requests_resend, "send fresh tokens to the contacts still awaited"),
    ):
        action = _command(actions, name, handler, text, f"requests {name} CR-7K2QX9MD")
        action.add_argument("id", metavar="ID")


def _add_services(actions: Any) -> None:
    show = _command(
        actions,
        "show",
        cmd_services_show,
        "a service and its current role holders",
        "services show example.com --json",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print a JSON object")


def _add_outbox(actions: Any) -> None:
    flush = _command(
        actions, "flush", cmd_outbox_flush, "send what is due now", "outbox flush --all"
    )
    flush.add_argument(
        "--all", action="store_true", help="also send mail waiting out a retry delay now"
    )
    retry = _command(
        actions,
        "retry",
        cmd_outbox_retry,
        "queue dead mail again, for a fresh queue lifetime, and send it",
        "outbox retry 42   (or: mailbot outbox retry --dead)",
    )
    retry.add_argument("id", metavar="ID", type=int, nargs="?", help="the mail's id (outbox list)")
    retry.add_argument("--dead", action="store_true", help="every dead mail")
    _no_flush(retry)
    listing = _command(
        actions,
        "list",
        cmd_outbox_list,
        "queued and dead mail, and the most recent sent, with the last error",
        "outbox list --sent 50",
    )
    listing.add_argument(
        "--sent",
        type=int,
        default=20,
        metavar="N",
        help="how many recently sent mails to show (default 20)",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")


def _add_inbound(actions: Any) -> None:
    listing = _command(
        actions,
        "list",
        cmd_inbound_list,
        "stored messages, oldest first, and how many are in each status"
        " (received: stored, not yet acted on)",
        "inbound list --status received",
    )
    listing.add_argument("--status", choices=INBOUND_STATUSES)
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N messages (default 50)"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
