"""Turns: one process at a time among all those sharing the database.

An IMAP mailbox must be read by one reader at a time: two readers fetch the
same messages and move them at once, and an IMAP server may copy a message
into the target folder once per mover. Instances on one PostgreSQL database
take turns through a session-level advisory lock, held on a connection of
its own for as long as the turn lasts. The lock goes with its session, so a
reader that dies (or whose machine vanishes, found by the server's TCP
keepalives within about a minute) leaves the turn to the next.

SQLite is one machine's database, served by one instance: the turn is always
this process's.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailbot.errors import StorageUnavailable, in_one_line

log = logging.getLogger(__name__)

_TRY = sa.text("SELECT pg_try_advisory_lock(hashtextextended(:name, 1))")


class Turn:
    """This process's turn at what ``name`` stands for."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.connection: Connection | None = None

    def take(self) -> bool:
        """Whether the turn is ours, now: taken if free, kept if already held.

        A lost connection has lost the lock with it: the turn is then taken
        again, if no other process has taken it meanwhile. Raises
        StorageUnavailable when the database cannot be reached to ask.
        """
        if self.engine.dialect.name != "postgresql":
            return True
        if self.connection is not None and self._alive(self.connection):
            return True
        self.release()
        try:
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            taken = bool(connection.execute(_TRY, {"name": self.name}).scalar())
        except sa.exc.DBAPIError as exc:
            raise StorageUnavailable(in_one_line(exc.orig or exc)) from None
        if taken:
            self.connection = connection
        else:
            connection.close()
        return taken

    def release(self) -> None:
        """Give the turn up (the lock goes with the connection)."""
        if self.connection is not None:
            connection, self.connection = self.connection, None
            try:
                connection.invalidate()  # not back to the pool: that would keep the lock
                connection.close()
            except sa.exc.SQLAlchemyError:
                log.debug("turn's connection already gone")

    @staticmethod
    def _alive(connection: Connection) -> bool:
        try:
            connection.execute(sa.text("SELECT 1"))
        except sa.exc.DBAPIError:
            return False
        return True
