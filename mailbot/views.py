"""Read-only views of requests and services: for templates and for the CLI's JSON."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from mailbot.domain import Party, Request, RoleChange, Validation
from mailbot.storage import queries
from mailbot.storage.tables import InboundRow, OutboxRow, RequestRow, ServiceRow


@dataclass(frozen=True)
class RequestView:
    """What templates see of a request (DESIGN.md's vocabulary, flat)."""

    id: str
    service: str
    kind: str
    status: str
    requester: Party
    changes: tuple[RoleChange, ...]
    validations: tuple[Validation, ...]
    awaited: tuple[Party, ...]
    informed: tuple[Party, ...]
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None

    @classmethod
    def of(cls, request: Request) -> RequestView:
        return cls(
            id=request.id,
            service=request.service.name,
            kind=request.service.kind,
            status=request.status.value,
            requester=request.requester,
            changes=request.changes,
            validations=request.validations,
            awaited=tuple(v.contact for v in request.awaited),
            informed=request.informed,
            created_at=request.created_at,
            expires_at=request.expires_at,
            closed_at=request.closed_at,
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def request_json(session: Session, row: RequestRow, *, events: bool = True) -> dict[str, Any]:
    request = queries.request(session, row)
    data: dict[str, Any] = {
        "id": request.id,
        "service": request.service.name,
        "status": request.status.value,
        "requester": request.requester.email,
        "changes": [
            {"role": c.role.value, "from": c.outgoing.email, "to": c.incoming.email}
            for c in request.changes
        ],
        "validations": [
            {
                "email": v.contact.email,
                "side": v.side.value,
                "status": v.status.value,
                "channel": v.channel.value if v.channel else None,
                "decided_at": _iso(v.decided_at),
                "delivery": v.delivery.value,
                "actor": v.actor,
                "held": v.held.value if v.held else None,
                "held_until": _iso(v.held_until),
            }
            for v in request.validations
        ],
        "created_at": _iso(request.created_at),
        "expires_at": _iso(request.expires_at),
        "closed_at": _iso(request.closed_at),
    }
    if events:
        data["events"] = [
            {
                "at": _iso(e.at),
                "kind": e.kind,
                "actor": e.actor_email,
                "channel": e.channel,
                "detail": e.detail,
            }
            for e in queries.events(session, row.id)
        ]
    return data


def inbound_json(row: InboundRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "source": row.source,
        "message_id": row.message_id,
        "envelope_from": row.envelope_from,
        "received_at": row.received_at.isoformat(),
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "outcome": row.outcome,
    }


def outbox_json(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "event": row.event,
        "to": row.to_email,
        "request": row.request_id,
        "message_id": row.message_id,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at),
        "sent_at": _iso(row.sent_at),
        "last_error": row.last_error,
    }


def service_json(session: Session, row: ServiceRow) -> dict[str, Any]:
    service = queries.service(session, row)
    return {
        "name": service.name,
        "kind": service.kind,
        "in_good_standing": service.in_good_standing,
        **{role.value: holder.email for role, holder in service.holders.items()},
        "contacts": {
            role.value: {"handle": holder.handle, "email": holder.email, "name": holder.name}
            for role, holder in service.holders.items()
        },
    }
