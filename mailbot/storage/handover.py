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
  log, before SQLite syncs them to disk or checkpoints the log. The commit
  is made without either (``synchronous = NORMAL`` and no automatic
  checkpoint, for its transaction): the step follows the write without
  waiting for the disk. The next synced commit of the database
  makes it durable; a power cut before then may undo it (the mail is then
  sent again), a killed process cannot. The transaction is opened with
  ``writing(engine, synced=False)`` for that.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "sqlite":
        driver.execute("COMMIT")  # the driver's own: no statement machinery before the step
        step()
        return
    _commit_pipelined(driver, step)


def _commit_pipelined(driver: Any, step: Callable[[], None]) -> None:
    """``COMMIT`` written to the server, ``step`` taken, then the answer read
    (psycopg's libpq wrapper, used as its documentation describes)."""
    from psycopg import pq

    pgconn = driver.pgconn
    # The writes start on a fresh turn: the CPU given up (and the GIL, which
    # this releases) now, rather than taken away between the two writes.
    os.sched_yield()
    try:
        with _corked(pgconn.socket):
            pgconn.send_query(b"COMMIT")
            while pgconn.flush():  # a few bytes: all but always written at once
                select.select([pgconn.socket], [pgconn.socket], [])
                pgconn.consume_input()
            step()
    finally:
        result = _last_result(pgconn)
    if result is None or result.status != pq.ExecStatus.COMMAND_OK:
        message = result.error_message.decode("utf-8", "replace") if result else "no answer"
        raise CommitFailed(f"COMMIT failed: {message.strip()}")


@contextmanager
def _corked(descriptor: int) -> Iterator[None]:
    """Over TCP, the ``COMMIT`` is held in the kernel until the step is taken:
    sent at once, it would wake the server's process, which on a busy machine
    can take the CPU from the sender before its next write. A process killed
    while it is held still sends it, as the kernel closes the connection."""
    connection = socket.socket(fileno=os.dup(descriptor))
    try:
        cork = getattr(socket, "TCP_CORK", None)  # Linux
        if connection.family not in (socket.AF_INET, socket.AF_INET6):
            cork = None  # a Unix socket: nothing to hold it with
        if cork is not None:
            connection.setsockopt(socket.IPPROTO_TCP, cork, 1)
        try:
            yield
        finally:
            if cork is not None:
                connection.setsockopt(socket.IPPROTO_TCP, cork, 0)
    finally:
        connection.close()


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
