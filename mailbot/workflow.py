"""The contact-change state machine, as pure functions.

Each transition takes the current state, the event and ``now`` and returns
the new state plus the effects the service layer must carry out in the same
transaction (mails to queue, role holders to apply). Nothing here touches a
database, a network, a template or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import NoReturn

from mailbot.domain import (
    Channel,
    Decision,
    Party,
    Request,
    RequestStatus,
    Role,
    RoleChange,
    Service,
    Side,
    Validation,
    ValidationStatus,
    unique_parties,
)
from mailbot.errors import (
    DuplicateRequest,
    NoChange,
    NotAuthorized,
    NotInGoodStanding,
    RequestClosed,
    TokenUsed,
)


@dataclass(frozen=True)
class AskToValidate:
    """Send this contact a personal token mail for the request.

    ``replace`` kills the contact's earlier tokens first (a resend); otherwise
    the new token works beside them.
    """

    contact: Party
    replace: bool = False


@dataclass(frozen=True)
class Remind:
    """Send this awaited contact their ``number``-th reminder, with a fresh token."""

    contact: Party
    number: int


@dataclass(frozen=True)
class Notify:
    """Send ``event`` mail about the request to each recipient."""

    event: str
    recipients: tuple[Party, ...]
    about: Mapping[str, Party] = field(default_factory=dict)
    """People the mail speaks of besides the request's, e.g. who cancelled it."""


@dataclass(frozen=True)
class ApplyHolders:
    """Make these contacts the service's role holders."""

    service: str
    holders: Mapping[Role, Party]


@dataclass(frozen=True)
class ConfirmHeld:
    """Tell the contact which decision is held and until when, with a fresh undo link."""

    contact: Party
    decision: Decision
    until: datetime


Effect = AskToValidate | Remind | Notify | ApplyHolders | ConfirmHeld


@dataclass(frozen=True)
class Transition:
    request: Request
    effects: tuple[Effect, ...]


def open_request(
    *,
    request_id: str,
    service: Service,
    requester: Party,
    requester_is_operator: bool,
    wanted: Mapping[Role, Party],
    pending_roles: frozenset[Role],
    now: datetime,
    ttl: timedelta,
) -> Transition:
    """Open a change request, or raise the error that explains why not."""
    authority = _authority(service, requester, requester_is_operator, wanted)
    changes = _changes(service, wanted)
    request = Request(
        id=request_id,
        service=service,
        requester=requester,
        changes=changes,
        validations=_validations(authority, changes),
        created_at=now,
        expires_at=now + ttl,
    )
    _check_standing(service, requester, requester_is_operator, request)
    if busy := sorted(set(wanted) & pending_roles):
        raise DuplicateRequest(
            "", service=service.name, roles=", ".join(role.value for role in busy)
        )
    effects: list[Effect] = [Notify("request-opened", (requester,))]
    effects += [AskToValidate(v.contact) for v in request.validations]
    return Transition(request, tuple(effects))


def decide(
    request: Request,
    *,
    contact: Party,
    decision: Decision,
    channel: Channel,
    now: datetime,
    actor: str | None = None,
) -> Transition:
    """Record one contact's acceptance or refusal, closing the request if it settles it.

    A decision held from the link page is replaced by this one: the contact
    has answered again, and the latest answer is the one that counts.
    """
    validation = _open_validation(request, contact)
    decided = replace(
        validation,
        status=ValidationStatus.ACCEPTED
        if decision is Decision.ACCEPT
        else ValidationStatus.REFUSED,
        channel=channel,
        decided_at=now,
        actor=actor if actor and actor.lower() != contact.email.lower() else None,
        held=None,
        held_until=None,
    )
    request = replace(
        request, validations=tuple(decided if v is validation else v for v in request.validations)
    )
    if decision is Decision.REFUSE:
        return _close(request, RequestStatus.REFUSED, now)
    if not request.awaited:
        return _close(request, RequestStatus.DONE, now)
    return Transition(request, (Notify("validation-recorded", (contact,)),))


def _open_validation(request: Request, contact: Party) -> Validation:
    """The contact's validation, if they may still answer it; else the error that says why."""
    validation = request.validation_of(contact)
    if validation is None:
        raise NotAuthorized("", request=request.id)
    if not validation.pending:
        raise TokenUsed("", request=request.id)
    if not request.pending:
        raise RequestClosed("", request=request.id, status=request.status.value)
    return validation


def _with_validation(request: Request, old: Validation, new: Validation) -> Request:
    return replace(request, validations=tuple(new if v is old else v for v in request.validations))


def hold(
    request: Request, *, contact: Party, decision: Decision, now: datetime, window: timedelta
) -> Transition:
    """Hold a decision made on the link page for ``window`` before it takes effect.

    Whoever (or whatever) pressed the button, the contact is told by mail what
    was chosen and can undo it until then; another answer replaces it.
    """
    validation = _open_validation(request, contact)
    if validation.held is not None:
        raise TokenUsed("", request=request.id)
    until = now + window
    held = replace(validation, held=decision, held_until=until)
    return Transition(
        _with_validation(request, validation, held), (ConfirmHeld(contact, decision, until),)
    )


def undo(request: Request, *, contact: Party) -> Transition:
    """Withdraw a held decision: the contact is awaited again, as if nothing was chosen."""
    validation = _open_validation(request, contact)
    if validation.held is None:
        raise TokenUsed("", request=request.id)
    released = replace(validation, held=None, held_until=None)
    return Transition(_with_validation(request, validation, released), ())


def apply_held(request: Request, *, contact: Party, now: datetime) -> Transition:
    """Apply the contact's held decision once its window has passed; nothing before."""
    validation = request.validation_of(contact)
    if (
        validation is None
        or validation.held is None
        or validation.held_until is None
        or now < validation.held_until
    ):
        return Transition(request, ())
    return decide(request, contact=contact, decision=validation.held, channel=Channel.WEB, now=now)


def _without_holds(request: Request) -> Request:
    """A closing request drops the decisions still held: there is nothing left to decide."""
    return replace(
        request,
        validations=tuple(
            replace(v, held=None, held_until=None) if v.held is not None else v
            for v in request.validations
        ),
    )


def _close(request: Request, status: RequestStatus, now: datetime) -> Transition:
    closed = replace(_without_holds(request), status=status, closed_at=now)
    if status is RequestStatus.DONE:
        holders = dict(request.service.holders)
        holders.update({change.role: change.incoming for change in request.changes})
        recipients = unique_parties([*request.parties, *request.informed])
        return Transition(
            closed,
            (
                ApplyHolders(request.service.name, holders),
                Notify("request-done", recipients),
            ),
        )
    return Transition(closed, (Notify(f"request-{status.value}", request.parties),))


def _authority(
    service: Service, requester: Party, is_operator: bool, wanted: Mapping[Role, Party]
) -> Party:
    """The contact whose authority the change rests on (DESIGN.md §1).

    The admin (for their own request or an operator's) may change any role;
    a tech or billing holder may only hand over the role they hold.
    """
    if is_operator or requester.same_as(service.admin):
        return service.admin
    held = {role for role, holder in service.holders.items() if holder.same_as(requester)}
    if wanted and Role.ADMIN not in wanted and set(wanted) <= held:
        return service.holders[next(iter(wanted))]
    raise NotAuthorized("", service=service.name)


def _changes(service: Service, wanted: Mapping[Role, Party]) -> tuple[RoleChange, ...]:
    for role, incoming in wanted.items():
        if service.holders[role].same_as(incoming):
            raise NoChange("", service=service.name, role=role.value, contact=incoming.email)
    return tuple(
        RoleChange(role, service.holders[role], incoming)
        for role, incoming in sorted(wanted.items(), key=lambda item: list(Role).index(item[0]))
    )


def _validations(authority: Party, changes: tuple[RoleChange, ...]) -> tuple[Validation, ...]:
    """The current side first, then each new holder once."""
    newcomers = unique_parties(c.incoming for c in changes if not c.incoming.same_as(authority))
    return (
        Validation(authority, Side.CURRENT),
        *(Validation(party, Side.NEW) for party in newcomers),
    )


def _check_standing(service: Service, by: Party, operator: bool, request: Request) -> None:
    """Refuse a request that involves a service or a contact not in good standing."""
    if not service.in_good_standing:
        _not_in_good_standing(service, "service", service.admin, by, operator, "")
    changes = request.changes
    validating = (v.contact for v in request.validations)
    for party in unique_parties([*validating, *(c.incoming for c in changes)]):
        if not party.in_good_standing:
            roles = ", ".join(c.role.value for c in changes if c.incoming.same_as(party))
            _not_in_good_standing(service, "contact", party, by, operator, roles)


def _not_in_good_standing(
    service: Service, standing: str, concerned: Party, requester: Party, operator: bool, roles: str
) -> NoReturn:
    """Raise the refusal, saying who may read its reason.

    Unpaid invoices are the business of the account they belong to (the
    service's, which is its admin's): ``reader`` is ``self`` when that is the
    requester's own, ``operator`` for the registrar's staff, else ``other``,
    and then the requester only reads that ``contact`` cannot take part now,
    while ``contact`` is told why in a mail of their own.
    """
    reader = "self" if concerned.same_as(requester) else "operator" if operator else "other"
    raise NotInGoodStanding(
        f"{standing} not in good standing, {reader} told: {concerned.email}",
        service=service.name,
        standing=standing,
        contact=concerned.email,
        roles=roles,
        reader=reader,
    )


def cancel(request: Request, *, by: Party | None, by_operator: bool, now: datetime) -> Transition:
    """The requester, the service's admin or an operator withdraws a pending request.

    ``by`` is None for the registrar's support acting outside mail (the CLI).
    Whoever cancelled by mail is told it is done, even when they take no part
    in the request (the admin, an operator); the others read who withdrew it,
    or that the support did when an operator who takes no part in it did.
    """
    if by is None:
        by_operator = True
    elif not (by_operator or by.same_as(request.requester) or by.same_as(request.service.admin)):
        raise NotAuthorized("", request=request.id)
    if not request.pending:
        raise RequestClosed("", request=request.id, status=request.status.value)
    closed = replace(_without_holds(request), status=RequestStatus.CANCELLED, closed_at=now)
    others = tuple(p for p in _everyone(request) if by is None or not p.same_as(by))
    involved = (*request.parties, request.service.admin)
    outsider = by is not None and not any(p.same_as(by) for p in involved)
    shown = None if by is None or (by_operator and outsider) else by
    notices = [Notify("request-cancelled", others, {"cancelled_by": shown} if shown else {})]
    if by is not None:
        notices.insert(0, Notify("request-cancelled", (by,), {"cancelled_by": by}))
    return Transition(closed, tuple(notices))


def expire(request: Request, now: datetime) -> Transition:
    """A request still pending at its expiry date dies; nothing changes on the service."""
    if not request.pending or now < request.expires_at:
        return Transition(request, ())
    closed = replace(_without_holds(request), status=RequestStatus.EXPIRED, closed_at=now)
    return Transition(closed, (Notify("request-expired", _everyone(request)),))


def resend(request: Request, *, by: Party, by_operator: bool) -> Transition:
    """Fresh tokens for the contacts still awaited; their earlier tokens die.

    The requester, the admin and operators may resend to everyone awaited; an
    awaited contact may ask again for themselves (their mail may have been lost).
    """
    if not request.pending:
        raise RequestClosed("", request=request.id, status=request.status.value)
    steering = by_operator or by.same_as(request.requester) or by.same_as(request.service.admin)
    targets = [v.contact for v in request.awaited if steering or v.contact.same_as(by)]
    if not targets:
        raise NotAuthorized("", request=request.id)
    return Transition(request, tuple(AskToValidate(c, replace=True) for c in targets))


def remind(request: Request, now: datetime, reminder_days: list[int]) -> Transition:
    """One reminder to each awaited contact for whom a new reminder offset has passed.

    However late the sweep runs, a contact gets one reminder for all the
    offsets that passed since the last one, so a missed day never becomes a burst.
    """
    if not request.pending:
        return Transition(request, ())
    due = reminders_due(request.created_at, now, reminder_days)
    updated = tuple(
        replace(v, reminders_sent=due)
        if v.pending and v.held is None and due > v.reminders_sent
        else v
        for v in request.validations
    )
    effects = tuple(
        Remind(new.contact, due)
        for old, new in zip(request.validations, updated, strict=True)
        if new is not old
    )
    return Transition(replace(request, validations=updated), effects)


def reminders_due(opened: datetime, now: datetime, reminder_days: list[int]) -> int:
    """How many reminder offsets have passed since the request was opened."""
    return sum(1 for day in reminder_days if now >= opened + timedelta(days=day))


def next_reminder_at(opened: datetime, sent: int, reminder_days: list[int]) -> datetime | None:
    """When the next reminder falls due, after ``sent`` of them; None after the last."""
    later = sorted(reminder_days)[sent:]
    return opened + timedelta(days=later[0]) if later else None


def _everyone(request: Request) -> tuple[Party, ...]:
    """Requester and every validating contact, whether or not they answered."""
    return request.parties
