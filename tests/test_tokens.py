from __future__ import annotations

import re

import pytest

from mailbot import tokens


def test_new_token_is_twenty_crockford_characters_carrying_100_bits() -> None:
    token = tokens.new_token()
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{20}", token)
    assert tokens.TOKEN_BITS >= 100


def test_tokens_differ() -> None:
    assert len({tokens.new_token() for _ in range(1000)}) == 1000


def test_grouped_for_reading() -> None:
    assert tokens.group("7KQ2X9JM4TRD8WPA3HNB") == "7KQ2-X9JM-4TRD-8WPA-3HNB"


@pytest.mark.parametrize(
    "typed",
    [
        "7KQ2-X9JM-4TRD-8WPA-3HNB",
        "7kq2 x9jm 4trd 8wpa 3hnb",
        " 7KQ2X9JM4TRD8WPA3HNB ",
        "7kq2-x9jm 4trd_8wpa.3hnb",
    ],
)
def test_typing_forgives_case_spaces_and_hyphens(typed: str) -> None:
    assert tokens.normalise(typed) == "7KQ2X9JM4TRD8WPA3HNB"


def test_crockford_lookalikes_are_read_as_digits() -> None:
    assert tokens.normalise("O0IL-1111-1111-1111-1111") == "00111111111111111111"


@pytest.mark.parametrize(
    "typed", ["", "7KQ2", "7KQ2-X9JM-4TRD-8WPA-3HNBX", "7KQ2-X9JM-4TRD-8WPA-3HNU", "é" * 20]
)
def test_what_cannot_be_a_token_is_refused(typed: str) -> None:
    assert tokens.normalise(typed) is None


def test_digest_is_stable_and_does_not_contain_the_token() -> None:
    token = tokens.new_token()
    assert tokens.digest(token) == tokens.digest(token)
    assert token not in tokens.digest(token)
    assert tokens.digest(tokens.new_token()) != tokens.digest(token)


@pytest.mark.parametrize(
    ("text", "attempt"),
    [
        ("", False),
        ("thanks", False),
        ("please!", False),
        ("7KQ2 X9JM", True),
        ("7kq2x9jm4trd8wpa3hnb", True),
        ("ABCDEFGHJKMNPQ", True),
    ],
)
def test_words_after_a_decision_are_a_token_attempt_only_when_they_look_like_one(
    text: str, attempt: bool
) -> None:
    assert tokens.looks_like_token_attempt(text) is attempt
