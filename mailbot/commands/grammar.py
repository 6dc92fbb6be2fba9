"""The grammar of the command language: finding the command of a mail, and
reading a CHANGE's role lines.

A command is the subject, or the first line of the message's new text. The
words it may start with are those of the verbs in the registry
(``mailbot.commands.verbs``); parsing returns plain data.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from mailbot.commands.base import Command
from mailbot.commands.verbs import BY_NAME, BY_WORD, FRENCH_WORDS
from mailbot.domain import ROLE_WORDS, Decision, Role
from mailbot.errors import AmbiguousDecision, MalformedRequest, UnknownCommand
from mailbot.mailparse import strip_subject_prefixes

# Longest first, so that "MES DEMANDES" wins over a shorter word.
_WORDS = sorted(BY_WORD, key=len, reverse=True)
_TAG = re.compile(r"^\s*\[[^\]]{1,40}\]\s*")  # "[EXTERNAL]", "[CR-7K2QX9MD]"
_GREETING = re.compile(
    r"^(?:bonjour|bonsoir|salut|coucou|cher|ch[èe]re|chers|ch[èe]res|madame|monsieur|mesdames"
    r"|messieurs|hello|hi|hey|hiya|dear|greetings|good (?:morning|afternoon|evening|day)"
    r"|morning|afternoon|hallo|hall[öo]chen|guten (?:morgen|tag|abend)|moin|servus"
    r"|gr[üu](?:ß|ss) gott|gr[üu](?:ß|ss) dich|liebe|lieber|sehr geehrte[rs]?|hola|buen d[íi]a"
    r"|buenos d[íi]as|buenas(?: tardes| noches)?|estimad[oa]s?|querid[oa]s?|ciao|salve"
    r"|buongiorno|buon ?pomeriggio|buonasera|gentile|gentili|egregi[oa]|car[oa]|cari"
    r"|goedemorgen|goedemiddag|goedenavond|goedendag|dag|hoi|beste|geachte|ol[áa]|oi"
    r"|bom dia|boa tarde|boa noite|prezad[oa]s?)\b[^!?:]{0,40}[,!.:]?$",
    re.IGNORECASE,
)
"""A greeting on a line of its own ("Bonjour,", "Hallo Herr Müller,", "Beste Jan,")."""
MAX_GREETING_LINES = 2
_ROLE_LINE = re.compile(r"^\s*([^\W\d_][\w-]*)\s*:\s*(\S+)\s*$")
_LOOSE_ROLE_LINE = re.compile(r"^\s*([^\W\d_][\w-]*)\s*:(.*)$")
"""A line that starts like a role line, whatever follows the colon."""
_REQUEST_ID = re.compile(r"^CR-[0-9A-Z]{8}$")
_OWN_TAG = re.compile(r"^\s*\[CR-[0-9A-Z]{8}\]")
"""The tag mailbot's own subjects begin with: a mail that keeps it answers one of them."""


@dataclass(frozen=True)
class ChangeCommand:
    service: str
    wanted: dict[Role, str]
    """Role -> the handle or email the sender named."""


def find_command(subject: str, new_text: str) -> Command:
    """The command of a mail: its subject, else the first line of its new text.

    A reply or a forward ("Re:", "TR:"..., or mailbot's own ``[CR-...]`` tag
    kept by a client that adds no prefix) carries the subject of the mail it
    answers, which may read like a command ("Re: [CR-...] Change request
    opened for example.com"): there the new text speaks first, and the subject
    is a command only when the new text holds none. A decision in one place
    and the opposite decision in another is ambiguous and refused rather than
    guessed.
    """
    answering = strip_subject_prefixes(subject) != subject.strip() or bool(_OWN_TAG.match(subject))
    in_subject = _command_in(_bare(subject))
    lines = _without_greeting([line.strip() for line in new_text.splitlines() if line.strip()])
    in_body = _command_in(lines[0]) if lines else None
    command = (in_body or in_subject) if answering else (in_subject or in_body)
    if command is None:
        raise UnknownCommand("", line=(lines[0] if lines else subject)[:200])
    if (opposite := BY_NAME[command.verb].opposite) is not None:
        _check_single_decision(opposite, [*([] if answering else [subject]), *lines])
    return command


def _without_greeting(lines: list[str]) -> list[str]:
    """The lines from the first one that is not a greeting ("Bonjour," then the command)."""
    for _ in range(MAX_GREETING_LINES):
        if len(lines) > 1 and _GREETING.match(lines[0]) and _command_in(lines[0]) is None:
            lines = lines[1:]
    return lines


def _bare(subject: str) -> str:
    """A subject without reply and forward prefixes, nor tags between them."""
    while (bare := _TAG.sub("", strip_subject_prefixes(subject))) != subject:
        subject = bare
    return subject


def has_command(text: str) -> bool:
    """Whether the first line of ``text`` is a command (a forwarder's own note, say)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return bool(lines) and _command_in(lines[0]) is not None


def _command_in(line: str) -> Command | None:
    line = line.strip().strip("*_").strip()  # "*ACCEPT*": bold in a plain-text alternative
    folded = _fold(line)
    for word in _WORDS:
        if folded == word or folded.startswith(word + " ") or _startswith_punct(folded, word):
            verb = BY_WORD[word]
            argument = line.strip()[len(word) :].strip(" \t:,.!;")
            return Command(verb.name, argument, line.strip()[:200], word in FRENCH_WORDS)
    return None


def _startswith_punct(folded: str, word: str) -> bool:
    return folded.startswith(word) and len(folded) > len(word) and folded[len(word)] in ":,.!;"


def _fold(text: str) -> str:
    """Upper-case without accents or repeated spaces, for matching verbs."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.upper().split())


def _check_single_decision(opposite: str, lines: list[str]) -> None:
    """A decision in one place and the opposite one in another is ambiguous."""
    for line in lines:
        found = _command_in(_bare(line))
        if found is not None and found.verb == opposite:
            raise AmbiguousDecision("", line=line[:200])


def decision_of(command: Command) -> Decision:
    """The decision an ACCEPT or REFUSE command (in either language) records."""
    return Decision.ACCEPT if command.verb == "ACCEPT" else Decision.REFUSE


def parse_change(command: Command, new_text: str) -> ChangeCommand:
    """``CHANGE <service>`` plus its ``role: contact`` lines.

    A malformed request names what is wrong in its ``reason``, so that the
    error mail says it in the sender's language: no service, no role line,
    an unknown or repeated role, or (when no role line could be read) a line
    that starts with a role word but names no single contact.
    """
    words = command.argument.split()
    if not words:
        raise MalformedRequest("", line=command.line, reason="no-service")
    service = words[0].lower().rstrip(".")
    if len(words) > 1:
        raise MalformedRequest("", line=command.line, reason="service-words")
    wanted: dict[Role, str] = {}
    unreadable = ""
    for line in new_text.splitlines():
        match = _ROLE_LINE.match(line)
        if match is None:
            unreadable = unreadable or _role_worded(line)
            continue
        role = ROLE_WORDS.get(_fold(match.group(1)).lower())
        if role is None or role in wanted:
            reason = "role" if role is None else "twice"
            raise MalformedRequest("", line=line.strip()[:200], service=service, reason=reason)
        wanted[role] = match.group(2).strip("<>,;")
    if unreadable and not wanted:
        raise MalformedRequest("", line=unreadable, service=service, reason="contact")
    if not wanted:
        raise MalformedRequest("", service=service, reason="no-role-line")
    return ChangeCommand(service, wanted)


def _role_worded(line: str) -> str:
    """The line, if it starts with a role word and a colon; else ""."""
    loose = _LOOSE_ROLE_LINE.match(line)
    if loose is None or ROLE_WORDS.get(_fold(loose.group(1)).lower()) is None:
        return ""
    return line.strip()[:200]


def is_request_id(text: str) -> bool:
    return bool(_REQUEST_ID.match(text.strip().upper()))
