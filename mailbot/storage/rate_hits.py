"""Queries on the rate-limit table: attempts counted per limit and key, in a window."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, text
from sqlmodel import Session, col, select

from mailbot.storage.tables import RateHitRow


def hits_since(
    session: Session, kind: str, key: str, since: datetime
) -> tuple[int, datetime | None]:
    """How many attempts ``key`` made against the limit ``kind`` after ``since``,
    and when the oldest of them was (index: kind, key, at). The key is locked
    until the caller's commit (see ``_serialise``)."""
    _serialise(session, f"{kind}:{key}")
    query = select(func.count(), func.min(RateHitRow.at)).where(
        RateHitRow.kind == kind, RateHitRow.key == key, col(RateHitRow.at) > since
    )
    count, oldest = session.exec(query).one()
    return int(count), oldest


def _serialise(session: Session, name: str) -> None:
    """On PostgreSQL, a transaction lock on ``name``: two instances (or workers)
    counting one key at once would otherwise both see room for one more attempt
    and both go on, past the limit. SQLite has one writer at a time already."""
    if session.get_bind().dialect.name == "postgresql":
        statement = text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))")
        session.connection().execute(statement, {"name": name})


def add_hit(session: Session, kind: str, key: str, at: datetime) -> None:
    session.add(RateHitRow(kind=kind, key=key, at=at))


def forget_hits(session: Session, kind: str, before: datetime) -> int:
    """Delete the attempts of ``kind`` that no window looks at any more."""
    statement = delete(RateHitRow).where(col(RateHitRow.kind) == kind, col(RateHitRow.at) <= before)
    return int(session.exec(statement).rowcount or 0)
