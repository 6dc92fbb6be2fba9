"""The read side of the service: what the CLI's listings and ``--json`` views show.

Each method runs one read-only transaction and returns values (domain objects
and the frozen dataclasses below), never rows, so that callers only format them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from mailbot.clock import Clock
from mailbot.config import Settings
from mailbot.domain import InboundStatus, OutboxStatus, Request, RequestStatus, Service
from mailbot.storage import mail_queries, queries
from mailbot.storage.engine import reading, transaction
from mailbot.storage.tables import EventRow, InboundRow, OutboxRow


@dataclass(frozen=True)
class LoggedEvent:
    """One line of a request's event log."""

    at: datetime
    kind: str
    actor: str | None
    channel: str | None
    detail: str


@dataclass(frozen=True)
class RequestReport:
    """A request with its event log, oldest event first."""

    request: Request
    events: tuple[LoggedEvent, ...]


@dataclass(frozen=True)
class InboundEntry:
    """A stored received mail, without its content."""

    id: int
    status: InboundStatus
    source: str
    message_id: str | None
    envelope_from: str | None
    received_at: datetime
    processed_at: datetime | None
    outcome: str


@dataclass(frozen=True)
class OutboxEntry:
    """A queued, dead or sent mail, without its content."""

    id: int
    status: OutboxStatus
    event: str
    to: str
    request: str | None
    message_id: str
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None


class Reporting:
    """Requests, services, the outbox and received mail, as operators look at them."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock

    def requests(
        self,
        status: RequestStatus | None = None,
        service: str | None = None,
        contact: str | None = None,
    ) -> list[Request]:
        """Requests newest first, filtered by status, service name and party's address."""
        with transaction(self.engine) as session:
            rows = queries.requests(session, status=status, service=service, contact=contact)
            return [queries.request(session, row) for row in rows]

    def request(self, request_id: str) -> RequestReport | None:
        """One request with its validations and event log; None if there is no such request."""
        with transaction(self.engine) as session:
            row = queries.request_row(session, request_id)
            if row is None:
                return None
            events = tuple(_logged(event) for event in queries.events(session, row.id))
            return RequestReport(queries.request(session, row), events)

    def service(self, name: str) -> Service | None:
        """A service with its current role holders; None if there is no such service."""
        with transaction(self.engine) as session:
            row = queries.service_row(session, name)
            return None if row is None else queries.service(session, row)

    def inbound(self, status: InboundStatus | None = None, limit: int = 50) -> list[InboundEntry]:
        """Stored received mail, oldest first, optionally of one status."""
        with transaction(self.engine) as session:
            return [_inbound(row) for row in mail_queries.inbound_overview(session, status, limit)]

    def newest_inbound_id(self) -> int:
        with reading(self.engine) as session:
            return mail_queries.newest_inbound_id(session)

    def inbound_counts(self) -> dict[InboundStatus, int]:
        """Stored messages by status; ``received`` is the backlog not yet acted on."""
        with transaction(self.engine) as session:
            counts = mail_queries.inbound_counts(session)
        return {InboundStatus(status): count for status, count in counts.items()}

    def outbox(self, sent_limit: int = 20) -> list[OutboxEntry]:
        """Mail not yet sent (queued, being sent, dead), then the ``sent_limit`` latest sent."""
        with transaction(self.engine) as session:
            return [_outbox(row) for row in mail_queries.outbox_overview(session, sent_limit)]


def _logged(row: EventRow) -> LoggedEvent:
    return LoggedEvent(row.at, row.kind, row.actor_email, row.channel, row.detail)


def _inbound(row: InboundRow) -> InboundEntry:
    return InboundEntry(
        id=row.id or 0,
        status=InboundStatus(row.status),
        source=row.source,
        message_id=row.message_id,
        envelope_from=row.envelope_from,
        received_at=row.received_at,
        processed_at=row.processed_at,
        outcome=row.outcome,
    )


def _outbox(row: OutboxRow) -> OutboxEntry:
    return OutboxEntry(
        id=row.id or 0,
        status=OutboxStatus(row.status),
        event=row.event,
        to=row.to_email,
        request=row.request_id,
        message_id=row.message_id,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
        last_error=row.last_error,
    )
