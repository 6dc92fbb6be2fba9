"""What wraps every response of the link page: security headers, and a clean 500
page for any unexpected error."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("mailbot.adapters.web")  # the link page logs under one name

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    # Not "no-referrer": with it, browsers send "Origin: null" on our own form
    # posts, which the cross-site check must refuse. "same-origin" still sends
    # nothing (no token in a Referer) to any other site.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}

FALLBACK_500 = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Error</title></head>"
    "<body><h1>Something went wrong</h1><p>Please try again later.</p></body></html>"
)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, whichever part of the app made it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CatchAll:
    """Turns any unexpected exception into a logged, clean 500 page.

    Starlette's own ``Exception`` handler re-raises after answering, so the
    server logs a second traceback; this one answers and logs once, and runs
    inside SecurityHeaders so that the error page gets the headers too.
    """

    def __init__(self, app: ASGIApp, page: Callable[[], Response]) -> None:
        self.app = app
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:  # gone, or closed for a body too slow: nobody to answer
            return
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), _safe_path(scope))
            if started:
                raise
            await self.page()(scope, receive, send)


def _safe_path(scope: Scope) -> str:
    """The path for the log, without the token: logs must not hold secrets."""
    path = str(scope.get("path", ""))
    return path[:3] + "…" if path.startswith(("/v/", "/u/")) else path
