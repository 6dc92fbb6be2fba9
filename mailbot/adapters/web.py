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
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailbot import tokens
from mailbot.clock import Clock
from mailbot.domain import Decision
from mailbot.errors import BadToken, MailbotError, NotAuthorized, RequestClosed, TokenUsed
from mailbot.outgoing.render import LANGUAGES
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


class _FormTooLarge(Exception):
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
            raise _FormTooLarge
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


class LinkPages:
    """The endpoints, with what they share: the bot, the nonces and the throttle."""

    def __init__(self, bot: Mailbot, clock: Clock, key: bytes) -> None:
        self.bot = bot
        self.nonces = Nonces(key, clock)
        self.undo_nonces = Nonces(key, clock, purpose="undo1")
        self.throttle = GuessThrottle(clock)
        self.origin = origin_of(bot.settings.bot.base_url)

    # -- endpoints ---------------------------------------------------------------

    def show(self, request: Request) -> Response:
        """GET: the request and its form; reads only, so scanners change nothing."""
        client = client_of(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            return self.too_many(wait)
        found = self.lookup(request.path_params["token"], client)
        if isinstance(found, Response):
            return found
        token, page = found
        if not page.usable:
            return self.closed(page)
        if page.held:
            return self.held(page)
        return self.ask(request, token, page, 200)

    async def answer(self, request: Request) -> Response:
        """POST: check where it comes from and the nonce, then hold the decision."""
        client = client_of(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            return self.too_many(wait)
        if cross_site(request, self.origin):
            log.info("cross-site POST refused on the link page")
            return self.error(403)
        try:
            form = await read_form(request)
        except _FormTooLarge:
            return self.error(413)
        typed = request.path_params["token"]
        return await run_in_threadpool(self.answer_sync, request, typed, client, form)

    def answer_sync(self, request: Request, typed: str, client: str, form: Form) -> Response:
        """The blocking part of POST, in order: token, state, nonce, decision."""
        found = self.lookup(typed, client)
        if isinstance(found, Response):
            return found
        token, page = found
        language = self.language_of(page)
        if not page.usable:
            return self.closed(page)
        if page.held:
            return self.held(page)
        if not self.nonces.valid(token, form.get("nonce")):
            return self.error(403, language)
        if not form.sent("decision"):  # the form untouched: no one chose
            return self.ask(request, token, page, 422)
        try:
            decision = Decision(form.get("decision"))
        except ValueError:
            return self.error(400, language)
        return self.decide(token, page, decision)

    def show_undo(self, request: Request) -> Response:
        """GET of an undo link: what is held and a form to undo it; changes nothing."""
        client = client_of(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            return self.too_many(wait)
        found = self.lookup_undo(request.path_params["token"], client)
        if isinstance(found, Response):
            return found
        token, page = found
        return self.undo_form(request, token, page, 200 if page.held else 410)

    async def undo(self, request: Request) -> Response:
        """POST of an undo link: the same checks as a decision, then withdraw it."""
        client = client_of(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            return self.too_many(wait)
        if cross_site(request, self.origin):
            log.info("cross-site POST refused on an undo link")
            return self.error(403)
        try:
            form = await read_form(request)
        except _FormTooLarge:
            return self.error(413)
        typed = request.path_params["token"]
        return await run_in_threadpool(self.undo_sync, request, typed, client, form)

    def undo_sync(self, request: Request, typed: str, client: str, form: Form) -> Response:
        """The blocking part of an undo: token, state, nonce, the ticked box, then undo."""
        found = self.lookup_undo(typed, client)
        if isinstance(found, Response):
            return found
        token, page = found
        language = self.language_of(page)
        if not page.held:
            return self.undo_form(request, token, page, 410)
        if not self.undo_nonces.valid(token, form.get("nonce")):
            return self.error(403, language)
        if form.get("confirm") != "undo":  # the box must be ticked by a person
            return self.undo_form(request, token, page, 422)
        try:
            undone = self.bot.undo_with_token(token)
        except BadToken:
            return self.error(404, language)
        except (TokenUsed, RequestClosed):
            return self.undo_form(request, token, self.bot.undo_page(token), 410)
        log.info("held decision undone on %s", undone.request.id)
        return self.render(
            "undo",
            language,
            200,
            request=RequestView.of(undone.request),
            me=undone.validation,
            undone=True,
        )

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

    def lookup_undo(self, typed: str, client: str) -> tuple[str, TokenPage] | Response:
        """The canonical undo token and what it stands for, or a 404 counted as a guess."""
        token = tokens.normalise(typed)
        if token is not None:
            try:
                return token, self.bot.undo_page(token)
            except BadToken:
                pass
        self.throttle.record_miss(client)
        return self.error(404)

    def decide(self, token: str, page: TokenPage, decision: Decision) -> Response:
        """Hold the decision; a race lost to another answer shows where things stand."""
        language = self.language_of(page)
        try:
            held = self.bot.hold_with_token(token, decision)
        except BadToken:
            return self.error(404, language)
        except (TokenUsed, RequestClosed):
            now = self.bot.token_page(token)
            return self.held(now) if now.held else self.closed(now)
        except NotAuthorized:
            return self.error(403, language)
        except MailbotError as error:
            log.info("web decision not held: %s", error.code)
            return self.error(400, language)
        log.info("%s held on %s through the link page", decision.value, held.request.id)
        return self.held(held)

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

    def ask(self, request: Request, token: str, page: TokenPage, status: int) -> HTMLResponse:
        """The page with the form; 422 when it was sent without a choice."""
        return self.render(
            "decide",
            self.language_of(page),
            status,
            request=RequestView.of(page.request),
            me=page.validation,
            nonce=self.nonces.issue(token),
            action=self.action(request, token),
            minutes=self.bot.settings.web.undo_minutes,
        )

    def held(self, page: TokenPage) -> HTMLResponse:
        """What was chosen, when it takes effect, and that the mail can undo it."""
        return self.render(
            "held",
            self.language_of(page),
            200,
            request=RequestView.of(page.request),
            me=page.validation,
            minutes=self.bot.settings.web.undo_minutes,
        )

    def undo_form(self, request: Request, token: str, page: TokenPage, status: int) -> HTMLResponse:
        """The undo page: its form while a decision is held (422: box not ticked), else 410."""
        return self.render(
            "undo",
            self.language_of(page),
            status,
            request=RequestView.of(page.request),
            me=page.validation,
            nonce=self.undo_nonces.issue(token),
            action=request.url_for("undo", token=token).path,
            undone=False,
        )

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
            Route("/u/{token}", pages.show_undo, methods=["GET"], name="undo"),
            Route("/u/{token}", pages.undo, methods=["POST"]),
            Route("/healthz", pages.healthz, methods=["GET"]),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(CatchAll, page=pages.server_error),
        ],
        exception_handlers={HTTPException: pages.http_error},
    )
