"""uvicorn's h11 protocol with the deadlines and caps uvicorn lacks.

uvicorn closes an idle keep-alive connection, but waits for ever on a
connection that has sent part of a request line or headers, and on a body
that trickles in: a few thousand such connections hold every file descriptor
of the process. Here, a request's headers must be in within the header
timeout (counted from the connection, or from the previous response) and its
body within the body timeout; past either, the connection is closed. Every
connection is counted by the listener's ConnectionLimiter, which closes the
oldest waiting ones when it is full (see ``connections``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mailbot.adapters.connections import ConnectionLimiter
from mailbot.adapters.web.scrape import KeepPeer

BUSY_TEXT = b"Too many connections, try again soon"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 5\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BUSY_TEXT), BUSY_TEXT)
)
"""Written straight to a refused connection: uvicorn never sees it."""


@dataclass(frozen=True)
class WebLimits:
    limiter: ConnectionLimiter
    header_timeout: float
    body_timeout: float


def limited_protocol(limits: WebLimits) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to one listener's limits."""

    class Bound(LimitedH11Protocol):
        pass

    Bound.limits = limits
    return Bound


class LimitedH11Protocol(H11Protocol):
    limits: WebLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = KeepPeer(self.app)  # the socket's peer, before any proxy header
        self.deadline: asyncio.TimerHandle | None = None
        self.phase: str | None = None
        """``headers`` while waiting for a request, ``body`` while it arrives, None otherwise."""
        self.phase_started = 0.0
        self.served = 0
        self.admitted = False

    # The connection as ConnectionLimiter sees it (connections.Tracked).
    @property
    def peer_address(self) -> str:
        return self.client[0] if self.client else "?"

    def waiting_since(self) -> float | None:
        return self.phase_started if self.phase == "headers" else None

    def has_served(self) -> bool:
        return self.served > 0

    def evict(self) -> None:
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()
        self.admitted = self.limits.limiter.admit(self)
        if not self.admitted:
            transport.write(BUSY_RESPONSE)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_phase(None)
        self.limits.limiter.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        self.served += 1
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """Start the deadline of the phase the connection has just entered."""
        state = self.conn.their_state
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self._set_phase("headers")
        elif state is h11.SEND_BODY:
            self._set_phase("body")
        else:
            self._set_phase(None)

    def _set_phase(self, phase: str | None) -> None:
        if phase == self.phase:
            return
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.phase = phase
        self.phase_started = self.loop.time()
        if phase is not None and not self.transport.is_closing():
            seconds = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
            self.deadline = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        """Too slow: close; an application waiting for the body sees a disconnect."""
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()
