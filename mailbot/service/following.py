"""Following and steering requests: STATUS, LIST, CANCEL and RESEND by mail,
and an operator's cancel and resend from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from mailbot import commands, workflow
from mailbot.domain import Party, Request
from mailbot.errors import MalformedRequest, NotAuthorized, TooManyAttempts, UnknownRequest
from mailbot.service.context import ServiceContext
from mailbot.service.inbound import ReceivedMail
from mailbot.service.replies import Replies
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import RequestRow
from mailbot.views import RequestView

LIST_LIMIT = 50
OPERATOR_ACTOR = "operator@cli"
"""How the event log names an operator acting through the CLI."""
OPERATOR = (Party(email=OPERATOR_ACTOR), True)

Actor = tuple[Party, bool]
"""Who acts, and whether they are an operator."""


@dataclass(frozen=True)
class ListEntry:
    """One line of a LIST answer."""

    request: RequestView
    awaits_you: bool
    you_requested: bool


class Following:
    """Who may follow a request, what they are told, and cancelling or resending it."""

    def __init__(self, context: ServiceContext, transitions: Transitions, replies: Replies) -> None:
        self.context = context
        self.clock = context.clock
        self.transitions = transitions
        self.replies = replies

    def party_request(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> RequestRow:
        """The request a command names, if the sender may see it.

        Anyone else gets the same answer as for an id that does not exist, so
        that request ids cannot be probed.
        """
        if not commands.is_request_id(command.argument):
            raise MalformedRequest(
                "a request id looks like CR-7K2QX9MD", line=command.line, reason="request-id"
            )
        row = queries.request_row(session, command.argument.strip(), for_update=True)
        if row is None or not self.may_follow(session, row, self.replies.actor(session, message)):
            raise NotAuthorized(
                "no such request among yours", line=command.line, reason="not-yours"
            )
        return row

    def may_follow(self, session: Session, row: RequestRow, actor: Actor) -> bool:
        """Operators, the request's parties and the service's admin may follow a request."""
        request = queries.request(session, row)
        party, operator = actor
        return operator or any(p.same_as(party) for p in (*request.parties, request.service.admin))

    def status_by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> str:
        """STATUS: where the named request stands, to someone who may follow it."""
        row = self.party_request(session, message, command)
        request = queries.request(session, row)
        return self.replies.answer(session, message, "status", {}, request)

    def list_by_mail(self, session: Session, message: ReceivedMail) -> str:
        """LIST: the sender's requests, newest first, those awaiting them marked."""
        party, _ = self.replies.actor(session, message)
        rows = queries.requests_of(session, party.email, party.id, LIST_LIMIT + 1)
        entries = []
        for row in rows[:LIST_LIMIT]:
            request = queries.request(session, row)
            own = request.validation_of(party)
            entries.append(
                ListEntry(
                    RequestView.of(request),
                    awaits_you=bool(own and own.pending and request.pending),
                    you_requested=request.requester.same_as(party),
                )
            )
        context = {"entries": entries, "truncated": len(rows) > LIST_LIMIT, "limit": LIST_LIMIT}
        return self.replies.answer(session, message, "list", context)

    def steer(
        self,
        session: Session,
        row: RequestRow,
        action: str,
        actor: Actor,
        message: ReceivedMail | None,
        how: str = "",
    ) -> str:
        """Carry out ``action`` (cancel or resend) on the request, for ``actor``."""
        if action == "cancel":
            return self._cancel(session, row, actor, message, how)
        return self._resend(session, row, actor, message, how)

    def check_steer(self, session: Session, row: RequestRow, action: str, actor: Actor) -> None:
        """Raise now what the action would raise, rather than ask to confirm the impossible."""
        by, operator = actor
        request = queries.request(session, row)
        if action == "cancel":
            workflow.cancel(request, by=by, by_operator=operator, now=self.clock.now())
        else:
            workflow.resend(request, by=by, by_operator=operator)

    def _cancel(
        self,
        session: Session,
        row: RequestRow,
        actor: Actor | None,
        message: ReceivedMail | None,
        how: str,
    ) -> str:
        """Cancel for ``actor``; None is an operator from the CLI, whom customers
        read as the registrar's support (it has no mailbox to be told at)."""
        by, operator = actor if actor is not None else (None, True)
        transition = workflow.cancel(
            queries.request(session, row), by=by, by_operator=operator, now=self.clock.now()
        )
        who = by.email if by is not None else OPERATOR_ACTOR
        cancelled = Event("request-cancelled", actor=who, detail=how)
        self.transitions.commit(session, row, transition, [cancelled], message)
        return f"request {row.id} cancelled by {who}"

    def _resend(
        self,
        session: Session,
        row: RequestRow,
        actor: Actor,
        message: ReceivedMail | None,
        how: str,
    ) -> str:
        """Fresh tokens for those still awaited, at most once an hour per request."""
        by, operator = actor
        if not self.context.limits.resends.allows(session, row.id, self.clock.now()):
            raise TooManyAttempts(
                "tokens were resent less than an hour ago", request=row.id, limit="resends"
            )
        transition = workflow.resend(queries.request(session, row), by=by, by_operator=operator)
        self.context.limits.resends.record(session, row.id, self.clock.now())
        asked = [
            e.contact.email for e in transition.effects if isinstance(e, workflow.AskToValidate)
        ]
        detail = ", ".join(asked) + (f"; {how}" if how else "")
        resent = Event("tokens-resent", actor=by.email, detail=detail)
        self.transitions.commit(session, row, transition, [resent], message)
        return f"fresh tokens sent for {row.id}"

    def cancel_request(self, request_id: str) -> Request:
        """An operator withdraws a request (``mailbot requests cancel``)."""
        with transaction(self.context.engine) as session:
            row = self._request_for_operator(session, request_id)
            self._cancel(session, row, None, None, "")
            return queries.request(session, row)

    def resend_request(self, request_id: str) -> Request:
        """An operator re-issues tokens (``mailbot requests resend``)."""
        with transaction(self.context.engine) as session:
            row = self._request_for_operator(session, request_id)
            self._resend(session, row, OPERATOR, None, "")
            return queries.request(session, row)

    def _request_for_operator(self, session: Session, request_id: str) -> RequestRow:
        row = queries.request_row(session, request_id, for_update=True)
        if row is None:
            raise UnknownRequest(f"no request {request_id}")
        return row
