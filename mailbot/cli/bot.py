"""The service as one command uses it: opened on a database at the current schema,
closed when the command ends."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mailbot.adapters import outgoing_transport
from mailbot.clock import Clock
from mailbot.config import Settings
from mailbot.errors import StorageUnavailable
from mailbot.service import Mailbot, database

log = logging.getLogger(__name__)


@contextmanager
def open_bot(settings: Settings, clock: Clock | None = None) -> Iterator[Mailbot]:
    """The service on a database at the current schema, closed when the command ends."""
    bot = Mailbot.from_settings(settings, clock)
    try:
        database.check_schema(bot.engine)
        yield bot
    finally:
        bot.engine.dispose()


def flush_quietly(bot: Mailbot, settings: Settings) -> None:
    """Send what a command just queued; what cannot go now stays queued for later."""
    try:
        bot.flush_outbox(outgoing_transport(settings))
    except (database.DatabaseDown, StorageUnavailable, OSError) as exc:
        log.warning("mail stays queued: %s", exc)
