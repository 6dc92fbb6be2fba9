"""What the database holds, counted for ``/metrics``: cheap aggregates, read at
each scrape so that every process and instance on the database reports the same.

One ``GROUP BY status`` per table, each answered from an index that starts with
``status``, and the oldest unsent mail found through the same index among the
rows waiting (few, unless the relay is down). The reads run in a read-only
transaction, which on SQLite does not take the write lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped
from sqlmodel import col

from mailbot.domain import OutboxStatus
from mailbot.storage.engine import READ_ONLY
from mailbot.storage.tables import InboundRow, OutboxRow, RequestRow

WAITING = (OutboxStatus.QUEUED, OutboxStatus.SENDING)
"""Outbox rows not sent yet: queued, or claimed by a sender right now."""


@dataclass(frozen=True)
class Gauges:
    requests: dict[str, int] = field(default_factory=dict)
    """Change requests by status."""
    inbound: dict[str, int] = field(default_factory=dict)
    """Stored messages by status."""
    outbox: dict[str, int] = field(default_factory=dict)
    """Outgoing mails by status."""
    oldest_waiting: datetime | None = None
    """When the oldest mail not sent yet was queued (None: nothing waits)."""


def read(engine: Engine) -> Gauges:
    """The counts, in one short read-only transaction."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
        return Gauges(
            requests=_by_status(connection, col(RequestRow.status)),
            inbound=_by_status(connection, col(InboundRow.status)),
            outbox=_by_status(connection, col(OutboxRow.status)),
            oldest_waiting=_oldest_waiting(connection),
        )


def _by_status(connection: Connection, status: Mapped[str]) -> dict[str, int]:
    query = select(status, func.count()).group_by(status)
    return {str(value): int(count) for value, count in connection.execute(query).all()}


def _oldest_waiting(connection: Connection) -> datetime | None:
    """The time in queue counts from ``queued_at`` (``created_at`` for older rows)."""
    began = func.coalesce(col(OutboxRow.queued_at), col(OutboxRow.created_at))
    query = select(func.min(began)).where(col(OutboxRow.status).in_(WAITING))
    oldest = connection.execute(query).scalar()
    return oldest if isinstance(oldest, datetime) else None
