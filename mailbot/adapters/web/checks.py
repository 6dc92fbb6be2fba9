"""What the link page checks in a request: the nonce of its form, the form itself,
where a POST comes from, and which client it counts a guess against."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request

from mailbot import tokens
from mailbot.clock import Clock

NONCE_TTL = timedelta(hours=2)
"""How long a loaded page's forms stay valid."""
NONCE_SKEW = timedelta(minutes=5)
"""Clock difference tolerated between instances that share a secret key."""
MAX_FORM_BYTES = 4096
"""Our forms send two short fields; anything much bigger is not from our page."""


class Nonces:
    """Stateless proof that a form was served by us for this token, recently.

    A nonce is ``<issued>.<HMAC-SHA256(key, token digest, issued)>``: nothing
    is stored, any instance with the same key can check it, and it is bound to
    the token so that a nonce from one page is useless on another.
    """

    def __init__(
        self, key: bytes, clock: Clock, ttl: timedelta = NONCE_TTL, purpose: str = "v1"
    ) -> None:
        self._key = key
        self._clock = clock
        self._ttl = ttl.total_seconds()
        self._purpose = purpose  # a nonce of one kind of page is useless on another

    def issue(self, token: str) -> str:
        """A fresh nonce for the page of the canonical ``token``."""
        issued = int(self._clock.now().timestamp())
        return f"{issued}.{self._mac(token, issued)}"

    def valid(self, token: str, nonce: str) -> bool:
        """Whether ``nonce`` was issued for ``token`` by us and has not expired."""
        issued_text, _, mac = nonce.partition(".")
        if not (issued_text.isascii() and issued_text.isdigit()) or len(issued_text) > 12:
            return False
        issued = int(issued_text)
        age = self._clock.now().timestamp() - issued
        if not -NONCE_SKEW.total_seconds() <= age <= self._ttl:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(token, issued).encode())

    def _mac(self, token: str, issued: int) -> str:
        message = f"mailbot-web-nonce:{self._purpose}:{tokens.digest(token)}:{issued}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


class FormTooLarge(Exception):
    """The request body exceeds MAX_FORM_BYTES."""


@dataclass(frozen=True)
class Form:
    """The fields of a posted form, each kept only if it was sent exactly once."""

    fields: dict[str, str]
    names: frozenset[str] = frozenset()
    """Every field name sent, repeated ones included."""

    def get(self, name: str) -> str:
        """The field's value; missing and repeated fields read as empty, which fails."""
        return self.fields.get(name, "")

    def sent(self, name: str) -> bool:
        """Whether the field was sent at all: an unchecked radio button sends nothing."""
        return name in self.names


async def read_form(request: Request) -> Form:
    """The url-encoded form in the body, read with a size limit.

    Our pages only send ``application/x-www-form-urlencoded``; any other body
    yields no fields, which then fails the nonce check like a blind POST.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return Form({})
    try:
        parsed = parse_qs(bytes(body).decode("latin-1"), max_num_fields=16)
    except ValueError:
        return Form({})
    return Form(
        {name: values[0] for name, values in parsed.items() if len(values) == 1},
        frozenset(parsed),
    )


def origin_of(url: str) -> str | None:
    """The ``scheme://host[:port]`` origin of ``url``, normalised; None if it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def cross_site(request: Request, own_origin: str | None) -> bool:
    """Whether the browser says this POST comes from another site than ours.

    ``Sec-Fetch-Site: cross-site`` or ``same-site`` (a sibling host), or an
    ``Origin`` that is not the one of ``[bot] base_url`` (``null`` included),
    is refused. Clients that send neither (curl, old browsers) still need the
    page's nonce, and a person's deliberate choice.
    """
    fetch_site = request.headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        return True
    origins = request.headers.getlist("origin")
    return any(origin_of(sent) is None or origin_of(sent) != own_origin for sent in origins)


def client_of(request: Request) -> str:
    """The client the throttle counts: its IPv4 address, or its IPv6 /64.

    One IPv6 host usually holds a whole /64, so counting single addresses
    would let it rotate past the limit. Behind a reverse proxy, uvicorn's
    ``--proxy-headers``/``--forwarded-allow-ips`` decide what ``client`` is.
    """
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host
