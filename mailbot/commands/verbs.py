"""The email verbs, one class each, and the registry that maps words to them.

The registry's order is the order of the HELP mail's list of commands.
"""

from __future__ import annotations

from mailbot import tokens
from mailbot.commands.base import Command, UseCases, Verb
from mailbot.domain import Decision


class Change(Verb):
    name = "CHANGE"
    aliases = ("CHANGER",)
    arguments = "<service> then lines <role>: <handle or email>"
    description = "open a contact change request"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.open_request(command)


class Decide(Verb):
    """ACCEPT and REFUSE: a decision, carried by a token or by replying."""

    decision: Decision
    arguments = "[token]"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.decide(command, self.decision)

    def carries_credential(self, command: Command, typed: bool, quoted: bool) -> bool:
        """A token typed, something that looks like one, or our mail's quoted token."""
        return typed or quoted or tokens.looks_like_token_attempt(command.argument)


class Accept(Decide):
    name = "ACCEPT"
    aliases = ("ACCEPTER", "VALIDER")
    description = "validate a request"
    decision = Decision.ACCEPT
    opposite = "REFUSE"


class Refuse(Decide):
    name = "REFUSE"
    aliases = ("REFUSER",)
    description = "refuse a request"
    decision = Decision.REFUSE
    opposite = "ACCEPT"


class Status(Verb):
    name = "STATUS"
    aliases = ("STATUT",)
    arguments = "<request id>"
    description = "where a request stands"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.status(command)


class ListRequests(Verb):
    name = "LIST"
    aliases = ("LISTE", "MES DEMANDES")
    description = "your requests"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.list_requests()


class Cancel(Verb):
    name = "CANCEL"
    aliases = ("ANNULER",)
    arguments = "<request id>"
    description = "withdraw a pending request"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.steer(command, "cancel")


class Resend(Verb):
    name = "RESEND"
    aliases = ("RENVOYER",)
    arguments = "<request id>"
    description = "send fresh tokens to those still awaited"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.steer(command, "resend")


class Confirm(Verb):
    name = "CONFIRM"
    aliases = ("CONFIRMER",)
    arguments = "<token>"
    description = "confirm a CANCEL or RESEND you sent by mail"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.confirm(command)

    def carries_credential(self, command: Command, typed: bool, quoted: bool) -> bool:
        """Only a typed token: a quoted one is the confirmation mail itself."""
        return typed


class Help(Verb):
    name = "HELP"
    aliases = ("AIDE",)
    description = "how to use the bot"

    def handle(self, cases: UseCases, command: Command) -> str:
        return cases.help(VERBS)


VERBS: tuple[Verb, ...] = tuple(verb() for verb in Verb.registered)
"""The registry: every verb mailbot understands, in the order HELP lists them
(the order of the classes above)."""

BY_NAME = {verb.name: verb for verb in VERBS}
BY_WORD = {word: verb for verb in VERBS for word in verb.words}
FRENCH_WORDS = frozenset(alias for verb in VERBS for alias in verb.aliases)


def verb_of(command: Command) -> Verb:
    """The verb a command was read for."""
    return BY_NAME[command.verb]


def dispatch(cases: UseCases, command: Command) -> str:
    """Carry a command out: a lookup of its verb, then the verb's handler."""
    return verb_of(command).handle(cases, command)
