"""mailbot's own validation mail, rendered from the shipped templates, to quote in replies."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailbot import tokens

from .corpus import BOT

WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class TokenMail:
    language: str
    subject: str
    text: str
    html: str
    token: str

    def with_token(self, token: str) -> TokenMail:
        """The same mail for another contact's token (tokens of every shape get tried)."""

        def swap(text: str) -> str:
            return text.replace(tokens.group(self.token), tokens.group(token)).replace(
                self.token, token
            )

        return TokenMail(self.language, self.subject, swap(self.text), swap(self.html), token)


RANDOM = random.Random(20260302)  # noqa: S311 - reproducible test data, not secrets


def some_token() -> str:
    return tokens.encode(RANDOM.getrandbits(tokens.TOKEN_BITS), tokens.TOKEN_LENGTH)


def token_mail(language: str) -> TokenMail:
    """The validation mail as mailbot renders it (built-in copy if rendering fails)."""
    token = tokens.new_token()
    try:
        return _rendered(language, token)
    except Exception:  # other modules change under us: fall back, still measure
        return _builtin(language, token)


def _rendered(language: str, token: str) -> TokenMail:
    from mailbot.config import BotSettings
    from mailbot.domain import Party, Request, Role, RoleChange, Service, Side, Validation
    from mailbot.outgoing.render import Renderer, make_environment
    from mailbot.views import RequestView

    admin = Party("alice@customer.example", "Alice Martin", id=1)
    new = Party("carol@agency.example", "Carol", id=2)
    service = Service("example.com", {Role.ADMIN: admin, Role.TECH: admin, Role.BILLING: admin})
    request = Request(
        id="CR-7K2QX9MD",
        service=service,
        requester=admin,
        changes=(RoleChange(Role.TECH, admin, new),),
        validations=(Validation(admin, Side.CURRENT), Validation(new, Side.NEW)),
        created_at=WHEN,
        expires_at=WHEN + timedelta(days=14),
    )
    context = {
        "bot": BotSettings(address=BOT),
        "to": admin,
        "event": "validation-requested",
        "request": RequestView.of(request),
        "token": tokens.group(token),
        "link": f"https://mailbot.example/v/{token}",
        "reply_address": "changes+K3Y@mailbot.example",
        "side": "current",
        "error": None,
        "command": "",
        "original_subject": "",
        "decision": None,
    }
    mail = Renderer(make_environment()).mail("validation-requested", language, context)
    return TokenMail(language, mail.subject, mail.text, mail.html, token)


def _builtin(language: str, token: str) -> TokenMail:
    grouped = tokens.group(token)
    text = (
        f"Hello Alice,\n\nYour personal validation token:\n\n    {grouped}\n\n"
        "- reply to this email with ACCEPT or REFUSE as the first line of your reply\n"
        f"- or send a new email whose first line is\n  ACCEPT {grouped}\n"
        "  (or REFUSE followed by the token).\n\nIf you did not expect this request, "
        "reply REFUSE.\n"
    )
    html = "<p>" + text.replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>"
    return TokenMail(language, "[CR-7K2QX9MD] Validation requested", text, html, token)
