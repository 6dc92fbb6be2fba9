"""The link page's endpoints: each request checked, looked up through the service,
and answered with a page."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from mailbot import tokens
from mailbot.adapters.web.checks import (
    Form,
    FormTooLarge,
    Nonces,
    client_of,
    cross_site,
    origin_of,
    read_form,
)
from mailbot.adapters.web.pages import Pages
from mailbot.clock import Clock
from mailbot.domain import Decision
from mailbot.errors import BadToken, MailbotError, NotAuthorized, RequestClosed, TokenUsed
from mailbot.service import Mailbot, TokenPage
from mailbot.views import RequestView

log = logging.getLogger("mailbot.adapters.web")  # the link page logs under one name


class LinkPages(Pages):
    """The endpoints, with what they share: the bot, the nonces and our origin."""

    def __init__(self, bot: Mailbot, clock: Clock, key: bytes) -> None:
        super().__init__(bot, Nonces(key, clock), Nonces(key, clock, purpose="undo1"))
        self.origin = origin_of(bot.settings.bot.base_url)

    # -- endpoints ---------------------------------------------------------------

    def show(self, request: Request) -> Response:
        """GET: the request and its form; reads only, so scanners change nothing."""
        found = self.unless_throttled(request, self.lookup)
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
        checked = await self.posted_form(request, "the link page")
        if isinstance(checked, Response):
            return checked
        client, form = checked
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
        found = self.unless_throttled(request, self.lookup_undo)
        if isinstance(found, Response):
            return found
        token, page = found
        return self.undo_form(request, token, page, 200 if page.held else 410)

    async def undo(self, request: Request) -> Response:
        """POST of an undo link: the same checks as a decision, then withdraw it."""
        checked = await self.posted_form(request, "an undo link")
        if isinstance(checked, Response):
            return checked
        client, form = checked
        typed = request.path_params["token"]
        return await run_in_threadpool(self.undo_sync, request, typed, client, form)

    async def posted_form(self, request: Request, where: str) -> tuple[str, Form] | Response:
        """What every POST passes before its token is looked up: the client's
        guesses, the origin of the form, and its size. Returns the client and form."""
        client = client_of(request)
        if (wait := await run_in_threadpool(self.bot.limits.guess_wait, client)) is not None:
            return self.too_many(wait)
        if cross_site(request, self.origin):
            log.info("cross-site POST refused on %s", where)
            return self.error(403)
        try:
            return client, await read_form(request)
        except FormTooLarge:
            return self.error(413)

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
        log.info(
            "held decision undone on %s",
            undone.request.id,
            extra={"request_id": undone.request.id, "outcome": "undone"},
        )
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

    def unless_throttled(
        self, request: Request, lookup: Callable[[str, str], tuple[str, TokenPage] | Response]
    ) -> tuple[str, TokenPage] | Response:
        """A GET's token looked up, unless its client guessed too often lately."""
        client = client_of(request)
        if (wait := self.bot.limits.guess_wait(client)) is not None:
            return self.too_many(wait)
        return lookup(request.path_params["token"], client)

    def lookup(self, typed: str, client: str) -> tuple[str, TokenPage] | Response:
        """The canonical token and its page, or a 404 that counts as a guess."""
        return self.page_or_guess(typed, client, self.bot.token_page)

    def lookup_undo(self, typed: str, client: str) -> tuple[str, TokenPage] | Response:
        """The canonical undo token and what it stands for, or a 404 counted as a guess."""
        return self.page_or_guess(typed, client, self.bot.undo_page)

    def page_or_guess(
        self, typed: str, client: str, page_of: Callable[[str], TokenPage]
    ) -> tuple[str, TokenPage] | Response:
        token = tokens.normalise(typed)
        if token is not None:
            try:
                return token, page_of(token)
            except BadToken:
                pass
        self.bot.limits.guess_missed(client)
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
        log.info(
            "%s held on %s through the link page",
            decision.value,
            held.request.id,
            extra={"request_id": held.request.id, "outcome": f"{decision.value} held"},
        )
        return self.held(held)
