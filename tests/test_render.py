"""Every mail template renders in every language, subjects are one line, HTML is escaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailbot.config import BotSettings
from mailbot.domain import (
    Channel,
    Party,
    Request,
    Role,
    RoleChange,
    Service,
    Side,
    Validation,
    ValidationStatus,
)
from mailbot.errors import ERROR_CODES, MailbotError, TooManyAttempts
from mailbot.outgoing.render import MAIL_CONTEXT, Renderer, TemplateError, make_environment
from mailbot.views import RequestView

WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EVIL = Party("eve@x.test", '<script>alert("x")</script>', id=9)
ADMIN = Party("admin@x.test", "Admin", id=1)
TECH = Party("tech@x.test", "Tech", id=2)
NEW = Party("new@y.test", '<script>alert("new")</script>', id=3)
SERVICE = Service("x.test", {Role.ADMIN: ADMIN, Role.TECH: TECH, Role.BILLING: ADMIN})
REQUEST = Request(
    id="CR-7K2QX9MD",
    service=SERVICE,
    requester=EVIL,
    changes=(RoleChange(Role.TECH, TECH, NEW),),
    validations=(
        Validation(ADMIN, Side.CURRENT, ValidationStatus.ACCEPTED, Channel.WEB, WHEN),
        Validation(NEW, Side.NEW),
    ),
    created_at=WHEN,
    expires_at=WHEN + timedelta(days=14),
)
REQUEST_EVENTS = [
    "request-opened",
    "validation-requested",
    "validation-recorded",
    "decision-held",
    "request-done",
    "request-refused",
]


def context(event: str, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        **MAIL_CONTEXT,
        "bot": BotSettings(),
        "to": ADMIN,
        "event": event,
        "request": RequestView.of(REQUEST),
    }
    if event == "validation-requested":
        values.update(
            token="7KQ2-X9JM-4TRD-8WPA-3HNB",
            link="https://bot.test/v/7KQ2X9JM4TRD8WPA3HNB",
            reply_address="changes+abc@bot.test",
            side="new",
        )
    if event == "decision-held":
        values.update(
            decision="accept",
            until=WHEN + timedelta(minutes=10),
            minutes=10,
            undo_link="https://bot.test/u/7KQ2X9JM4TRD8WPA3HNB",
        )
    values.update(extra)
    return values


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(make_environment())


@pytest.mark.parametrize("language", ["en", "fr"])
@pytest.mark.parametrize("event", REQUEST_EVENTS)
def test_request_mails_render(renderer: Renderer, event: str, language: str) -> None:
    mail = renderer.mail(event, language, context(event))
    assert mail.subject.startswith("[CR-7K2QX9MD]")
    assert "\n" not in mail.subject
    assert "x.test" in mail.text
    assert "<script>" not in mail.html
    assert "&lt;script&gt;" in mail.html  # the new contact's name, escaped


@pytest.mark.parametrize("language", ["en", "fr"])
def test_the_token_mail_says_how_to_answer(renderer: Renderer, language: str) -> None:
    mail = renderer.mail("validation-requested", language, context("validation-requested"))
    for text in (mail.text, mail.html):
        assert "7KQ2-X9JM-4TRD-8WPA-3HNB" in text
        assert "https://bot.test/v/7KQ2X9JM4TRD8WPA3HNB" in text
        assert "ACCEPT" in text
        assert "REFUSE" in text


@pytest.mark.parametrize("language", ["en", "fr"])
@pytest.mark.parametrize("decision", ["accept", "refuse"])
def test_the_held_decision_mail_says_what_when_and_how_to_undo(
    renderer: Renderer, language: str, decision: str
) -> None:
    values = context("decision-held", decision=decision)
    mail = renderer.mail("decision-held", language, values)
    word = {
        "en": {"accept": "ACCEPT", "refuse": "REFUSE"},
        "fr": {"accept": "ACCEPTER", "refuse": "REFUSER"},
    }
    assert word[language][decision] in mail.text
    for text in (mail.text, mail.html):
        assert "https://bot.test/u/7KQ2X9JM4TRD8WPA3HNB" in text
        assert "10 minutes" in text
        assert "2026-03-02 09:10 UTC" in text
    assert "2026-03-02 09:10 UTC" in mail.subject


@pytest.mark.parametrize("language", ["en", "fr"])
@pytest.mark.parametrize("code", ERROR_CODES)
def test_every_error_code_is_explained(renderer: Renderer, code: str, language: str) -> None:
    error = next(cls for cls in MailbotError.__subclasses__() if cls.code == code)(
        "", service="x.test", line="owner: x"
    )
    mail = renderer.mail("error", language, context("error", request=None, error=error))
    assert code in mail.text
    assert code in mail.subject
    assert len(mail.text.split()) > 15, "an explanation, not just a code"


@pytest.mark.parametrize(
    ("language", "says"),
    [("en", "already sent again less than an hour ago"), ("fr", "moins d'une heure")],
)
def test_the_resend_limit_is_explained_as_itself(
    renderer: Renderer, language: str, says: str
) -> None:
    error = TooManyAttempts("tokens were resent", request="CR-7K2QX9MD", limit="resends")
    mail = renderer.mail("error", language, context("error", request=None, error=error))
    for part in (mail.text, mail.html):
        said = " ".join(part.split()).replace("&#39;", "'")
        assert says in said
        assert "STATUS CR-7K2QX9MD" in said or "STATUT CR-7K2QX9MD" in said
        assert "wrong tokens" not in said
        assert "tokens were resent" not in said


def test_french_mails_are_in_french(renderer: Renderer) -> None:
    mail = renderer.mail("request-done", "fr", context("request-done"))
    assert "contact technique" in mail.text


def test_an_unknown_language_falls_back_to_english(renderer: Renderer) -> None:
    mail = renderer.mail("request-done", "de", context("request-done"))
    assert "technical contact" in mail.text


def test_a_missing_template_is_a_clear_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="template not found"):
        renderer.mail("no-such-event", "en", context("x"))


def test_an_operator_directory_overrides_shipped_templates(tmp_path: Any) -> None:
    folder = tmp_path / "mail" / "en"
    folder.mkdir(parents=True)
    (folder / "request-done.txt.j2").write_text("Subject: Done {{ request.id }}\n\nCustom.\n")
    mail = Renderer(make_environment(tmp_path)).mail("request-done", "en", context("request-done"))
    assert mail.subject == "Done CR-7K2QX9MD"
    assert mail.text == "Custom.\n"
    assert "CR-7K2QX9MD" in mail.html  # the shipped HTML part is still used


def test_a_template_that_vanishes_while_running_is_rendered_as_last_read(tmp_path: Any) -> None:
    """Installing a new version over a running mailbot removes the templates
    before writing the new ones: a mail rendered in between gets the template
    as it was, and the new file is read once it is there."""
    folder = tmp_path / "mail" / "en"
    folder.mkdir(parents=True)
    text, html = folder / "upgraded.txt.j2", folder / "upgraded.html.j2"
    text.write_text("Subject: Before {{ request.id }}\n\nOld words.\n")
    html.write_text("<p>{{ request.id }}</p>\n")
    renderer = Renderer(make_environment(tmp_path))
    assert renderer.mail("upgraded", "en", context("x")).subject == "Before CR-7K2QX9MD"
    text.unlink()
    html.unlink()
    during = renderer.mail("upgraded", "en", context("x"))
    assert (during.subject, during.text) == ("Before CR-7K2QX9MD", "Old words.\n")
    text.write_text("Subject: After {{ request.id }}\n\nNew words.\n")
    html.write_text("<p>{{ request.id }}</p>\n")
    after = renderer.mail("upgraded", "en", context("x"))
    assert (after.subject, after.text) == ("After CR-7K2QX9MD", "New words.\n")
    with pytest.raises(TemplateError, match="template not found"):
        renderer.mail("never-there", "en", context("x"))
