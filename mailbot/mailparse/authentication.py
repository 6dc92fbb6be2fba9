"""What the front MTA says of a sender: ``Authentication-Results`` (RFC 8601). Pure.

Anyone can write an ``Authentication-Results`` header into a message, so only
those whose authserv-id is the front MTA's own (``[smtp] authserv_id``) are
read; with none configured, none is trusted. The front MTA must remove any
header carrying its id that arrived from outside.

The verdict for the ``From`` domain:

- ``fail``: DMARC fails; the sender is treated as unauthenticated;
- ``pass``: DMARC passes, or (no DMARC verdict) DKIM passes with a signing
  domain aligned with the ``From`` domain, or SPF passes with an aligned
  ``MAIL FROM`` domain;
- ``none``: nothing trusted says either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

PASS: Final = "pass"  # noqa: S105 (a verdict, not a password)
FAIL: Final = "fail"
NONE: Final = "none"

_RESULT = re.compile(r"^([a-z0-9_-]+)(?:/[0-9]+)?=([a-z0-9_-]+)$")
_PROPERTY = re.compile(r"^([a-z0-9_-]+)\.([a-z0-9_.-]+)=(.*)$")


@dataclass(frozen=True)
class Result:
    """One ``method=result`` with its properties, e.g. ``dkim=pass header.d=x``."""

    method: str
    result: str
    properties: dict[str, str] = field(default_factory=dict)
    """``ptype.property`` -> value, lower-cased."""


@dataclass(frozen=True)
class Verdict:
    level: str
    """``pass``, ``fail`` or ``none``."""
    reason: str
    """Which result decided it, for the event log ("" for ``none`` without results)."""


def verdict(headers: tuple[str, ...], authserv_id: str | None, from_domain: str) -> Verdict:
    """The verdict of the trusted headers for a sender at ``from_domain``."""
    if not authserv_id or not from_domain:
        return Verdict(NONE, "")
    results = [r for value in headers for r in trusted_results(value, authserv_id)]
    dmarc = [r for r in results if r.method == "dmarc" and _about(r, from_domain)]
    if any(r.result == "fail" for r in dmarc):
        return Verdict(FAIL, "dmarc=fail")
    if any(r.result == "pass" for r in dmarc):
        return Verdict(PASS, "dmarc=pass")
    for r in results:
        signer = r.properties.get("header.d", "")
        if r.method == "dkim" and r.result == "pass" and aligned(signer, from_domain):
            return Verdict(PASS, f"dkim=pass header.d={signer}")
        if r.method == "spf" and r.result == "pass":
            domain = r.properties.get("smtp.mailfrom", "").rpartition("@")[2]
            if aligned(domain, from_domain):
                return Verdict(PASS, f"spf=pass smtp.mailfrom={domain}")
    return Verdict(NONE, "no aligned pass" if results else "")


def trusted_results(value: str, authserv_id: str) -> list[Result]:
    """The results of one header value if it bears ``authserv_id``, else none."""
    segments = _segments(_without_comments(value))
    if not segments:
        return []
    first = segments[0].split()
    if not first or first[0].lower() != authserv_id.strip().lower():
        return []
    return [r for r in (_result(s) for s in segments[1:]) if r is not None]


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment, approximated without the public suffix list: the same
    domain, or one a subdomain of the other where the parent has two labels or more."""
    domain, from_domain = domain.strip().strip(".").lower(), from_domain.strip(".").lower()
    if not domain or not from_domain:
        return False
    if domain == from_domain:
        return True
    parent, child = sorted((domain, from_domain), key=len)
    return "." in parent and child.endswith("." + parent)


def _about(result: Result, from_domain: str) -> bool:
    """A DMARC result is about this sender unless it names another ``header.from``."""
    named = result.properties.get("header.from", "").rpartition("@")[2]
    return not named or named == from_domain.lower()


def _result(segment: str) -> Result | None:
    words = _joined_equals(segment).split()
    if not words:
        return None
    found = _RESULT.match(words[0].lower())
    if found is None:
        return None
    properties: dict[str, str] = {}
    for word in words[1:]:
        prop = _PROPERTY.match(word)
        if prop is not None:
            value = prop.group(3).strip('"').lower()
            properties.setdefault(f"{prop.group(1).lower()}.{prop.group(2).lower()}", value)
    return Result(found.group(1), found.group(2), properties)


def _joined_equals(segment: str) -> str:
    """``dkim = pass`` -> ``dkim=pass`` (CFWS is allowed around ``=``)."""
    return re.sub(r"\s*=\s*", "=", segment)


def _segments(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _without_comments(value: str) -> str:
    """Comments ``( ... )``, nested, removed; quoted strings kept as they are."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if char == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
            continue
        elif not quoted and char == ")" and depth:
            depth -= 1
            if depth == 0:
                out.append(" ")
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)
