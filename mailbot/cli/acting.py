"""The commands that change something: the schema, imports, mail in, requests steered,
the sweep, the outbox, and the long-running ``serve``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from mailbot.adapters import outgoing_transport
from mailbot.cli.bot import flush_quietly, open_bot
from mailbot.cli.exits import EX_OK, EX_TEMPFAIL, EX_USAGE, CommandFailed
from mailbot.cli.piping import read_message
from mailbot.clock import FixedClock
from mailbot.config import Settings
from mailbot.errors import (
    ImportFileError,
    MailbotError,
    NotRetryable,
    ProcessingFailed,
    StorageUnavailable,
    UnknownRequest,
)
from mailbot.service import database
from mailbot.service.importer import apply_import, read_import_file


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    revision = database.upgrade_schema(settings)
    print(f"database ready at schema revision {revision}")
    return EX_OK


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = read_import_file(Path(args.file))
        with open_bot(settings) as bot:
            report = apply_import(bot.engine, data, bot.clock.now())
    except ImportFileError as exc:
        raise CommandFailed(str(exc)) from None
    print(
        f"contacts: {report.contacts_created} created, {report.contacts_updated} updated; "
        f"services: {report.services_created} created, {report.services_updated} updated"
    )
    return EX_OK


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    raw = read_message(args.file, settings.smtp.max_message_bytes)
    try:
        with open_bot(settings) as bot:
            outcome = bot.receive(
                raw, source="cli", recipients=tuple(args.recipient), envelope_from=args.sender
            )
            if not args.no_flush:
                flush_quietly(bot, settings)
    except (
        database.DatabaseDown,
        StorageUnavailable,
        database.SchemaOutOfDate,
        database.DatabaseUnavailable,
    ) as exc:
        raise CommandFailed(f"message not handled, try again later: {exc}", EX_TEMPFAIL) from None
    except ProcessingFailed as exc:
        # Stored and marked failed for an operator to look at; retrying would not help.
        print(f"mailbot: stored, but processing failed ({exc}); see the log", file=sys.stderr)
        return EX_OK
    print(outcome)
    return EX_OK


def cmd_requests_cancel(args: argparse.Namespace, settings: Settings) -> int:
    return _steer(settings, args.id, "cancel")


def cmd_requests_resend(args: argparse.Namespace, settings: Settings) -> int:
    return _steer(settings, args.id, "resend")


def _steer(settings: Settings, request_id: str, action: str) -> int:
    with open_bot(settings) as bot:
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
    with open_bot(settings, clock) as bot:
        report = bot.sweep()
        if not args.no_flush:
            flush_quietly(bot, settings)
    print(f"expired {report.expired}, reminded {report.reminded}")
    return EX_OK


def _parse_now(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandFailed(f"--now: not an ISO 8601 date and time: {text!r}", EX_USAGE) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_outbox_flush(args: argparse.Namespace, settings: Settings) -> int:
    transport = outgoing_transport(settings)
    with open_bot(settings) as bot:
        if args.all:
            bot.hurry_outbox()
        report = bot.flush_outbox(transport)
    print(f"sent {report.sent}, to retry {report.retried}, dead {report.dead}")
    return EX_OK


def cmd_outbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    if (args.id is None) == (not args.dead):
        raise CommandFailed(
            "give one mail's ID or --dead (see `mailbot outbox retry --help`)", EX_USAGE
        )
    with open_bot(settings) as bot:
        try:
            rows = bot.retry_outbox(None if args.dead else [args.id])
        except NotRetryable as exc:
            raise CommandFailed(str(exc)) from None
        if not args.no_flush:
            flush_quietly(bot, settings)
    for row in rows:
        print(f"{row.id}: {row.event} to {row.to_email} queued again")
    if not rows:
        print("no dead mail")
    return EX_OK


def cmd_imap_check(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.adapters.imap_in import CONNECTION_ERRORS, mailbox_report

    if not settings.imap.host or not settings.imap.username:
        raise CommandFailed("set [imap] host and username first", EX_USAGE)
    try:
        lines = mailbox_report(settings.imap)
    except CONNECTION_ERRORS as exc:
        raise CommandFailed(f"IMAP check failed: {exc}") from None
    print("\n".join(lines))
    if not settings.imap.enabled:
        print("note: [imap] enabled = false, so `mailbot serve` will not read this mailbox")
    return EX_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.configfile import config_path
    from mailbot.runtime import serve  # the servers' imports are only paid for here

    path = config_path(args.config)
    options = ("--config", str(path.resolve())) if path else ()
    try:
        serve(settings, (*options, *(("--verbose",) if args.verbose else ())))
    except OSError as exc:
        raise CommandFailed(f"cannot listen: {exc.strerror or exc}") from None
    return EX_OK


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.worker import run_worker

    with open_bot(settings):  # a bad database is one line and a non-zero exit, at once
        pass
    run_worker(settings, supervised=args.supervised)
    return EX_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.demo import run_demo

    return run_demo(keep=args.keep)
