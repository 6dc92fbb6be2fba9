"""Queries on the rate-limit table: attempts counted per limit and key, in a window."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from mailbot.storage.tables import RateHitRow


def hits_since(
    session: Session, kind: str, key: str, since: datetime
) -> tuple[int, datetime | None]:
    """How many attempts ``key`` made against the limit ``kind`` after ``since``,
    and when the oldest of them was (index: kind, key, at)."""
    query = select(func.count(), func.min(RateHitRow.at)).where(
        RateHitRow.kind == kind, RateHitRow.key == key, col(RateHitRow.at) > since
    )
    count, oldest = session.exec(query).one()
    return int(count), oldest


def add_hit(session: Session, kind: str, key: str, at: datetime) -> None:
    session.add(RateHitRow(kind=kind, key=key, at=at))


def forget_hits(session: Session, kind: str, before: datetime) -> int:
    """Delete the attempts of ``kind`` that no window looks at any more."""
    statement = delete(RateHitRow).where(col(RateHitRow.kind) == kind, col(RateHitRow.at) <= before)
    return int(session.exec(statement).rowcount or 0)
