"""The pages of the link page, rendered from ``templates/web/<language>/``."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from mailbot.adapters.web.checks import Nonces
from mailbot.adapters.web.middleware import FALLBACK_500
from mailbot.outgoing.render import LANGUAGES
from mailbot.service import Mailbot, TokenPage
from mailbot.views import RequestView

log = logging.getLogger("mailbot.adapters.web")  # the link page logs under one name


class Pages:
    """Each page the link page answers with, from the request it shows and who asks."""

    def __init__(self, bot: Mailbot, nonces: Nonces, undo_nonces: Nonces) -> None:
        self.bot = bot
        self.nonces = nonces
        self.undo_nonces = undo_nonces

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
