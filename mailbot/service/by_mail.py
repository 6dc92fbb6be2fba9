"""The service's side of the command language: the use cases a verb's handler
calls (``commands.UseCases``), bound to one received mail and its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session

from mailbot import commands
from mailbot.domain import Decision
from mailbot.service.confirming import Confirming
from mailbot.service.deciding import Deciding
from mailbot.service.following import Following
from mailbot.service.inbound import ReceivedMail
from mailbot.service.opening import Opening
from mailbot.service.replies import Replies


@dataclass(frozen=True)
class MailUseCases:
    """The use-case objects a mail's command may reach."""

    opening: Opening
    deciding: Deciding
    following: Following
    confirming: Confirming
    replies: Replies

    def bound(self, session: Session, mail: ReceivedMail) -> MailCases:
        """The use cases as ``mail`` sees them, inside ``session``."""
        return MailCases(self, session, mail)


@dataclass(frozen=True)
class MailCases(commands.UseCases):
    """Implements ``commands.UseCases`` for one mail: each verb's handler lands here."""

    cases: MailUseCases
    session: Session
    mail: ReceivedMail

    def open_request(self, command: commands.Command) -> str:
        return self.cases.opening.by_mail(self.session, self.mail, command)

    def decide(self, command: commands.Command, decision: Decision) -> str:
        return self.cases.deciding.by_mail(self.session, self.mail, command, decision)

    def status(self, command: commands.Command) -> str:
        return self.cases.following.status_by_mail(self.session, self.mail, command)

    def list_requests(self) -> str:
        return self.cases.following.list_by_mail(self.session, self.mail)

    def steer(self, command: commands.Command, action: str) -> str:
        return self.cases.confirming.steer_by_mail(self.session, self.mail, command, action)

    def confirm(self, command: commands.Command) -> str:
        return self.cases.confirming.confirm_by_mail(self.session, self.mail, command)

    def help(self, verbs: Sequence[commands.Verb]) -> str:
        context = {"commands": tuple(verbs)}
        return self.cases.replies.answer(self.session, self.mail, "help", context)
