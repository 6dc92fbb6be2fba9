"""The ``mailbot`` command: each subcommand parses its arguments and calls the service.

Errors end in one line on stderr and a non-zero exit status, never a
traceback: 1 when the thing asked for does not exist or failed, 2 for bad
usage or configuration, 75 (EX_TEMPFAIL) when the database is down.

``process`` is run by an MTA (a Postfix ``pipe``), which bounces on 1 and
retries on 75: so it ends with 1 only for a message that can never be
processed (larger than ``[smtp] max_message_bytes``, or empty), and with 75
for every failure of its environment (configuration missing, unreadable or
invalid; database unreachable, unwritable or not at the current schema; a full
disk; any OSError) and for any unexpected error, whose traceback goes to
syslog's mail log, not to stderr, which the MTA may copy into a bounce.

Each command's module is imported only when it runs (``parser`` names
handlers as ``"module:function"``); ``process --store-only`` imports only the
standard library and the database driver (``piping``, ``mailbot.intake``).

``parser`` declares the commands, ``reading`` and ``acting`` carry them out
(listings, and commands that change something), ``piping`` reads the
message of ``process`` and stores it alone, ``exits`` turns errors into exit
statuses, ``bot`` opens the service for one command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mailbot import logs
from mailbot.cli.exits import record_traceback, run
from mailbot.cli.parser import build_parser

__all__ = ["build_parser", "main"]


EX_SIGPIPE = 128 + 13
"""What a shell reports for a command whose reader went away (``... | head``)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        status = run(args)
        sys.stdout.flush()  # here, where a reader that went away can still be caught
    except BrokenPipeError:
        # Nobody reads what is left: say nothing more (no traceback, no second
        # error when the interpreter flushes stdout at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_SIGPIPE
    return status


def _configure_logging(args: argparse.Namespace) -> None:
    """Warnings for one-shot commands; one line per message and per mail for
    ``serve`` and ``worker``.

    A one-shot command's log lines on stderr carry no traceback (an MTA may
    copy stderr into a bounce), unless ``--verbose`` asks for everything.
    """
    long_running = args.command in ("serve", "worker")
    quiet = logging.INFO if long_running else logging.WARNING
    embedded = bool(logging.getLogger().handlers)  # a host program's logging: left alone
    logs.configure(logging.DEBUG if args.verbose else quiet)
    if not long_running and not args.verbose and not embedded:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_without_traceback)


def _without_traceback(record: logging.LogRecord) -> bool:
    """Fold a record's exception into its line (its type and first line); the
    traceback goes to syslog."""
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        record_traceback(error)
        summary = str(error).strip().splitlines()
        record.msg = f"{record.getMessage()} ({type(error).__name__}"
        record.msg += f": {summary[0]})" if summary else ")"
        record.args = None
        record.exc_info = None
        record.exc_text = None
    return True
