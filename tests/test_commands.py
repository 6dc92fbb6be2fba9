from __future__ import annotations

import pytest

from mailbot import commands
from mailbot.domain import Decision, Role
from mailbot.errors import AmbiguousDecision, MalformedRequest, UnknownCommand


@pytest.mark.parametrize(
    ("subject", "body", "verb", "argument"),
    [
        ("CHANGE example.com", "tech: carol@agency.test", "CHANGE", "example.com"),
        ("changer example.com", "", "CHANGE", "example.com"),
        ("Re: [CR-7K2QX9MD] Validation", "ACCEPT\n", "ACCEPT", ""),
        ("Re: [CR-7K2QX9MD] Validation", "accept 7KQ2-X9JM", "ACCEPT", "7KQ2-X9JM"),
        ("", "Accepter 7kq2 x9jm 4trd 8wpa 3hnb", "ACCEPT", "7kq2 x9jm 4trd 8wpa 3hnb"),
        ("", "VALIDER", "ACCEPT", ""),
        ("RE: TR: something", "Refuser.", "REFUSE", ""),
        ("Mes demandes", "", "LIST", ""),
        ("", "aide", "HELP", ""),
        ("", "Statut CR-7K2QX9MD", "STATUS", "CR-7K2QX9MD"),
        ("", "ACCEPT: 7KQ2", "ACCEPT", "7KQ2"),
        ("SV: [EXTERNAL] AW: Antw: REFUSE", "", "REFUSE", ""),
        ("RV: x", "Bonjour,\n\nACCEPTER\n\nMarie", "ACCEPT", ""),
        ("x", "Hello Carol!\nREFUSE", "REFUSE", ""),
        ("Re: x", "*ACCEPT 7KQ2-X9JM-4TRD-8WPA-3HNB*", "ACCEPT", "7KQ2-X9JM-4TRD-8WPA-3HNB"),
        ("Re: x", "_REFUSER_", "REFUSE", ""),
    ],
)
def test_the_command_is_the_subject_or_the_first_line(
    subject: str, body: str, verb: str, argument: str
) -> None:
    command = commands.find_command(subject, body)
    assert (command.verb, command.argument) == (verb, argument)


def test_french_words_are_recognised_as_french() -> None:
    assert commands.find_command("", "REFUSER").french
    assert not commands.find_command("", "REFUSE").french


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Hello", "Can you change my contact?"),
        ("", ""),
        ("Accepted", "Acceptance letter"),
        ("Hi", "Hello,\nPlease tell me more.\nACCEPT"),  # only one greeting line is skipped
    ],
)
def test_no_command_is_unknown(subject: str, body: str) -> None:
    with pytest.raises(UnknownCommand):
        commands.find_command(subject, body)


@pytest.mark.parametrize(
    ("subject", "body"),
    [("ACCEPT", "REFUSE"), ("", "ACCEPT\nREFUSE"), ("Re: x", "refuser\n\nAccept")],
)
def test_two_different_decisions_are_ambiguous(subject: str, body: str) -> None:
    with pytest.raises(AmbiguousDecision):
        commands.find_command(subject, body)


def test_decision_of() -> None:
    assert commands.decision_of(commands.find_command("", "VALIDER")) is Decision.ACCEPT
    assert commands.decision_of(commands.find_command("", "refuse")) is Decision.REFUSE


def test_change_reads_role_lines_in_english_and_french() -> None:
    command = commands.find_command("CHANGER Example.COM", "")
    change = commands.parse_change(
        command, "Bonjour,\ntechnique: carol@agency.test\nFacturation : BI300-MB\nMerci"
    )
    assert change.service == "example.com"
    assert change.wanted == {Role.TECH: "carol@agency.test", Role.BILLING: "BI300-MB"}


def test_change_in_the_body_first_line() -> None:
    command = commands.find_command("", "CHANGE example.com\nadmin: <carol@agency.test>")
    change = commands.parse_change(command, "CHANGE example.com\nadmin: <carol@agency.test>")
    assert change.wanted == {Role.ADMIN: "carol@agency.test"}


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("CHANGE example.com", "owner: carol@agency.test"),
        ("CHANGE example.com", "tech: a@x.test\ntech: b@x.test"),
        ("CHANGE example.com", "no role lines at all"),
        ("CHANGE", "tech: carol@agency.test"),
        ("CHANGE example.com please", "tech: carol@agency.test"),
    ],
)
def test_malformed_change(subject: str, body: str) -> None:
    command = commands.find_command(subject, body)
    with pytest.raises(MalformedRequest):
        commands.parse_change(command, body)


def test_every_verb_has_a_description_and_french_alias() -> None:
    for verb in commands.VERBS:
        assert verb.description
        assert verb.aliases


@pytest.mark.parametrize(
    ("subject", "body", "reason"),
    [
        ("CHANGE example.com", "Thanks!", "no-role-line"),
        ("CHANGE example.com", "", "no-role-line"),
        ("CHANGER", "technique: carol@agency.test", "no-service"),
        ("CHANGE example.com please", "tech: carol@agency.test", "service-words"),
        ("CHANGE example.com", "owner: carol@agency.test", "role"),
        ("CHANGE example.com", "tech: a@x.test\ntechnique: b@x.test", "twice"),
        ("CHANGE example.com", "tech: Carol Agency <carol@agency.test>", "contact"),
    ],
)
def test_a_malformed_change_says_what_is_wrong(subject: str, body: str, reason: str) -> None:
    command = commands.find_command(subject, body)
    with pytest.raises(MalformedRequest) as raised:
        commands.parse_change(command, body)
    assert raised.value.context["reason"] == reason


def test_a_line_that_only_looks_like_a_role_does_not_stop_a_readable_request() -> None:
    body = "tech: carol@agency.test\nBilling: unchanged, thanks"
    change = commands.parse_change(commands.find_command("CHANGE example.com", body), body)
    assert change.wanted == {Role.TECH: "carol@agency.test"}
