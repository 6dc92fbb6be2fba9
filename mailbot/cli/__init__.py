"""The ``mailbot`` command: each subcommand parses its arguments and calls the service.

User errors end in one line on stderr and a non-zero exit status, never a
traceback: 1 when the thing asked for does not exist or failed, 2 for bad
usage or configuration, 75 (EX_TEMPFAIL) when ``process`` should be retried.

``parser`` declares the commands, ``reading`` and ``acting`` carry them out
(listings, and commands that change something), ``exits`` turns errors into
exit statuses, ``bot`` opens the service for one command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mailbot import logs
from mailbot.cli.exits import run
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
    """Warnings for one-shot commands; one line per message and per mail for ``serve``."""
    quiet = logging.INFO if args.command == "serve" else logging.WARNING
    logs.configure(logging.DEBUG if args.verbose else quiet)
