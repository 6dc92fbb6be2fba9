"""The email command language: one class per verb, the registry, and the grammar
that finds a mail's command.

A verb (``verbs``) declares its English and French words, its HELP line and
its handler; the registry ``VERBS`` maps words to verbs, so that dispatch is a
lookup and HELP lists what the registry holds. Handlers call the service
through the ``UseCases`` Protocol (``base``); nothing here does I/O.
"""

from __future__ import annotations

from mailbot.commands.base import Command, UseCases, Verb
from mailbot.commands.grammar import (
    ChangeCommand,
    decision_of,
    find_command,
    has_command,
    is_request_id,
    parse_change,
)
from mailbot.commands.verbs import (
    FRENCH_WORDS,
    VERBS,
    Accept,
    Cancel,
    Change,
    Confirm,
    Help,
    ListRequests,
    Refuse,
    Resend,
    Status,
    dispatch,
    verb_of,
)

__all__ = [
    "FRENCH_WORDS",
    "VERBS",
    "Accept",
    "Cancel",
    "Change",
    "ChangeCommand",
    "Command",
    "Confirm",
    "Help",
    "ListRequests",
    "Refuse",
    "Resend",
    "Status",
    "UseCases",
    "Verb",
    "decision_of",
    "dispatch",
    "find_command",
    "has_command",
    "is_request_id",
    "parse_change",
    "verb_of",
]
