"""Connection accounting for the listeners, and the file descriptors they may use.

One client that opens thousands of connections and never finishes a request
(slowloris) would otherwise take every file descriptor of the process, and
then both listeners, the database and the outgoing mail freeze together. So
each listener counts its connections, in total and per client address. At a
cap, the connection that has waited longest without anything in flight is
closed to make room: the slow ones go, and a real visitor still gets in while
thousands of them keep coming. Only when every connection is busy is the
newcomer refused.

The caps of both listeners are fitted at start into the open-file limit,
less a reserve for the database, IMAP, outgoing SMTP and the logs, so that
neither listener can starve the other or the rest of the process.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

RESERVED_DESCRIPTORS = 128
"""Kept for everything but the listeners: database pool, IMAP, SMTP out, logs."""
ACCEPT_BACKLOG = 100
"""Each listener's listen() backlog, which is also how many connections asyncio
accepts in one go before any is counted: room for twice as many (a batch
accepted, the one before still closing) is kept per listener beyond its cap."""


class Tracked(Protocol):
    """A connection as its listener's accounting sees it."""

    @property
    def peer_address(self) -> str:
        """The client's IP address."""

    def waiting_since(self) -> float | None:
        """When it started waiting for a request with nothing in flight; None while busy."""

    def has_served(self) -> bool:
        """Whether it completed a request (or a message) already."""

    def evict(self) -> None:
        """Close it to make room for a newcomer."""


class ConnectionLimiter:
    """Caps the open connections of one listener, in total and per client address."""

    def __init__(self, name: str, max_total: int, max_per_client: int) -> None:
        self.name = name
        self.max_total = max_total
        self.max_per_client = min(max_per_client, max_total)
        self.open: dict[Tracked, None] = {}
        """Every admitted connection, oldest first."""
        self.by_client: dict[str, dict[Tracked, None]] = {}

    def admit(self, connection: Tracked) -> bool:
        """Count a new connection in, making room if needed; False: refuse it."""
        mine = self.by_client.get(connection.peer_address, {})
        if len(mine) >= self.max_per_client and not self._evict_from(mine):
            log.warning("%s: refused a connection, its client is at its cap", self.name)
            return False
        if len(self.open) >= self.max_total and not self._evict_from(self.open):
            log.warning("%s: refused a connection, every connection is busy", self.name)
            return False
        self.open[connection] = None
        self.by_client.setdefault(connection.peer_address, {})[connection] = None
        return True

    def release(self, connection: Tracked) -> None:
        """Count a closed connection out (again is harmless)."""
        self.open.pop(connection, None)
        mine = self.by_client.get(connection.peer_address)
        if mine is not None:
            mine.pop(connection, None)
            if not mine:
                del self.by_client[connection.peer_address]

    def _evict_from(self, candidates: dict[Tracked, None]) -> bool:
        """Close the oldest waiting connection, one that never served first."""
        victim = min(
            (c for c in candidates if c.waiting_since() is not None),
            key=lambda c: (c.has_served(), c.waiting_since()),
            default=None,
        )
        if victim is None:
            return False
        log.warning("%s: at a connection cap, closed the oldest waiting one", self.name)
        self.release(victim)
        victim.evict()
        return True


@dataclass(frozen=True)
class ListenerCaps:
    """Connection caps of both listeners, fitted into the descriptor budget."""

    smtp: int
    web: int


def raise_descriptor_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit above %d: %s", soft, exc)
    return int(soft)


def fit_caps(smtp: int, web: int, descriptors: int) -> ListenerCaps:
    """Both listeners' caps, shrunk in proportion if together they exceed the budget."""
    budget = max(descriptors - RESERVED_DESCRIPTORS - 2 * 2 * ACCEPT_BACKLOG, 2)
    if smtp + web <= budget:
        return ListenerCaps(smtp, web)
    fitted_smtp = max(1, smtp * budget // (smtp + web))
    fitted = ListenerCaps(fitted_smtp, max(1, budget - fitted_smtp))
    log.warning(
        "open-file limit %d: connection caps lowered to smtp %d, web %d "
        "(raise LimitNOFILE to keep the configured ones)",
        descriptors,
        fitted.smtp,
        fitted.web,
    )
    return fitted
