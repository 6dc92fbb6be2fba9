"""The link page: the web side of a validation email (DESIGN.md §4 "Web").

``GET /v/{token}`` shows the request a token stands for, with *Accept* and
*Refuse* forms, and changes nothing: mail security scanners open every link.
The forms ``POST /v/{token}`` with ``decision`` and a ``nonce``, a stateless
HMAC that proves the page was loaded, so that a blind POST decides nothing.
The decision goes through the same service call as an emailed answer.

Unknown tokens are throttled per client address, every page is sent with
headers that keep it out of caches, frames and referrers, and any unexpected
error becomes a clean 500 page. Database work runs in the threadpool (sync
endpoints, ``run_in_threadpool``) so that it never blocks the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailbot import tokens
from mailbot.clock import Clock
from mailbot.domain import Channel, Decision
from mailbot.errors import BadToken, MailbotError, NotAuthorized, RequestClosed, TokenUsed
from mailbot.render import LANGUAGES
from mailbot.service import Mailbot, TokenPage
from mailbot.views import RequestView

log = logging.getLogger(__name__)

NONCE_TTL = timedelta(hours=2)
"""How long a loaded page's forms stay valid."""
NONCE_SKEW = timedelta(minutes=5)
"""Clock difference tolerated between instances that share a secret key."""
GUESS_LIMIT = 20
"""Unknown-token answers allowed per client address within GUESS_WINDOW."""
GUESS_WINDOW = timedelta(minutes=10)
MAX_FORM_BYTES = 4096
"""Our forms send two short fields; anything much bigger is not from our page."""

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
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


class Nonces:
    """Stateless proof that a form was served by us for this token, recently.

    A nonce is ``<issued>.<HMAC-SHA256(key, token digest, issued)>``: nothing
    is stored, any instance with the same key can check it, and it is bound to
    the token so that a nonce from one page is useless on another.
    """

    def __init__(self, key: bytes, clock: Clock, ttl: timedelta = NONCE_TTL) -> None:
        self._key = key
        self._clock = clock
        self._ttl = ttl.total_seconds()

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
        message = f"mailbot-web-nonce:v1:{tokens.digest(token)}:{issued}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


class GuessThrottle:
    """Counts unknown-token answers per client address in a sliding window.

    In memory and per process: it slows down guessing from one address, which
    the 100-bit tokens make hopeless anyway; it is not an accounting system.
    The number of addresses tracked is capped so that memory stays bounded.
    """

    def __init__(
        self,
        clock: Clock,
        limit: int = GUESS_LIMIT,
        window: timedelta = GUESS_WINDOW,
        max_clients: int = 10_000,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window.total_seconds()
        self._max_clients = max_clients
        self._misses: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # sync endpoints run in several threads

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may go on now."""
        now = self._clock.now().timestamp()
        with self._lock:
            misses = self._prune(client, now)
            if len(misses) < self._limit:
                return None
            return max(1, math.ceil(misses[0] + self._window - now))

    def record_miss(self, client: str) -> None:
        """Count one unknown-token answer for ``client``; say so when it hits the limit."""
        now = self._clock.now().timestamp()
        with self._lock:
            self._prune(client, now)
            misses = self._misses.setdefault(client, deque())
            misses.append(now)
            if len(misses) == self._limit:
                log.warning("throttling %s: %d unknown tokens in a row", client, self._limit)
            if len(self._misses) > self._max_clients:
                self._forget_stale(now)

    def _prune(self, client: str, now: float) -> deque[float]:
        misses = self._misses.get(client, deque())
        while misses and misses[0] <= now - self._window:
            misses.popleft()
        if not misses:
            self._misses.pop(client, None)
        return misses

    def _forget_stale(self, now: float) -> None:
        for client in list(self._misses):
            self._prune(client, now)
        while len(self._misses) > self._max_clients:  # still full: drop the oldest entries
            del self._misses[next(iter(self._misses))]


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
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), _safe_path(scope))
            if started:
                raise
            await self.page()(scope, receive, send)


def _safe_path(scope: Scope) -> str:
    """The path for the log, without the token: logs must not hold secrets."""
    path = str(scope.get("path", ""))
    return "/v/…" if path.startswith("/v/") else path


class _FormTooLarge(Exception):
    """The request body exceeds MAX_FORM_BYTES."""


@dataclass(frozen=True)
class Form:
    """The fields of a posted form, each kept only if it was sent exactly once."""

    fields: dict[str, str]

    def get(self, name: str) -> str:
        """The field's value; missing and repeated fields read as empty, which fails."""
        return self.fields.get(name, "")


async def read_form(request: Request) -> Form:
    """The url-encoded form in the body, read with a size limit.

    Our pages only send ``application/x-www-form-urlencoded``; any other body
    yields no fields, which then fails the nonce check like a blind POST.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _FormTooLarge
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return Form({})
    try:
        parsed = parse_qs(bytes(body).decode("latin-1"), max_num_fields=16)
    except ValueError:
        return Form({})
    return Form({name: values[0] for name, values in parsed.items() if len(values) == 1})


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


class LinkPages:
    """The endpoints, with what they share: the bot, the nonces and the throttle."""

    def __init__(self, bot: Mailbot, clock: Clock, key: bytes) -> None:
        self.bot = bot
        self.nonces = Nonces(key, clock)
        self.throttle = GuessThrottle(clock)

    # -- endpoints ---------------------------------------------------------------

    def show(self, request: Request) -> Response:
        """GET: the request and its forms; reads only, so scanners change nothing."""
        client = client_of(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            return self.too_many(wait)
        found = self.lookup(request.path_params["token"], client)
        if isinstance(found, Response):
            return found
        token, page = found
        if not page.usable:
            return self.closed(page)
        return self.render(
            "decide",
            self.language_of(page),
            200,
            request=RequestView.of(page.request),
            me=page.validation,
            nonce=self.nonces.issue(token),
            action=self.action(request, token),
        )

    async def answer(self, request: Request) -> Response:
        """POST: check the nonce, then record the decision through the service."""
        client = client_of(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            return self.too_many(wait)
        try:
            form = await read_form(request)
        except _FormTooLarge:
            return self.error(413)
        typed = request.path_params["token"]
        return await run_in_threadpool(self.answer_sync, typed, client, form)

    def answer_sync(self, typed: str, client: str, form: Form) -> Response:
        """The blocking part of POST, in order: token, state, nonce, decision."""
        found = self.lookup(typed, client)
        if isinstance(found, Response):
            return found
        token, page = found
        language = self.language_of(page)
        if not page.usable:
            return self.closed(page)
        if not self.nonces.valid(token, form.get("nonce")):
            return self.error(403, language)
        try:
            decision = Decision(form.get("decision"))
        except ValueError:
            return self.error(400, language)
        return self.decide(token, page, decision)

    def healthz(self, request: Request) -> Response:
        """200 when mail can be taken (``Mailbot.health``), 503 otherwise; the
        reason goes to the log, not to the client."""
        try:
            problem = self.bot.health()
        except Exception as exc:  # any failure means "not healthy", never a 500
            problem = f"health check failed: {exc.__class__.__name__}"
        if problem:
            log.warning("health check: %s", problem)
            return PlainTextResponse("unavailable\n", status_code=503)
        return PlainTextResponse("ok\n")

    # -- steps -------------------------------------------------------------------

    def lookup(self, typed: str, client: str) -> tuple[str, TokenPage] | Response:
        """The canonical token and its page, or a 404 that counts as a guess."""
        token = tokens.normalise(typed)
        if token is not None:
            try:
                return token, self.bot.token_page(token)
            except BadToken:
                pass
        self.throttle.record_miss(client)
        return self.error(404)

    def decide(self, token: str, page: TokenPage, decision: Decision) -> Response:
        """Record the decision; a race lost to another answer shows the closed page."""
        language = self.language_of(page)
        try:
            request = self.bot.decide_with_token(token, decision, Channel.WEB)
        except BadToken:
            return self.error(404, language)
        except (TokenUsed, RequestClosed):
            return self.closed(self.bot.token_page(token))
        except NotAuthorized:
            return self.error(403, language)
        except MailbotError as error:
            log.info("web decision not recorded: %s", error.code)
            return self.error(400, language)
        log.info("%s recorded on %s through the link page", decision.value, request.id)
        me = request.validation_of(page.validation.contact) or page.validation
        return self.render("result", language, 200, request=RequestView.of(request), me=me)

    # -- pages -------------------------------------------------------------------

    def language_of(self, page: TokenPage) -> str:
        """The contact's language, or the bot's default for an unusable value."""
        language = page.validation.contact.language
        return language if language in LANGUAGES else self.bot.settings.bot.language

    def action(self, request: Request, token: str) -> str:
        """Where the forms post: the canonical link path, under any mount prefix."""
        return request.url_for("link", token=token).path

    def render(self, name: str, language: str, status: int, **context: Any) -> HTMLResponse:
        """One page of ``templates/web/<language>/``, with the values every page uses."""
        values = {"lang": language, "bot": self.bot.settings.bot, "status": status, **context}
        return HTMLResponse(self.bot.renderer.page(f"{language}/{name}", values), status)

    def closed(self, page: TokenPage) -> HTMLResponse:
        """410: the token was used, or its request is no longer pending."""
        return self.render(
            "closed",
            self.language_of(page),
            410,
            request=RequestView.of(page.request),
            me=page.validation,
        )

    def error(self, status: int, language: str | None = None) -> HTMLResponse:
        """A page that explains an error status and what to do instead."""
        return self.render("error", language or self.bot.settings.bot.language, status)

    def too_many(self, wait: int) -> HTMLResponse:
        """429 with Retry-After: this address guessed too many tokens lately."""
        response = self.error(429)
        response.headers["Retry-After"] = str(wait)
        return response

    def server_error(self) -> Response:
        """500, rendered from the templates if they still work, else built in."""
        try:
            return self.error(500)
        except Exception:
            log.exception("the error page itself failed")
            return HTMLResponse(FALLBACK_500, 500)

    def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own errors (no such route, wrong method) as our error page."""
        if not isinstance(exc, HTTPException):  # pragma: no cover - registered for it only
            raise exc
        response = self.error(exc.status_code)
        response.headers.update(exc.headers or {})
        return response


def create_app(bot: Mailbot, *, clock: Clock | None = None) -> Starlette:
    """The link page application for ``bot``; ``clock`` (default ``bot.clock``)
    times nonces and the guess throttle, so tests move it instead of sleeping.

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
            Route("/healthz", pages.healthz, methods=["GET"]),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(CatchAll, page=pages.server_error),
        ],
        exception_handlers={HTTPException: pages.http_error},
    )
