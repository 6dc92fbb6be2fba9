"""``mailbot check``: the config, the database, the outgoing relay, the agency
mailbox, ``base_url`` and the addresses, one line each (``ok``, ``warn``,
``skip`` or ``FAIL``); exit 1 if any check failed.

The checks import their libraries when they run, so that declaring the command
costs nothing to the others.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailbot.cli.exits import EX_FAILED, EX_OK

if TYPE_CHECKING:
    from mailbot.config import Settings
    from mailbot.service.checks import Check

DEFAULT_TIMEOUT = 10.0
"""Seconds each check may wait for an answer."""
GRACE_SECONDS = 5.0
"""Beyond its own timeouts, how long a check may run before it is reported as
hanging (a connection can take one timeout and each reply another)."""


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from mailbot.adapters import probes
    from mailbot.service import checks

    timeout: float = args.timeout
    plan: list[tuple[str, Callable[[], Check]]] = [
        ("config", lambda: checks.config_check(args.config)),
        ("database", lambda: checks.database_check(settings, timeout)),
        (_outgoing_name(settings), lambda: probes.outgoing_check(settings, timeout)),
        ("imap", lambda: probes.imap_check(settings, timeout)),
        ("base_url", lambda: probes.base_url_check(settings, timeout)),
        ("addresses", lambda: checks.addresses_check(settings)),
    ]
    secrets = checks.secrets_of(settings)
    failed = False
    for name, check in plan:
        result = _bounded(name, check, 2 * timeout + GRACE_SECONDS)
        print(checks.redact(result.line(), secrets), flush=True)
        failed = failed or result.failed
    return EX_FAILED if failed else EX_OK


def _outgoing_name(settings: Settings) -> str:
    return "relay" if settings.outgoing.transport == "smtp" else "maildir"


def _bounded(name: str, check: Callable[[], Check], limit: float) -> Check:
    """The check's result, or a FAIL line if it has not answered within ``limit``
    seconds: it runs in a daemon thread, which the process does not wait for."""
    from mailbot.service.checks import FAIL, Check

    results: list[Check] = []

    def run() -> None:
        try:
            results.append(check())
        except Exception as exc:  # a check reports, it must never end the command
            results.append(Check(FAIL, name, f"unexpected {type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=run, name=f"check-{name}", daemon=True)
    thread.start()
    thread.join(limit)
    if results:
        return results[0]
    return Check(FAIL, name, f"no answer within {limit:g} s")


def positive_seconds(text: str) -> float:
    """``--timeout``'s type: a number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds above 0: {text!r}")
    return seconds
