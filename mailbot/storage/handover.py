"""A commit with one step taken right behind it, for the outbox's commit point.

The outbox marks a mail sent in a commit, then writes the final dot that makes
the relay take it (see mailbot.outgoing.outbox). A process killed after the
commit has become irrevocable and before the dot is written loses that mail,
so the time between the two is what this module keeps short. A commit
becomes irrevocable for a killed client earlier than the client learns of it:

- on PostgreSQL, as soon as the ``COMMIT`` message is on its way, since the
  server commits what it received whether or not the client lives to read
  the answer. A plain commit would then wait a round trip, the server's
  flush to disk and two processes' turns on a busy machine before the dot.
  Here the ``COMMIT`` is written, the step is taken at once, and only then is
  the server's answer read;
- on SQLite, as soon as the commit's frames are written to the write-ahead
  log, before SQLite syncs them to disk. The commit is made without that
  sync (``synchronous = NORMAL`` for its transaction): the step follows the
  write without waiting for the disk. The next synced commit of the database
  makes it durable; a power cut before then may undo it (the mail is then
  sent again), a killed process cannot. The transaction is opened with
  ``writing(engine, synced=False)`` for that.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa


class CommitFailed(Exception):
    """The server refused or lost a commit whose step was already taken."""


def commit_then(connection: sa.Connection, step: Callable[[], None]) -> None:
    """Commit the connection's transaction and take ``step`` right behind it.

    ``step`` is taken only once the commit is under way and cannot be called
    back by a process kill. Should ``step`` raise, the commit still completes
    and its error is the one raised. Should the commit fail after ``step`` was
    taken (PostgreSQL lost mid-commit), ``CommitFailed`` is raised. The
    transaction's own end is then a no-op: nothing is left open.
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("COMMIT")
        step()
        return
    _commit_pipelined(connection.connection.driver_connection, step)


def _commit_pipelined(driver: Any, step: Callable[[], None]) -> None:
    """``COMMIT`` written to the server, ``step`` taken, then the answer read
    (psycopg's libpq wrapper, used as its documentation describes)."""
    from psycopg import pq

    pgconn = driver.pgconn
    pgconn.send_query(b"COMMIT")
    while pgconn.flush():  # a few bytes: all but always written at once
        select.select([pgconn.socket], [pgconn.socket], [])
        pgconn.consume_input()
    try:
        step()
    finally:
        result = _last_result(pgconn)
    if result is None or result.status != pq.ExecStatus.COMMAND_OK:
        message = result.error_message.decode("utf-8", "replace") if result else "no answer"
        raise CommitFailed(f"COMMIT failed: {message.strip()}")


def _last_result(pgconn: Any) -> Any:
    """Every result of the command sent, the last one returned (None if the
    connection was lost before any came)."""
    last = None
    try:
        while True:
            while pgconn.is_busy():
                select.select([pgconn.socket], [], [])
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                return last
            last = result
    except Exception:  # the connection is gone: the pool finds it so at its end
        return last
