"""Exit statuses, and the errors that end a command with each of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mailbot import logs
from mailbot.config import Settings, load_settings
from mailbot.errors import ConfigError, StorageUnavailable
from mailbot.service import database

EX_OK, EX_FAILED, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75

Handler = Callable[[argparse.Namespace, Settings], int]
"""A command: its parsed arguments and the settings in, its exit status out."""


class CommandFailed(Exception):
    """A one-line explanation for the user, and the exit status to end with."""

    def __init__(self, message: str, status: int = EX_FAILED) -> None:
        super().__init__(message)
        self.status = status


def run(args: argparse.Namespace) -> int:
    """Load the settings and run the command's handler; an error is one line on stderr."""
    settings: Settings | None = None
    try:
        settings = load_settings(args.config)
        logs.use_format(settings.log.format, settings.bot.local_part)
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        return fail(str(exc), EX_USAGE)
    except CommandFailed as exc:
        return fail(str(exc), exc.status)
    except (database.SchemaOutOfDate, database.DatabaseUnavailable) as exc:
        return fail(str(exc), EX_FAILED)
    except (database.DatabaseDown, StorageUnavailable) as exc:
        where = database.location(settings) if settings else "?"
        return fail(f"database unavailable ({where}): {database.outage(exc)}", EX_TEMPFAIL)


def fail(message: str, status: int) -> int:
    print(f"mailbot: error: {message}", file=sys.stderr)
    return status
