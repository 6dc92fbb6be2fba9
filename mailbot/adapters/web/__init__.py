"""The link page: the web side of a validation email (DESIGN.md §4 "Web").

``GET /v/{token}`` shows the request a token stands for, with a form, and
changes nothing: mail security scanners open every link. The form ``POST
/v/{token}`` with ``decision`` and a ``nonce``, a stateless HMAC that proves
the page was loaded, so that a blind POST decides nothing.

Some scanners also submit the forms they find, with their default values. So
the form has two radio buttons, neither checked: submitted untouched it sends
no decision, and the page asks again. A POST whose ``Origin`` is not ours, or
that the browser marks as coming from another site (``Sec-Fetch-Site``), is
refused. And a decision made here is *held* for ``[web] undo_minutes``: the
contact is mailed what was chosen, with an undo link (``/u/{token}``, the same
GET-shows/POST-acts pattern); the sweep applies it once the window is over.

Unknown tokens are counted per client address, in the database so that every
instance shares the count (``Mailbot.limits``); every page is sent with
headers that keep it out of caches, frames and referrers, and any unexpected
error becomes a clean 500 page. Database work runs in the threadpool (sync
endpoints, ``run_in_threadpool``) so that it never blocks the event loop.

``endpoints`` holds the handlers, ``checks`` what they check in a request
(nonces, forms, origins, the client), ``pages`` what they answer with,
``middleware`` what wraps every response, ``protocol`` the HTTP server's
own deadlines and caps, and ``scrape`` the metrics for ``[web] metrics_allow``.
"""

from __future__ import annotations

import secrets

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from mailbot.adapters.web.checks import client_of
from mailbot.adapters.web.endpoints import LinkPages
from mailbot.adapters.web.middleware import CatchAll, SecurityHeaders
from mailbot.adapters.web.scrape import MetricsPage
from mailbot.clock import Clock
from mailbot.service import Mailbot

__all__ = ["LinkPages", "client_of", "create_app"]


def create_app(bot: Mailbot, *, clock: Clock | None = None) -> Starlette:
    """The link page application for ``bot``; ``clock`` (default ``bot.clock``)
    times the nonces (the guess limit uses the service's clock), so tests move it
    instead of sleeping.

    Without ``[web] secret_key`` the nonce key is random for this app: pages
    loaded before a restart must then be reloaded.
    """
    secret = bot.settings.web.secret_key
    key = secret.encode() if secret is not None else secrets.token_bytes(32)
    pages = LinkPages(bot, clock or bot.clock, key)
    return Starlette(
        routes=[
            Route("/v/{token}", pages.show, methods=["GET"], name="link"),
            Route("/v/{token}", pages.answer, methods=["POST"]),
            Route("/u/{token}", pages.show_undo, methods=["GET"], name="undo"),
            Route("/u/{token}", pages.undo, methods=["POST"]),
            Route("/healthz", pages.healthz, methods=["GET"]),
            Route("/metrics", MetricsPage(bot)),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(CatchAll, page=pages.server_error),
        ],
        exception_handlers={HTTPException: pages.http_error},
    )
