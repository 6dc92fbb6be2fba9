"""Exit statuses, and the errors that end a command with each of them.

Nothing here imports the application at module level: a command's handler
module, the settings and the database layer are imported when the command
runs, so that each command pays only for what it uses.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mailbot import logs
from mailbot.errors import ConfigError, StorageUnavailable, in_one_line

if TYPE_CHECKING:
    from mailbot.config import Settings

EX_OK, EX_FAILED, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75

Handler = Callable[[argparse.Namespace, "Settings"], int]
"""A command: its parsed arguments and the settings in, its exit status out.
The parser names it as ``"module:function"``."""
EarlyHandler = Callable[[argparse.Namespace], int]
"""A command that reads what it needs of the configuration itself, before and
instead of the full settings (``process --store-only``)."""

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """A one-line explanation for the user, and the exit status to end with."""

    def __init__(self, message: str, status: int = EX_FAILED) -> None:
        super().__init__(message)
        self.status = status


def run(args: argparse.Namespace) -> int:
    """Run the command's handler; an error is one line on stderr, never a traceback.

    For a command an MTA runs (``args.mta``: ``process``), every failure that
    is not the message's own fault is EX_TEMPFAIL, so that the MTA keeps the
    message and retries; the other commands end with 2 for usage or
    configuration, 1 for what failed, 75 for a database that is down.
    """
    settings: Settings | None = None
    mta = bool(getattr(args, "mta", False))
    try:
        if getattr(args, "early_handler", None):
            early: EarlyHandler = resolve(args.early_handler)
            return early(args)
        from mailbot.config import load_settings

        settings = load_settings(args.config)
        logs.use_format(settings.log.format, settings.bot.local_part)
        handler: Handler = resolve(args.handler)
        return handler(args, settings)
    except CommandFailed as exc:
        return fail(str(exc), exc.status)
    except ConfigError as exc:
        return fail(str(exc), EX_TEMPFAIL if mta else EX_USAGE)
    except BrokenPipeError:
        raise  # the reader of stdout went away: ``main`` ends quietly
    except Exception as exc:  # the environment, or a bug: one line, the traceback to the log
        status, message = _environment(exc, settings, mta)
        return fail(message, status)


def resolve(name: str | Callable[..., int]) -> Any:
    """The function a ``"module:function"`` name stands for, imported now (a
    function given itself is used as it is, though its module is then paid
    for by every command)."""
    if callable(name):
        return name
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _environment(exc: Exception, settings: Settings | None, mta: bool) -> tuple[int, str]:
    """The status and line for a failure of the database, the system, or the code."""
    database = sys.modules.get("mailbot.service.database")  # loaded if it raised
    if database is not None:
        refusals = database.SchemaOutOfDate | database.SchemaRefused | database.DatabaseUnavailable
        if isinstance(exc, refusals):
            return (EX_TEMPFAIL if mta else EX_FAILED), in_one_line(exc)
        if isinstance(exc, database.DatabaseDown | StorageUnavailable):
            where = database.location(settings) if settings else "?"
            return EX_TEMPFAIL, f"database unavailable ({where}): {database.outage(exc)}"
    if isinstance(exc, StorageUnavailable):
        return EX_TEMPFAIL, f"database unavailable: {in_one_line(exc)}"
    status = EX_TEMPFAIL if mta else EX_FAILED
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return status, f"{exc.strerror or in_one_line(exc)}{where}"
    record_traceback(exc)
    return status, f"internal error ({type(exc).__name__}); the traceback is in the mail log"


def record_traceback(exc: BaseException) -> None:
    """Send a bug's traceback to syslog (the mail facility, beside the MTA's own
    lines), never to stderr, which an MTA may copy into a bounce; with
    ``--verbose``, to the log on stderr as well."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        log.debug("unexpected error", exc_info=exc)
    try:
        import syslog
        import traceback

        syslog.openlog("mailbot", syslog.LOG_PID, syslog.LOG_MAIL)
        for line in traceback.format_exception(exc):
            for part in line.rstrip("\n").splitlines():
                syslog.syslog(syslog.LOG_ERR, part)
    except Exception as failure:  # no syslog: the line on stderr still says what happened
        log.debug("no syslog for the traceback: %s", failure)


def fail(message: str, status: int) -> int:
    """Say what failed on one line of stderr, and return the exit status."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"mailbot: error: {line}", file=sys.stderr)
    return status
