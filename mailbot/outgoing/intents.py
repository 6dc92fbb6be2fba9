"""A queued mail's intent: everything rendering needs, as JSON in its outbox row.

Mail is queued as an intent and rendered when a sender first claims it, so that
the transaction that decides to send a mail (a sweep over a thousand requests,
a reply being acted on) does not also run the templates and the MIME composer.
The intent keeps what the templates read (the recipient, the request as it
stood, the mail's own values) and what the headers need beyond the outbox
row's columns (threading, Reply-To, the error code); the Message-ID and the
Date are the row's, fixed at queueing.

Values are written with a tag where JSON has no type of their own
(timestamps, parties, requests) and read back as the same domain values, so
that the rendered mail is the one rendering at queue time would have made.
A value of another type cannot be an intent (``NotEncodable``): such a mail
is rendered at once, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from mailbot.domain import (
    Channel,
    Decision,
    Delivery,
    Party,
    Request,
    RequestStatus,
    Role,
    RoleChange,
    Service,
    Side,
    Validation,
    ValidationStatus,
)

VERSION = 1


class NotEncodable(Exception):
    """A value an intent cannot carry: the mail is rendered when queued instead."""


@dataclass(frozen=True)
class Intent:
    """A mail to render: its recipient, its request, its template values, its threading."""

    to: Party
    request: Request | None
    context: dict[str, Any]
    reply_to: str | None = None
    error_code: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


def dumps(intent: Intent, request_text: str | None = None) -> str:
    """The intent as stored; ``request_text`` is ``request_json(intent.request)``
    when the caller made it already (several mails about one request share it)."""
    data = {
        "v": VERSION,
        "to": _party(intent.to),
        "context": {key: _value(value) for key, value in intent.context.items()},
        "reply_to": intent.reply_to,
        "error_code": intent.error_code,
        "in_reply_to": intent.in_reply_to,
        "references": list(intent.references),
    }
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if request_text is None:
        request_text = request_json(intent.request) if intent.request else "null"
    return f'{text[:-1]},"request":{request_text}}}'


def request_json(request: Request) -> str:
    """A request as an intent carries it, as JSON text."""
    return json.dumps(request_data(request), separators=(",", ":"), ensure_ascii=False)


def loads(text: str) -> Intent:
    data = json.loads(text)
    if data.get("v") != VERSION:
        raise ValueError(f"unknown mail intent version {data.get('v')!r}")
    return Intent(
        to=_read_party(data["to"]),
        request=_read_request(data["request"]) if data["request"] else None,
        context={key: _read(value) for key, value in data["context"].items()},
        reply_to=data["reply_to"],
        error_code=data["error_code"],
        in_reply_to=data["in_reply_to"],
        references=tuple(data["references"]),
    )


# -- writing ---------------------------------------------------------------------


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, Party):
        return {"$party": _party(value)}
    if isinstance(value, Request):
        return {"$request": request_data(value)}
    if isinstance(value, list | tuple):
        return {"$list": [_value(item) for item in value]}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"$dict": {key: _value(item) for key, item in value.items()}}
    raise NotEncodable(type(value).__name__)


@lru_cache(maxsize=4096)
def _party(party: Party) -> dict[str, Any]:
    """A party as JSON values; the same few parties recur in every mail of a chunk.
    (Shared between callers: only ever read.)"""
    return {
        "email": party.email,
        "name": party.name,
        "language": party.language,
        "in_good_standing": party.in_good_standing,
        "id": party.id,
        "handle": party.handle,
    }


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def request_data(request: Request) -> dict[str, Any]:
    """A request as an intent carries it: every field of the domain value."""
    service = request.service
    return {
        "id": request.id,
        "service": {
            "name": service.name,
            "kind": service.kind,
            "in_good_standing": service.in_good_standing,
            "holders": [[role.value, _party(p)] for role, p in service.holders.items()],
        },
        "requester": _party(request.requester),
        "changes": [
            [c.role.value, _party(c.outgoing), _party(c.incoming)] for c in request.changes
        ],
        "validations": [
            {
                "contact": _party(v.contact),
                "side": v.side.value,
                "status": v.status.value,
                "channel": v.channel.value if v.channel else None,
                "decided_at": _when(v.decided_at),
                "actor": v.actor,
                "reminders_sent": v.reminders_sent,
                "delivery": v.delivery.value,
                "held": v.held.value if v.held else None,
                "held_until": _when(v.held_until),
            }
            for v in request.validations
        ],
        "created_at": _when(request.created_at),
        "expires_at": _when(request.expires_at),
        "status": request.status.value,
        "closed_at": _when(request.closed_at),
    }


# -- reading ---------------------------------------------------------------------


def _read(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    if tag == "$dt":
        return datetime.fromisoformat(inner)
    if tag == "$party":
        return _read_party(inner)
    if tag == "$request":
        return _read_request(inner)
    if tag == "$list":
        return [_read(item) for item in inner]
    if tag == "$dict":
        return {key: _read(item) for key, item in inner.items()}
    raise ValueError(f"unknown value in a mail intent: {tag!r}")


def _read_party(data: dict[str, Any]) -> Party:
    return Party(**data)


def _read_when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _read_request(data: dict[str, Any]) -> Request:
    service = data["service"]
    created_at, expires_at = _read_when(data["created_at"]), _read_when(data["expires_at"])
    assert created_at is not None
    assert expires_at is not None
    return Request(
        id=data["id"],
        service=Service(
            name=service["name"],
            holders={Role(role): _read_party(p) for role, p in service["holders"]},
            in_good_standing=service["in_good_standing"],
            kind=service["kind"],
        ),
        requester=_read_party(data["requester"]),
        changes=tuple(
            RoleChange(Role(role), _read_party(outgoing), _read_party(incoming))
            for role, outgoing, incoming in data["changes"]
        ),
        validations=tuple(_read_validation(v) for v in data["validations"]),
        created_at=created_at,
        expires_at=expires_at,
        status=RequestStatus(data["status"]),
        closed_at=_read_when(data["closed_at"]),
    )


def _read_validation(data: dict[str, Any]) -> Validation:
    return Validation(
        contact=_read_party(data["contact"]),
        side=Side(data["side"]),
        status=ValidationStatus(data["status"]),
        channel=Channel(data["channel"]) if data["channel"] else None,
        decided_at=_read_when(data["decided_at"]),
        actor=data["actor"],
        reminders_sent=data["reminders_sent"],
        delivery=Delivery(data["delivery"]),
        held=Decision(data["held"]) if data["held"] else None,
        held_until=_read_when(data["held_until"]),
    )
