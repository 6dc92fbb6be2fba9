"""``mailbot process`` as an MTA's pipe runs it: the message read and checked,
and with ``--store-only`` stored without loading the application.

Standard library only at import (the database driver is imported to store):
what this module does is paid for on every message the pipe delivers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailbot import intake
from mailbot.cli.exits import EX_FAILED, EX_OK, EX_USAGE, CommandFailed


def read_message(name: str, max_bytes: int) -> bytes:
    """The message from FILE or stdin; CommandFailed (exit 1, the MTA bounces it)
    if it can never be processed: larger than the listener accepts, or empty."""
    try:
        if name == "-":
            raw = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with Path(name).open("rb") as handle:
                raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise CommandFailed(f"cannot read {name}: {exc.strerror}", EX_USAGE) from None
    if len(raw) > max_bytes:
        raise CommandFailed(
            f"message too big: larger than [smtp] max_message_bytes ({max_bytes} bytes)",
            EX_FAILED,
        )
    if not raw.strip():
        raise CommandFailed("not a message: the input is empty", EX_FAILED)
    return raw


def cmd_store_only(args: argparse.Namespace) -> int:
    """Store the message for ``mailbot serve`` to act on; nothing else is loaded."""
    settings = intake.read_settings(args.config)
    raw = read_message(args.file, settings.max_message_bytes)
    stored = intake.store(settings, raw, args.recipient, args.sender)
    if stored.duplicate:
        print(f"duplicate of message {stored.id}: nothing to do")
    else:
        print(f"stored as message {stored.id}; `mailbot serve` acts on it")
    return EX_OK
