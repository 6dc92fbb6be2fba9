"""Validation tokens: made from ``secrets``, shown grouped, stored only as a digest.

A token is 100 random bits written as 20 Crockford base32 characters. People
type them back by hand, so normalisation forgives case, spaces, hyphens and
Crockford's look-alikes (O for 0, I and L for 1).
"""

from __future__ import annotations

import hashlib
import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TOKEN_BITS = 100
TOKEN_LENGTH = TOKEN_BITS // 5
GROUP = 4
KEY_LENGTH = TOKEN_LENGTH
"""A reply key decides like a token (a bare ACCEPT to it counts): it gets a token's
100 bits."""
OLD_KEY_LENGTH = 16
"""Keys of mail sent before keys grew to a token's length are still understood."""

_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SEPARATORS = re.compile(r"[\s\-_.]+")
_VALID = re.compile(f"[{ALPHABET}]+")


def new_token() -> str:
    """A fresh token in canonical form (20 characters, no separators)."""
    return encode(secrets.randbits(TOKEN_BITS), TOKEN_LENGTH)


def new_key(length: int = KEY_LENGTH) -> str:
    """A random identifier in the same alphabet, e.g. for reply addresses."""
    return encode(secrets.randbits(5 * length), length)


def encode(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def group(token: str) -> str:
    """``7KQ2X9JM...`` -> ``7KQ2-X9JM-...`` for reading and typing."""
    return "-".join(token[i : i + GROUP] for i in range(0, len(token), GROUP))


def normalise(typed: str, length: int = TOKEN_LENGTH) -> str | None:
    """The canonical token for what a person typed, or None if it cannot be one."""
    candidate = _SEPARATORS.sub("", typed).upper().translate(_LOOKALIKES)
    valid = len(candidate) == length and _VALID.fullmatch(candidate)
    return candidate if valid else None


def normalise_key(typed: str) -> str | None:
    """A reply key as found in a plus-address (mail software may change its case)."""
    return normalise(typed, KEY_LENGTH) or normalise(typed, OLD_KEY_LENGTH)


def digest(token: str) -> str:
    """What the database keeps: a SHA-256 of the canonical token.

    The token carries 100 random bits, so a plain hash cannot be reversed by
    guessing; no salt or slow hash is needed.
    """
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def looks_like_token_attempt(text: str) -> bool:
    """Whether words after ACCEPT/REFUSE were meant as a token.

    "ACCEPT thanks" is a decision with a remark; "ACCEPT 7KQ2 X9JM" is a
    (possibly mistyped) token that must be checked, never silently ignored.
    """
    compact = _SEPARATORS.sub("", text)
    if not compact.isalnum() or not compact.isascii():
        return False
    return len(compact) >= 12 or any(ch.isdigit() for ch in compact)
