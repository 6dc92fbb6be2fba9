"""What every email verb is made of: the command read from a mail, the verb
class a verb derives from, and the use cases a verb's handler may call.

The handler receives the use cases through ``UseCases``, a Protocol the service
implements, so that this package stays pure: a verb says *what* a command asks
for, and the service decides how it is stored and answered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from mailbot.domain import Decision


@dataclass(frozen=True)
class Command:
    verb: str
    """The canonical English verb, e.g. ``ACCEPT``."""
    argument: str
    """The rest of the command line, stripped."""
    line: str
    """The command line as written (for error mails)."""
    french: bool


class UseCases(Protocol):
    """The use cases as one received mail sees them, inside the service's
    transaction for that mail. Each returns the outcome recorded for the mail."""

    def open_request(self, command: Command) -> str:
        """CHANGE: open a request from the command and the mail's role lines."""
        ...

    def decide(self, command: Command, decision: Decision) -> str:
        """Record the sender's decision on the validation the mail speaks for."""
        ...

    def status(self, command: Command) -> str:
        """Answer where the request the command names stands."""
        ...

    def list_requests(self) -> str:
        """Answer with the sender's requests."""
        ...

    def steer(self, command: Command, action: str) -> str:
        """Cancel or resend (``action``) the request the command names."""
        ...

    def confirm(self, command: Command) -> str:
        """Carry out the CANCEL or RESEND a confirmation token was sent for."""
        ...

    def help(self, verbs: Sequence[Verb]) -> str:
        """Answer with how to use the bot, listing ``verbs``."""
        ...


class Verb(ABC):
    """One email verb: its words, its help line, and what it does.

    ``name`` is the English word (the canonical verb of a Command), ``aliases``
    the French ones; ``arguments`` and ``description`` make its HELP line.
    Adding a verb is a subclass that names itself, and its templates: defining
    it registers it (``registered``, in the order HELP lists them).
    """

    registered: ClassVar[list[type[Verb]]] = []
    """Every class that names a verb, in the order they were defined."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    arguments: ClassVar[str] = ""
    description: ClassVar[str]
    opposite: ClassVar[str | None] = None
    """A verb that must not appear in the same mail (ACCEPT beside REFUSE)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):  # a verb; a family of verbs such as ACCEPT/REFUSE names none
            Verb.registered.append(cls)

    @property
    def words(self) -> tuple[str, ...]:
        """Every word that names the verb, English first."""
        return (self.name, *self.aliases)

    @abstractmethod
    def handle(self, cases: UseCases, command: Command) -> str:
        """Carry the command out through the use cases; returns the outcome."""

    def carries_credential(self, command: Command, typed: bool, quoted: bool) -> bool:
        """Whether the mail holds a token this verb acts on, so that it is worth
        acting on even when DMARC refutes its sender. ``typed``: tokens typed in
        the new text or the argument; ``quoted``: tokens of our mail quoted below."""
        return False
