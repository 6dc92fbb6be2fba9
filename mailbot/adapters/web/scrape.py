"""``GET /metrics``: the Prometheus text format, for the addresses in ``[web]
metrics_allow`` only; to anyone else the same 404 as an unknown URL.

The client is the connection's own peer (``PEER``, kept by the protocol before
uvicorn rewrites ``client`` from ``X-Forwarded-For``), never a header a client
writes. A reverse proxy on the same host connects from an allowed address, so
a request that carries a forwarding header is refused too: what arrives
through a proxy is the public's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mailbot import metrics
from mailbot.service import Mailbot

PEER = "mailbot.peer"
"""Scope key of the socket's peer ``(host, port)``, set by ``KeepPeer``."""
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class KeepPeer:
    """Keeps the socket's peer in the scope under ``PEER``: uvicorn's proxy-headers
    middleware, which runs after it, may replace ``client``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[PEER] = scope.get("client")
        await self.app(scope, receive, send)


class MetricsPage:
    """An ASGI endpoint, so that every method reaches it: to a client that may not
    read the metrics, a POST gets the 404 an unknown URL gets, not a 405."""

    def __init__(self, bot: Mailbot) -> None:
        self.bot = bot
        self.allowed = [ipaddress.ip_network(n) for n in bot.settings.web.metrics_allow]
        metrics.enable()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.show(Request(scope, receive))
        await response(scope, receive, send)

    async def show(self, request: Request) -> Response:
        """The metrics, or 404 (as an unknown URL gets) to whoever may not read them."""
        if not self.may_read(request):
            raise HTTPException(status_code=404)
        if request.method not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        body, content_type = await run_in_threadpool(
            metrics.exposition, self.bot.engine, self.bot.clock
        )
        return Response(body, media_type=content_type)

    def may_read(self, request: Request) -> bool:
        if any(name in request.headers for name in FORWARDING_HEADERS):
            return False
        peer = request.scope.get(PEER, request.scope.get("client"))
        return bool(peer) and within(str(peer[0]), self.allowed)


def within(host: str, networks: Iterable[Network]) -> bool:
    """Whether ``host`` (an IPv4-mapped IPv6 address counts as IPv4) is in a network."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
