"""The vocabulary of DESIGN.md as plain values: roles, statuses, parties, requests.

Everything here is immutable data with no I/O, so that the workflow can be
tested with tables of (state, event) -> (state, effects).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    TECH = "tech"
    BILLING = "billing"


ROLE_WORDS: Mapping[str, Role] = {
    "admin": Role.ADMIN,
    "administrateur": Role.ADMIN,
    "administrator": Role.ADMIN,
    "tech": Role.TECH,
    "technical": Role.TECH,
    "technique": Role.TECH,
    "billing": Role.BILLING,
    "facturation": Role.BILLING,
}


class Side(StrEnum):
    CURRENT = "current"
    NEW = "new"


class RequestStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    REFUSED = "refused"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ValidationStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REFUSED = "refused"


class Decision(StrEnum):
    ACCEPT = "accept"
    REFUSE = "refuse"


class Channel(StrEnum):
    EMAIL = "email"
    WEB = "web"


class Delivery(StrEnum):
    """Whether a validation's mail reached its contact, as far as mailbot knows."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


class InboundStatus(StrEnum):
    """Where a stored received mail stands; ``received`` is the backlog not yet acted on."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class OutboxStatus(StrEnum):
    """Where a queued mail stands; ``sending`` is a claim held by one sender."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


@dataclass(frozen=True)
class Party:
    """A contact as the workflow sees it; ``id`` is None for an operator address."""

    email: str
    name: str = ""
    language: str = "en"
    in_good_standing: bool = True
    id: int | None = None
    handle: str | None = None

    def same_as(self, other: Party) -> bool:
        return self.email.lower() == other.email.lower()


@dataclass(frozen=True)
class Service:
    name: str
    holders: Mapping[Role, Party]
    in_good_standing: bool = True
    kind: str = "domain"

    @property
    def admin(self) -> Party:
        return self.holders[Role.ADMIN]


@dataclass(frozen=True)
class RoleChange:
    role: Role
    outgoing: Party
    incoming: Party


@dataclass(frozen=True)
class Validation:
    contact: Party
    side: Side
    status: ValidationStatus = ValidationStatus.PENDING
    channel: Channel | None = None
    decided_at: datetime | None = None
    actor: str | None = None
    """The address that carried the decision, when it is not the contact's own."""
    reminders_sent: int = 0
    delivery: Delivery = Delivery.QUEUED
    """Whether the token mail reached the contact's server (bounces mark it failed)."""
    held: Decision | None = None
    """A decision made on the link page, not yet applied: the contact may undo it."""
    held_until: datetime | None = None
    """When the held decision takes effect, unless undone or replaced before."""

    @property
    def pending(self) -> bool:
        return self.status is ValidationStatus.PENDING


@dataclass(frozen=True)
class Request:
    id: str
    service: Service
    requester: Party
    changes: tuple[RoleChange, ...]
    validations: tuple[Validation, ...]
    created_at: datetime
    expires_at: datetime
    status: RequestStatus = RequestStatus.PENDING
    closed_at: datetime | None = None

    @property
    def pending(self) -> bool:
        return self.status is RequestStatus.PENDING

    @property
    def awaited(self) -> tuple[Validation, ...]:
        return tuple(v for v in self.validations if v.pending)

    def validation_of(self, contact: Party) -> Validation | None:
        return next((v for v in self.validations if v.contact.same_as(contact)), None)

    @property
    def informed(self) -> tuple[Party, ...]:
        """Who is only told when the change takes effect (DESIGN.md §1).

        The outgoing holders and the admin, unless they validate anyway.
        """
        candidates = [change.outgoing for change in self.changes] + [self.service.admin]
        validators = [v.contact for v in self.validations]
        return unique_parties(p for p in candidates if not any(p.same_as(v) for v in validators))

    @property
    def parties(self) -> tuple[Party, ...]:
        """The requester and every validating contact, each once."""
        return unique_parties([self.requester, *(v.contact for v in self.validations)])


def unique_parties(parties: Iterable[Party]) -> tuple[Party, ...]:
    """Parties without repeats, by address, keeping the first occurrence."""
    seen: set[str] = set()
    kept = []
    for party in parties:
        key = party.email.lower()
        if key not in seen:
            seen.add(key)
            kept.append(party)
    return tuple(kept)
