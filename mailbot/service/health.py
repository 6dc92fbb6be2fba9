"""Whether mail can be taken now: the database answers, and the disks that hold
the SQLite database and the outgoing Maildir have room and can be written.

SMTP answers 451 when a message cannot be stored, so nothing is lost when
these fail; the health check lets a load balancer or a monitor see it first.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailbot.config import Settings


def problem(engine: Engine, settings: Settings) -> str | None:
    """The first reason mail cannot be taken, or None when it can."""
    margin = settings.database.min_free_bytes
    if margin is None:
        margin = 2 * settings.smtp.max_message_bytes
    for path in _disk_paths(settings):
        if found := disk_problem(path, margin):
            return found
    return _database_problem(engine)


def _disk_paths(settings: Settings) -> list[Path]:
    paths = []
    url = sa.make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        paths.append(Path(url.database).parent)
    if settings.outgoing.transport == "maildir":
        paths.append(settings.outgoing.maildir)
    return paths


def disk_problem(path: Path, margin: int) -> str | None:
    """Why files cannot be written under ``path`` (or where it will be created)."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    try:
        stats = os.statvfs(existing)
    except OSError as exc:
        return f"{existing}: {exc.strerror}"
    free = stats.f_bavail * stats.f_frsize
    if free < margin:
        return f"disk almost full at {existing}: {free} bytes free, {margin} needed"
    return None


def _database_problem(engine: Engine) -> str | None:
    """A ``SELECT 1`` on a raw pooled connection: the SQLite engine opens every
    SQLAlchemy transaction with ``BEGIN IMMEDIATE``, and a probe must not take
    the write lock."""
    try:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            cursor.close()
        finally:
            connection.close()
    except Exception as exc:  # any failure means "not healthy"
        return f"database unavailable: {type(exc).__name__}"
    return None
