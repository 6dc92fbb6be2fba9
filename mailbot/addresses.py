"""Email addresses as mailbot accepts them from people: one plain address, lower-cased."""

from __future__ import annotations

import re

_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def normalise_email(text: str) -> str | None:
    """The address in canonical form, or None if it is not a plain, safe address."""
    candidate = text.strip().strip("<>").lower()
    return candidate if _ADDRESS.fullmatch(candidate) else None
