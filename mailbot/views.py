"""Read-only views of requests and services: for templates and for the CLI's JSON.

The JSON shapes are pinned by DESIGN.md; the values come from the service's
read side (``mailbot.service.reporting``), and nothing here reads the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailbot.domain import Party, Request, RoleChange, Service, Validation

if TYPE_CHECKING:  # the service imports this module: no import back at run time
    from mailbot.service.reporting import InboundEntry, LoggedEvent, OutboxEntry, RequestReport


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


def request_json(request: Request, events: Sequence[LoggedEvent] | None = None) -> dict[str, Any]:
    """A request as ``requests list --json`` shows it; with ``events``, as ``requests show``."""
    data: dict[str, Any] = {
        "id": request.id,
        "service": request.service.name,
        "status": request.status.value,
        "requester": request.requester.email,
        "changes": [
            {"role": c.role.value, "from": c.outgoing.email, "to": c.incoming.email}
            for c in request.changes
        ],
        "validations": [_validation_json(v) for v in request.validations],
        "created_at": _iso(request.created_at),
        "expires_at": _iso(request.expires_at),
        "closed_at": _iso(request.closed_at),
    }
    if events is not None:
        data["events"] = [
            {
                "at": _iso(e.at),
                "kind": e.kind,
                "actor": e.actor,
                "channel": e.channel,
                "detail": e.detail,
            }
            for e in events
        ]
    return data


def report_json(report: RequestReport) -> dict[str, Any]:
    """A request with its event log (``requests show --json``)."""
    return request_json(report.request, report.events)


def _validation_json(v: Validation) -> dict[str, Any]:
    return {
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


def inbound_json(entry: InboundEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "status": entry.status.value,
        "source": entry.source,
        "message_id": entry.message_id,
        "envelope_from": entry.envelope_from,
        "received_at": entry.received_at.isoformat(),
        "processed_at": _iso(entry.processed_at),
        "outcome": entry.outcome,
    }


def outbox_json(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "status": entry.status.value,
        "event": entry.event,
        "to": entry.to,
        "request": entry.request,
        "message_id": entry.message_id,
        "attempts": entry.attempts,
        "next_attempt_at": _iso(entry.next_attempt_at),
        "sent_at": _iso(entry.sent_at),
        "last_error": entry.last_error,
    }


def service_json(service: Service) -> dict[str, Any]:
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
