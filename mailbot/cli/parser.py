"""The command line: every command and action, its arguments, help text and example.

A command names its handler as ``"module:function"``, imported only when that
command runs (``exits.run``): ``mailbot --help`` and the MTA's ``mailbot
process`` do not pay for the servers, the migrations or the IMAP client. A
handler takes the parsed arguments and the settings and returns the exit
status; adding a command is one ``_command`` call here and its handler in a
module of its own.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from mailbot.cli.exits import EX_USAGE, Handler
from mailbot.domain import InboundStatus, RequestStatus
from mailbot.intake import envelope_problem

ACTING = "mailbot.cli.acting:"
READING = "mailbot.cli.reading:"
STORE_ONLY = "mailbot.cli.piping:cmd_store_only"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming where to look for help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


LARGEST = 2**31 - 1
"""The largest id a table holds (an ``integer`` on PostgreSQL): no id or count
asked for on the command line goes beyond it."""


def _number(value: str) -> int:
    """A whole number a database can be asked about: one no column holds is a
    usage error, not an overflow deep in a query."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if abs(number) > LARGEST:
        raise argparse.ArgumentTypeError(f"too large: {value}")
    return number


def _envelope_address(value: str) -> str:
    """An MTA's envelope address, refused (the MTA bounces the message) as the
    SMTP listener refuses it at MAIL or RCPT."""
    if problem := envelope_problem(value):
        raise argparse.ArgumentTypeError(f"{value[:40]!r}: {problem}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mailbot",
        description="Email-driven approval of contact changes on domain names and services.",
        epilog="Configuration: --config, else $MAILBOT_CONFIG, else ./mailbot.toml, else "
        "built-in defaults; MAILBOT_<SECTION>__<KEY> overrides any key.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.set_defaults(early_handler=None, mta=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(commands, "init", ACTING + "cmd_init", "create or upgrade the database schema", "init")
    command = _command(
        commands,
        "import",
        ACTING + "cmd_import",
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
        ACTING + "cmd_imap_check",
        "connect with the [imap] settings and verify the folders",
        "imap check",
    )
    command = _command(
        commands,
        "sweep",
        ACTING + "cmd_sweep",
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
        ACTING + "cmd_serve",
        "run the SMTP listener, link pages, scheduler and outbox sender",
        "--config /etc/mailbot/mailbot.toml serve",
    )
    command = _command(
        commands,
        "worker",
        ACTING + "cmd_worker",
        "act on stored mail and send what it queues, beside `serve`, until SIGTERM",
        "--config /etc/mailbot/mailbot.toml worker",
    )
    command.description = WORKER_HELP
    command.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    from mailbot.cli import checking  # light: each check imports its libraries when it runs

    command = _command(
        commands,
        "check",
        "mailbot.cli.checking:cmd_check",
        "check config, database, relay, agency mailbox, base_url and addresses;"
        " one line each, exit 1 if any fails",
        "--config /etc/mailbot/mailbot.toml check",
    )
    command.add_argument(
        "--timeout",
        type=checking.positive_seconds,
        default=checking.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long each check waits for an answer (default {checking.DEFAULT_TIMEOUT:g})",
    )
    command = _command(
        commands,
        "demo",
        ACTING + "cmd_demo",
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
    commands: Any, name: str, handler: str | Handler, help_text: str, example: str
) -> argparse.ArgumentParser:
    """One command or action, with its help text, an example and its handler
    (``"module:function"``, see ``exits.Handler``)."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=help_text, epilog=f"example: mailbot {example}"
    )
    command.set_defaults(handler=handler)
    return command


WORKER_HELP = """\
Act on stored mail, apart from the SMTP listener that stores it, and send what
it queues: claim the oldest stored message no other worker has, act on it,
commit, and so on; SIGTERM or SIGINT finishes the message in hand and exits 0.
Any number of workers, on any number of machines sharing one PostgreSQL
database, never act on one message twice (on SQLite they take turns). `serve`
starts [workers] processes of these itself; run this for separate units."""

PROCESS_HELP = """\
Exit status, for the MTA that runs it (Postfix pipe): 0 when the message is
stored (and, without --store-only, acted on or kept as failed for an operator);
1 when it can never be processed (larger than [smtp] max_message_bytes, or
empty), so the MTA bounces it; 75 (EX_TEMPFAIL) for anything else (the
configuration missing or invalid, the database unreachable, unwritable or not
at the current schema, a full disk, any unexpected error), so the MTA keeps the
message and retries. A failure is one line on stderr, never a traceback."""


def _add_process(commands: Any) -> None:
    command = _command(
        commands,
        "process",
        ACTING + "cmd_process",
        "handle one raw RFC 5322 message as if received by SMTP",
        "process --recipient changes@example.net < message.eml",
    )
    command.epilog = f"{PROCESS_HELP}\n\n{command.epilog}"
    command.formatter_class = argparse.RawDescriptionHelpFormatter
    command.set_defaults(mta=True)
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
        type=_envelope_address,
        action="append",
        default=[],
        help="envelope recipient (repeatable)",
    )
    command.add_argument(
        "--sender",
        metavar="ADDR",
        type=_envelope_address,
        help="envelope sender (empty for bounces)",
    )
    command.add_argument(
        "--store-only",
        dest="early_handler",
        action="store_const",
        const=STORE_ONLY,
        help="only store the message, as the SMTP listener does, and leave acting on it"
        " to `mailbot serve` (fast: for an MTA's pipe; of the configuration it reads and"
        " checks only [database] and [smtp] max_message_bytes)",
    )
    _no_flush(command)


def _add_requests(actions: Any) -> None:
    listing = _command(
        actions,
        "list",
        READING + "cmd_requests_list",
        "list requests, newest first",
        "requests list --status pending",
    )
    listing.add_argument("--status", choices=[s.value for s in RequestStatus])
    listing.add_argument("--service", metavar="NAME", help="only this service's requests")
    listing.add_argument(
        "--contact", metavar="EMAIL", help="only requests this address opened or must validate"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    show = _command(
        actions,
        "show",
        READING + "cmd_requests_show",
        "one request with its validations and events",
        "requests show CR-7K2QX9MD --json",
    )
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    for name, handler, text in (
        (
            "cancel",
            ACTING + "cmd_requests_cancel",
            "withdraw a pending request; every party is told",
        ),
        (
            "resend",
            ACTING + "cmd_requests_resend",
            "send fresh tokens to the contacts still awaited",
        ),
    ):
        action = _command(actions, name, handler, text, f"requests {name} CR-7K2QX9MD")
        action.add_argument("id", metavar="ID")


def _add_services(actions: Any) -> None:
    show = _command(
        actions,
        "show",
        READING + "cmd_services_show",
        "a service and its current role holders",
        "services show example.com --json",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print a JSON object")


def _add_outbox(actions: Any) -> None:
    flush = _command(
        actions, "flush", ACTING + "cmd_outbox_flush", "send what is due now", "outbox flush --all"
    )
    flush.add_argument(
        "--all", action="store_true", help="also send mail waiting out a retry delay now"
    )
    retry = _command(
        actions,
        "retry",
        ACTING + "cmd_outbox_retry",
        "queue dead mail again, for a fresh queue lifetime, and send it",
        "outbox retry 42   (or: mailbot outbox retry --dead)",
    )
    retry.add_argument(
        "id", metavar="ID", type=_number, nargs="?", help="the mail's id (outbox list)"
    )
    retry.add_argument("--dead", action="store_true", help="every dead mail")
    _no_flush(retry)
    listing = _command(
        actions,
        "list",
        READING + "cmd_outbox_list",
        "queued and dead mail, and the most recent sent, with the last error",
        "outbox list --sent 50",
    )
    listing.add_argument(
        "--sent",
        type=_number,
        default=20,
        metavar="N",
        help="how many recently sent mails to show (default 20)",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")


def _add_inbound(actions: Any) -> None:
    listing = _command(
        actions,
        "list",
        READING + "cmd_inbound_list",
        "stored messages, oldest first, and how many are in each status"
        " (received: stored, not yet acted on)",
        "inbound list --status received",
    )
    listing.add_argument("--status", choices=[s.value for s in InboundStatus])
    listing.add_argument(
        "--limit", type=_number, default=50, metavar="N", help="at most N messages (default 50)"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
